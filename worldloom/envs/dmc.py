"""DeepMind Control Suite tasks as Gymnasium environments (see :mod:`worldloom.envs.suites`)."""

from __future__ import annotations

import math
import os

import gymnasium as gym
import numpy as np

from worldloom.core.errors import ConfigError
from worldloom.envs.suites import DMC_EPISODE_STEPS, DMCSettings, missing_package

_QUADRUPED_CAMERA = 2


def _choose_gl() -> None:
    """Pick MuJoCo's offscreen OpenGL (before dm_control is imported): EGL, else OSMesa, unless MUJOCO_GL is set.

    dm_control fails at import when ``MUJOCO_GL`` names a library that is
    missing, so it is only set to one that is there.
    """
    import ctypes.util

    if "MUJOCO_GL" in os.environ:
        return
    for backend, library in (("egl", "EGL"), ("osmesa", "OSMesa")):
        if ctypes.util.find_library(library):
            os.environ["MUJOCO_GL"] = backend
            return


class DMCEnv(gym.Env):
    """A dm_control task: state vectors or rendered frames, actions in ``[-1, 1]``.

    Observations are the task's observation arrays flattened and concatenated
    (float32), or with ``settings.pixels`` the last ``settings.frames`` frames
    ``[size, size, 3 * frames]`` uint8 (channels last, oldest first). One
    step applies the action for ``settings.repeat`` physics steps and sums
    their rewards. The task's time limit ends an episode as truncated; a
    discount of 0 (none of the standard tasks has one) as terminated.

    Offscreen rendering uses ``MUJOCO_GL`` when set, else EGL when its library
    is present, else OSMesa; without either, state tasks still run and
    rendering raises.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(self, domain: str, task: str, settings: DMCSettings, *, env_id: str | None = None,
                 render_mode: str | None = None):
        _choose_gl()
        try:
            from dm_control import suite
        except ImportError as err:
            raise missing_package("dm_control", err) from err
        if (domain, task) not in suite.ALL_TASKS:
            from worldloom.core.config import close_matches

            names = [f"dmc:{d}-{t}" for d, t in suite.ALL_TASKS]
            raise ConfigError(f"Unknown DeepMind Control task {domain}-{task}."
                              f"{close_matches(f'dmc:{domain}-{task}', names)}")
        if settings.repeat < 1 or settings.frames < 1 or settings.size < 1:
            raise ConfigError(f"repeat, frames and size must be >= 1, got {settings}.")
        self.settings, self.domain, self.task, self.render_mode = settings, domain, task, render_mode
        self._random = np.random.RandomState()  # the task keeps this generator; reset(seed=...) reseeds it
        self._env = suite.load(domain, task, task_kwargs={"random": self._random})
        self.camera = settings.camera if settings.camera >= 0 else (
            _QUADRUPED_CAMERA if domain == "quadruped" else 0)
        if settings.fast_render:
            model = self._env.physics.model
            model.light_castshadow[:] = 0
            model.mat_reflectance[:] = 0
        spec = self._env.action_spec()
        self._low, self._high = spec.minimum.astype(np.float64), spec.maximum.astype(np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, spec.shape, np.float32)
        if settings.pixels:
            shape = (settings.size, settings.size, 3 * settings.frames)
            self.observation_space = gym.spaces.Box(0, 255, shape, np.uint8)
        else:
            size = sum(int(np.prod(value.shape)) for value in self._env.observation_spec().values())
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)
        limit = getattr(self._env, "_step_limit", DMC_EPISODE_STEPS)
        if not math.isfinite(limit):
            raise ConfigError(f"dmc:{domain}-{task} has no time limit (dm_control's is infinite), so its episodes "
                              "need not end: expected a task with a finite time limit, as every task the "
                              "references run has (1,000 control steps).")
        self.max_episode_steps = math.ceil(limit / settings.repeat)
        self.spec = gym.envs.registration.EnvSpec(id=env_id or f"dmc:{domain}-{task}", entry_point=None,
                                                  max_episode_steps=self.max_episode_steps)
        self._frames: list[np.ndarray] = []

    def _observe(self, time_step, first: bool) -> np.ndarray:
        if not self.settings.pixels:
            return np.concatenate([np.asarray(v, np.float32).reshape(-1) for v in time_step.observation.values()])
        size = self.settings.size
        try:
            frame = self._env.physics.render(size, size, camera_id=self.camera)
        except Exception as err:  # noqa: BLE001 - MuJoCo's and OpenGL's own error types
            raise ConfigError(f"{self.spec.id} renders its observations with MuJoCo's offscreen OpenGL, which failed "
                              f"here (MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}): {type(err).__name__}: {err}. "
                              "Install EGL (libegl1) or OSMesa (libosmesa6), or use the state observations; "
                              "dm_control picks its backend when first imported, so set MUJOCO_GL=egl (or osmesa) "
                              "before anything imports it.") from err
        self._frames = [frame] * self.settings.frames if first else [*self._frames[1:], frame]
        return np.concatenate(self._frames, -1)

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self._random.seed(seed)
        time_step = self._env.reset()
        return self._observe(time_step, first=True), {}

    def step(self, action):
        action = np.asarray(action, np.float64).reshape(self.action_space.shape)
        if not np.isfinite(action).all():
            raise ConfigError(f"Non-finite action {action.tolist()} for {self.spec.id}.")
        scaled = self._low + (np.clip(action, -1.0, 1.0) + 1.0) * 0.5 * (self._high - self._low)
        reward = 0.0
        for _ in range(self.settings.repeat):
            time_step = self._env.step(scaled)
            reward += float(time_step.reward or 0.0)
            if time_step.last():
                break
        ended = time_step.last()
        terminated = bool(ended and time_step.discount == 0)
        return self._observe(time_step, first=False), reward, terminated, bool(ended and not terminated), {}

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        return self._env.physics.render(256, 256, camera_id=self.camera)

    def close(self):
        self._env.close()
