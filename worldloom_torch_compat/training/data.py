"""Data utilities returning torch-facing buffers (see :mod:`worldloom.training.data`)."""

from __future__ import annotations

from typing import Any

from worldloom.training import data as jax_data
from worldloom_torch_compat.model import channels_last
from worldloom_torch_compat.training._buffer import ReplayBuffer, unwrap_buffer


def create_random_buffer(capacity: int, obs_shape, action_dim: int, num_episodes: int = 100,
                         episode_length: int = 100, seed: int = 42, **kwargs: Any) -> ReplayBuffer:
    """A buffer of random episodes, for tests and examples (image ``obs_shape`` channels first).

    Arguments as :func:`worldloom.training.data.create_random_buffer`.
    """
    return ReplayBuffer.wrap(jax_data.create_random_buffer(capacity, channels_last(obs_shape), action_dim,
                                                           num_episodes, episode_length, seed, **kwargs))


def collect_episodes(env, num_episodes: int, policy=None, seed: int = 0, buffer: ReplayBuffer | None = None,
                     **kwargs: Any) -> ReplayBuffer:
    """Run episodes of a Gymnasium env into a buffer (see :func:`worldloom.training.data.collect_episodes`).

    ``policy(obs)`` receives the env's own observations (NumPy).
    """
    out = jax_data.collect_episodes(env, num_episodes, policy, seed, unwrap_buffer(buffer), **kwargs)
    return buffer if buffer is not None else ReplayBuffer.wrap(out)


__all__ = ["collect_episodes", "create_random_buffer"]
