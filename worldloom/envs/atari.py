"""Atari 2600 games on ale-py as Gymnasium environments (see :mod:`worldloom.envs.suites`)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from worldloom.core.errors import ConfigError
from worldloom.envs.suites import AtariSettings, missing_package

NOOP = 0
# ITU-R 601 luma, as the reference weighs the channels for gray frames.
_LUMA = np.array([0.299, 0.587, 1 - (0.299 + 0.587)])


class AtariEnv(gym.Env):
    """An Atari game with frame skip, max-pooling, resizing and no-op starts.

    One step repeats the action for ``settings.repeat`` frames and sums their
    rewards; the observation is the pixel-wise maximum of the last
    ``settings.pooling`` frames of the step (the screen flickers), resized to
    ``size x size`` (Pillow, bilinear), RGB or gray, uint8. A reset starts a
    new game and plays a uniform number of no-op frames in
    ``[0, settings.noops]``. Game over is ``terminated``; reaching
    ``settings.max_frames`` frames is ``truncated``. ``info`` has ``lives``
    and ``frames`` (frames played this episode).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 60}

    def __init__(self, game: str, settings: AtariSettings, *, env_id: str | None = None,
                 render_mode: str | None = None):
        try:
            import ale_py
            import ale_py.roms as roms
        except ImportError as err:
            raise missing_package("ale-py", err) from err
        checks = [(settings.repeat >= 1, "repeat >= 1"), (settings.pooling >= 1, "pooling >= 1"),
                  (settings.pooling <= settings.repeat, "pooling <= repeat"), (settings.noops >= 0, "noops >= 0"),
                  (0.0 <= settings.sticky <= 1.0, "sticky in [0, 1]"), (settings.max_frames >= 1, "max_frames >= 1"),
                  (settings.actions in ("needed", "all"), "actions 'needed' or 'all'"),
                  (settings.lives in ("unused", "terminal"), "lives 'unused' or 'terminal'")]
        for ok, expected in checks:
            if not ok:
                raise ConfigError(f"Atari settings: expected {expected}, got {settings}.")
        game = {"james_bond": "jamesbond"}.get(game, game)
        names = _rom_names(roms)
        self._rom = roms.get_rom_path(game) if game in names else None
        if self._rom is None:
            from worldloom.core.config import close_matches

            hint = close_matches(f"atari:{game}", [f"atari:{name}" for name in names])
            raise ConfigError(f"Unknown Atari game {game!r}: ale-py {ale_py.__version__} ships no such ROM.{hint}")
        self.settings, self.game, self.render_mode = settings, game, render_mode
        self.ale = ale_py.ALEInterface()
        self.ale.setLoggerMode(ale_py.LoggerMode.Error)
        self._rng = np.random.default_rng()
        self._load(int(self._rng.integers(0, 2**31)))
        actions = self.ale.getMinimalActionSet() if settings.actions == "needed" else self.ale.getLegalActionSet()
        self.actions = list(actions)
        self.action_space = gym.spaces.Discrete(len(self.actions))
        shape = (settings.size, settings.size, 1 if settings.gray else 3)
        self.observation_space = gym.spaces.Box(0, 255, shape, np.uint8)
        self.max_episode_steps = -(-settings.max_frames // settings.repeat)
        self.spec = gym.envs.registration.EnvSpec(id=env_id or f"atari:{game}", entry_point=None,
                                                  max_episode_steps=self.max_episode_steps)
        height, width = self.ale.getScreenDims()
        self._screens = [np.zeros((height, width, 3), np.uint8) for _ in range(settings.pooling)]
        self._frames = 0
        self._lives = 0

    def _load(self, seed: int) -> None:
        """Seed the emulator (its sticky actions and the game's randomness) and load the game."""
        self.ale.setInt("random_seed", seed)
        self.ale.setFloat("repeat_action_probability", float(self.settings.sticky))
        self.ale.loadROM(self._rom)

    def _grab(self) -> None:
        """The current screen into the newest pooling slot."""
        self._screens.insert(0, self._screens.pop())
        self.ale.getScreenRGB(self._screens[0])

    def _observe(self) -> np.ndarray:
        from PIL import Image

        image = np.max(np.stack(self._screens), 0)
        size = self.settings.size
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
        if self.settings.gray:
            image = (image * _LUMA).sum(-1).astype(np.uint8)[..., None]
        return image

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
            self._load(int(self._rng.integers(0, 2**31)))
        self.ale.reset_game()
        for _ in range(int(self._rng.integers(self.settings.noops + 1))):
            self.ale.act(NOOP)
            if self.ale.game_over():
                self.ale.reset_game()
        self._grab()
        for screen in self._screens[1:]:
            np.copyto(screen, self._screens[0])
        self._frames, self._lives = 0, self.ale.lives()
        return self._observe(), {"lives": self._lives, "frames": 0}

    def step(self, action):
        index = int(action)
        if not 0 <= index < len(self.actions):
            raise ConfigError(f"Action {action!r} is outside the {len(self.actions)} actions of {self.spec.id}.")
        settings, reward, terminated = self.settings, 0.0, False
        for repeat in range(settings.repeat):
            reward += float(self.ale.act(self.actions[index]))
            self._frames += 1
            if repeat >= settings.repeat - settings.pooling:
                self._grab()
            lives = self.ale.lives()
            terminated = self.ale.game_over() or (settings.lives == "terminal" and 0 < lives < self._lives)
            self._lives = lives
            if terminated or self._frames >= settings.max_frames:
                break
        truncated = not terminated and self._frames >= settings.max_frames
        return self._observe(), reward, terminated, truncated, {"lives": self._lives, "frames": self._frames}

    def render(self):
        return self.ale.getScreenRGB() if self.render_mode == "rgb_array" else None

    def close(self):
        self.ale = None


def _rom_names(roms) -> list[str]:
    try:
        return sorted(roms.get_all_rom_ids())
    except Exception:  # noqa: BLE001 - only for the suggestion in an error message
        return []
