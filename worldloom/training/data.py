"""Data utilities: random buffers for tests and episode collection from Gymnasium.

Example:
    >>> from worldloom.training.data import collect_episodes, create_random_buffer
    >>> buffer = create_random_buffer(capacity=10_000, obs_shape=(4,), action_dim=2,
    ...                               num_episodes=100, episode_length=100)
    >>> cartpole = collect_episodes("CartPole-v1", num_episodes=10, seed=0)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from worldloom.core.errors import ConfigError, ShapeError
from worldloom.envs.factory import make_env
from worldloom.training._buffer import ReplayBuffer
from worldloom.training._episode import integer, shape_tuple, storage_dtype


def create_random_buffer(capacity: int, obs_shape, action_dim: int, num_episodes: int = 100,
                         episode_length: int = 100, seed: int = 42, *, discrete: bool = True,
                         obs_dtype=None) -> ReplayBuffer:
    """A buffer of random episodes, for tests and examples.

    Observations are standard normal float32 (uniform ``uint8`` for image
    shapes ``(H, W, C)``), actions random one-hot (``discrete``) or uniform in
    [-1, 1], rewards standard normal; each episode ends in a terminal.

    Args:
        capacity: Buffer capacity (transitions).
        obs_shape: Observation shape.
        action_dim: Action size.
        num_episodes: Episodes to add.
        episode_length: Transitions per episode.
        seed: Seeds the data and the buffer's generator.
        discrete: One-hot (True) or continuous (False) actions.
        obs_dtype: Override of the observation dtype.

    Returns:
        A :class:`ReplayBuffer` holding the newest episodes that fit ``capacity``.

    Raises:
        ConfigError: counts that are not integers >= 1 (floats and bools are
            refused). ShapeError: a bad ``obs_shape`` or ``action_dim``.
    """
    obs_shape = shape_tuple("obs_shape", obs_shape)
    num_episodes, episode_length = integer("num_episodes", num_episodes), integer("episode_length", episode_length)
    capacity, action_dim = integer("capacity", capacity), integer("action_dim", action_dim, error=ShapeError)
    seed = integer("seed", seed, minimum=0)
    obs_dtype = None if obs_dtype is None else storage_dtype("obs_dtype", obs_dtype)
    rng = np.random.default_rng(seed)
    total = num_episodes * episode_length
    is_image = len(obs_shape) == 3
    if obs_dtype is None:
        obs_dtype = np.uint8 if is_image else np.float32
    if np.dtype(obs_dtype) == np.uint8:
        obs = rng.integers(0, 256, size=(total, *obs_shape), dtype=np.uint8)
    else:
        obs = rng.standard_normal((total, *obs_shape)).astype(obs_dtype)
    if discrete:
        actions = np.eye(action_dim, dtype=np.float32)[rng.integers(0, action_dim, size=total)]
    else:
        actions = rng.uniform(-1.0, 1.0, size=(total, action_dim)).astype(np.float32)
    rewards = rng.standard_normal(total).astype(np.float32)
    dones = (np.arange(total) % episode_length) == episode_length - 1
    buffer = ReplayBuffer(capacity, obs_shape, action_dim, obs_dtype=obs_dtype, seed=seed)
    # Episodes are cut at each done; only those that fit the ring are written.
    keep = min(num_episodes, max(capacity // episode_length, 1)) * episode_length
    buffer.add_episode(obs[-keep:], actions[-keep:], rewards[-keep:], dones=dones[-keep:])
    return buffer


def env_spaces(env, user: str = "collect_episodes") -> tuple[tuple, int, bool]:
    """``(obs_shape, action_dim, discrete)`` of a Gymnasium env, as worldloom's models and agents take it.

    Raises:
        ConfigError: an observation space that is not a Box (vectors or images), or an action
            space neither Discrete nor Box, naming ``user`` and the environment.
    """
    from gymnasium import spaces

    name = getattr(getattr(env, "spec", None), "id", None) or type(env).__name__
    if not isinstance(env.observation_space, spaces.Box):
        raise ConfigError(f"{user} ({name}): expected a Box observation space (vectors or images), got "
                          f"{env.observation_space}.")
    action_space = env.action_space
    if isinstance(action_space, spaces.Discrete):
        return tuple(env.observation_space.shape), int(action_space.n), True
    if isinstance(action_space, spaces.Box):
        return tuple(env.observation_space.shape), int(np.prod(action_space.shape)), False
    raise ConfigError(f"{user} ({name}): expected a Discrete or Box action space, got {action_space}.")


def collect_episodes(env, num_episodes: int, policy: Callable[[np.ndarray], Any] | None = None, seed: int = 0,
                     buffer: ReplayBuffer | None = None, *, capacity: int = 100_000,
                     max_episode_steps: int | None = None, env_kwargs: dict | None = None) -> ReplayBuffer:
    """Run ``num_episodes`` episodes of a Gymnasium env and store them.

    Row ``t`` holds ``obs_t``, the action taken there, and the reward and
    flags that followed it; ``terminated`` (continue 0) and ``truncated``
    (time limit, continue 1) are kept apart, and the observation after the
    last action is stored as the episode's ``final_obs``. ``Box`` actions
    with finite bounds are stored scaled to ``[-1, 1]`` (``2 (a - low) /
    (high - low) - 1``), the range both references' models are trained on
    (Pendulum's ``[-2, 2]`` torque is stored halved); ``policy`` still
    returns the environment's own actions.

    Args:
        env: An env id (``"CartPole-v1"``) or a ``gymnasium.Env`` (not closed here).
        num_episodes: Episodes to collect.
        policy: ``policy(obs) -> action``; uniform random actions when None.
        seed: Episode ``e`` resets with ``seed + e``; also seeds random actions.
        buffer: Buffer to add to (a new one of ``capacity`` when None).
        capacity: Capacity of a new buffer.
        max_episode_steps: Truncate episodes after this many steps.
        env_kwargs: Keyword arguments for ``gymnasium.make`` when ``env`` is an id.

    Returns:
        The buffer.

    Raises:
        ConfigError: unsupported spaces. ShapeError: a buffer of other shapes.
    """
    owned = isinstance(env, str)
    env = make_env(env, **(env_kwargs or {})) if owned else env
    try:
        obs_shape, action_dim, discrete = env_spaces(env)
        if buffer is None:
            obs_dtype = np.uint8 if env.observation_space.dtype == np.uint8 else None
            buffer = ReplayBuffer(capacity, obs_shape, action_dim, obs_dtype=obs_dtype, seed=seed)
        elif tuple(buffer.obs_shape) != obs_shape or buffer.action_dim != action_dim:
            raise ShapeError(f"The buffer holds obs {list(buffer.obs_shape)} and actions of size {buffer.action_dim}; "
                             f"the env gives obs {list(obs_shape)} and actions of size {action_dim}.")
        env.action_space.seed(seed)
        scale = None if discrete else _unit_scale(env.action_space)
        for episode in range(integer("num_episodes", num_episodes)):
            _run_episode(env, buffer, policy, seed + episode, discrete, max_episode_steps, scale)
    finally:
        if owned:
            env.close()
    return buffer


def _unit_scale(space) -> tuple[np.ndarray, np.ndarray] | None:
    """``(low, high)`` of a Box action space stored scaled to [-1, 1]; None to store its actions as they are."""
    low = np.asarray(space.low, np.float64).reshape(-1)
    high = np.asarray(space.high, np.float64).reshape(-1)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
        return None
    if np.allclose(low, -1.0) and np.allclose(high, 1.0):
        return None
    return low, high


def _run_episode(env, buffer: ReplayBuffer, policy, seed: int, discrete: bool, max_steps: int | None,
                 scale: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    obs, _ = env.reset(seed=seed)
    rows: dict[str, list] = {"obs": [], "actions": [], "rewards": [], "terminated": [], "truncated": []}
    while True:
        action = env.action_space.sample() if policy is None else policy(obs)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        truncated = bool(truncated) or (max_steps is not None and len(rows["obs"]) + 1 >= max_steps)
        rows["obs"].append(obs)
        if discrete:
            rows["actions"].append(int(action))
        else:
            flat = np.asarray(action, np.float64).reshape(-1)
            if scale is not None:
                flat = 2.0 * (flat - scale[0]) / (scale[1] - scale[0]) - 1.0
            rows["actions"].append(flat.astype(np.float32))
        rows["rewards"].append(float(reward))
        rows["terminated"].append(bool(terminated))
        rows["truncated"].append(truncated and not terminated)
        obs = next_obs
        if terminated or truncated:
            break
    buffer.add_episode(obs=np.stack(rows["obs"]), actions=np.asarray(rows["actions"]),
                       rewards=np.asarray(rows["rewards"], np.float32), terminated=np.asarray(rows["terminated"]),
                       truncated=np.asarray(rows["truncated"]), final_obs=np.asarray(obs))


__all__ = ["collect_episodes", "create_random_buffer", "make_env", "shape_tuple"]
