"""Benchmark suites by name, with the settings of the paper whose agent runs on them.

``dmc:<domain>-<task>[:pixels|:proprio]`` runs a DeepMind Control Suite task
(dm_control), ``atari:<game>`` an Atari 2600 game (ale-py). Each agent has its
reference's settings (:data:`DMC_REFERENCE`, :data:`ATARI_REFERENCE`); any
setting can be overridden by keyword::

    env = make_suite_env("dmc:cartpole-balance:pixels", agent="dreamerv3")
    env = make_suite_env("atari:pong", agent="dreamerv3", sticky=0.25)

The environments are plain ``gymnasium.Env``\\ s: a time limit ends an
episode with ``truncated``, a real end of the task (a lost game, a DMC
discount of 0) with ``terminated``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from worldloom.core.errors import ConfigError

AGENTS = ("dreamerv3", "tdmpc2")
SUITES = ("dmc", "atari")


@dataclasses.dataclass(frozen=True)
class DMCSettings:
    """How a DeepMind Control task runs (dm_control ``suite.load``)."""

    repeat: int = 1
    """Physics steps per action (action repeat); their rewards are summed."""
    pixels: bool = False
    """Observations: ``size x size x 3`` uint8 frames (times ``frames``) instead of the state vector."""
    size: int = 64
    """Frame height and width."""
    frames: int = 1
    """Frames stacked on the channel axis (the first frame of an episode fills the stack)."""
    camera: int = -1
    """Camera id; -1: 2 for quadruped, 0 otherwise (both references)."""
    fast_render: bool = False
    """Render without shadows and reflections (several times faster in software; not the reference's images)."""


@dataclasses.dataclass(frozen=True)
class AtariSettings:
    """How an Atari game runs (ale-py's ``ALEInterface``)."""

    repeat: int = 4
    """Frames per action (frame skip); their rewards are summed."""
    size: int = 64
    """Observation height and width (Pillow bilinear resize)."""
    gray: bool = False
    """One luminance channel instead of RGB."""
    sticky: float = 0.0
    """Probability that the emulator repeats the previous action (sticky actions)."""
    actions: str = "needed"
    """"needed": the game's minimal action set; "all": the 18 actions."""
    noops: int = 30
    """At reset, a uniform number in [0, noops] of no-op frames."""
    pooling: int = 2
    """The observation is the maximum over the last ``pooling`` frames of a step."""
    max_frames: int = 108_000
    """Frames after which an episode is truncated (30 minutes of play)."""
    lives: str = "unused"
    """"unused": a lost life changes nothing; "terminal": it ends the episode as terminated."""


# DreamerV3: configs.yaml `env.dmc` (repeat 1, 64x64, camera -1 -> quadruped 2, else 0; dmc_vision drops the
# proprio keys, dmc_proprio the image) and `env.atari100k` (64x64 RGB, repeat 4, no sticky actions, the minimal
# action set, lives unused, up to 30 no-ops, max-pooling of 2 frames, 108,000 frames).
# TD-MPC2: envs/dmcontrol.py (action repeat 2, 500 steps, actions in [-1, 1], camera 0 or 2 for quadruped,
# 3 stacked 64x64 frames for pixels). TD-MPC2 is not run on Atari.
DMC_REFERENCE: dict[str, DMCSettings] = {
    "dreamerv3": DMCSettings(repeat=1, frames=1),
    "tdmpc2": DMCSettings(repeat=2, frames=3),
}
ATARI_REFERENCE: dict[str, AtariSettings] = {
    "dreamerv3": AtariSettings(),
}
# Control steps per DMC episode when a task does not say (every standard task's time limit is 1,000).
DMC_EPISODE_STEPS = 1000

_DMC_DOMAINS = {"cup": "ball_in_cup", "pointmass": "point_mass"}


def is_suite_id(env_id: Any) -> bool:
    """Whether ``env_id`` names a suite task (``dmc:...`` or ``atari:...``) rather than a Gymnasium id."""
    return isinstance(env_id, str) and env_id.split(":", 1)[0] in SUITES and ":" in env_id


def parse_suite_id(env_id: str) -> tuple[str, dict[str, Any]]:
    """``(suite, fields)`` of a suite id.

    Returns:
        ``("dmc", {"domain", "task", "pixels"})`` or ``("atari", {"game"})``.

    Raises:
        ConfigError: a malformed id.
    """
    suite, _, rest = env_id.partition(":")
    if suite == "atari":
        game = rest.strip().lower().replace("-", "_")
        if not game or ":" in game:
            raise ConfigError(f"Expected 'atari:<game>' such as 'atari:pong', got {env_id!r}.")
        return suite, {"game": game}
    name, _, kind = rest.partition(":")
    if kind not in ("", "pixels", "proprio") or "-" not in name:
        raise ConfigError(f"Expected 'dmc:<domain>-<task>' with an optional ':pixels' or ':proprio', such as "
                          f"'dmc:cartpole-balance:pixels', got {env_id!r}.")
    domain, task = name.split("-", 1)
    domain = _DMC_DOMAINS.get(domain, domain)
    return suite, {"domain": domain, "task": task.replace("-", "_"), "pixels": kind == "pixels"}


def suite_settings(env_id: str, agent: str = "dreamerv3", **overrides: Any) -> DMCSettings | AtariSettings:
    """The reference settings of ``agent`` for the suite of ``env_id``, with ``overrides`` applied.

    Raises:
        ConfigError: an unknown agent, a suite the agent's reference does not
            run on (TD-MPC2 on Atari), or an unknown setting.
    """
    suite, fields = parse_suite_id(env_id)
    if agent not in AGENTS:
        raise ConfigError(f"agent must be one of {', '.join(map(repr, AGENTS))}, got {agent!r}.")
    table = DMC_REFERENCE if suite == "dmc" else ATARI_REFERENCE
    if agent not in table:
        raise ConfigError(f"The {agent} reference is not run on {suite} tasks, so there are no reference settings "
                          f"for {env_id!r}; use one of {sorted(table)}.")
    settings = table[agent]
    if suite == "dmc":
        settings = dataclasses.replace(settings, pixels=fields["pixels"])
    known = {field.name for field in dataclasses.fields(settings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"Unknown {suite} settings {unknown}; expected some of {sorted(known)}.")
    return dataclasses.replace(settings, **overrides)


def make_suite_env(env_id: str, agent: str = "dreamerv3", render_mode: str | None = None, **overrides: Any):
    """The ``gymnasium.Env`` of a suite id with ``agent``'s reference settings.

    Args:
        env_id: ``"dmc:<domain>-<task>[:pixels|:proprio]"`` or ``"atari:<game>"``.
        agent: ``"dreamerv3"`` or ``"tdmpc2"``: whose reference settings to use.
        render_mode: ``"rgb_array"`` to let ``render()`` return frames.
        **overrides: Fields of :class:`DMCSettings` or :class:`AtariSettings`.

    Raises:
        ConfigError: a malformed id, an unknown task or game, a missing package
            (``pip install 'worldloom[suites]'``), or unknown settings.
    """
    suite, fields = parse_suite_id(env_id)
    settings = suite_settings(env_id, agent, **overrides)
    if suite == "dmc":
        from worldloom.envs.dmc import DMCEnv

        return DMCEnv(fields["domain"], fields["task"], settings, env_id=env_id, render_mode=render_mode)
    from worldloom.envs.atari import AtariEnv

    return AtariEnv(fields["game"], settings, env_id=env_id, render_mode=render_mode)


def missing_package(package: str, err: Exception) -> ConfigError:
    return ConfigError(f"{package} is needed for this suite and could not be imported ({err}); install it with "
                       "pip install 'worldloom[suites]'.")
