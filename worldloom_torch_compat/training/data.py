"""Data utilities returning torch-facing buffers (see :mod:`worldloom.training.data`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

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


class TrajectoryDataset(torch.utils.data.Dataset):
    """A ``torch.utils.data.Dataset`` of windows sampled from a buffer (the original's ``TrajectoryDataset``).

    Item ``i`` is one window of ``seq_len`` transitions drawn from ``buffer``
    (a fresh draw on each access): ``obs [T, *obs_shape]``, ``actions [T, A]``,
    ``rewards [T]``, ``continues [T]``, ... as torch tensors; a ``DataLoader``
    batches them to ``[B, T, ...]``. ``len`` is ``samples_per_epoch``.

    In the main process the windows come from the buffer's own generator. In a
    ``DataLoader`` worker they come from a generator seeded with the worker's
    ``get_worker_info().seed``, so workers draw different windows (and new ones
    each epoch), as the source's ``np.random``, which torch reseeds per worker.

    Example:
        >>> dataset = TrajectoryDataset(buffer, seq_len=10, samples_per_epoch=100)
        >>> loader = torch.utils.data.DataLoader(dataset, batch_size=16, num_workers=2)
    """

    def __init__(self, buffer: ReplayBuffer, seq_len: int = 50, samples_per_epoch: int = 10_000):
        self.buffer = buffer if isinstance(buffer, ReplayBuffer) else ReplayBuffer.wrap(buffer)
        self.seq_len, self.samples_per_epoch = int(seq_len), int(samples_per_epoch)
        self._worker: tuple[int, np.random.Generator] | None = None  # (worker seed, its generator)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -self.samples_per_epoch <= index < self.samples_per_epoch:
            raise IndexError(f"TrajectoryDataset index {index} out of range [0, {self.samples_per_epoch}).")
        worker = torch.utils.data.get_worker_info()
        if worker is None:
            batch = self.buffer.sample(1, self.seq_len)
        else:
            if self._worker is None or self._worker[0] != worker.seed:
                self._worker = (worker.seed, np.random.default_rng(worker.seed))
            jax_buffer = self.buffer.jax_buffer
            batch = self.buffer._to_torch(jax_buffer.gather(jax_buffer.window_rows(self._worker[1], 1, self.seq_len)))
        return {key: value[0] for key, value in batch.items()}


__all__ = ["ReplayBuffer", "TrajectoryDataset", "collect_episodes", "create_random_buffer"]
