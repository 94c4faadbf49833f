"""``EpisodeReplay``: TD-MPC2's replay of whole episodes, behind the replay protocol.

It holds a :class:`~worldloom.training.ReplayBuffer` (the documented API,
unchanged) in RAM or in memory-mapped files
(:class:`~worldloom.training.replay_storage.DiskArrays`), and adds what the
online loop needs: :meth:`EpisodeReplay.add` of one episode, episode-uniform
windows (:meth:`ReplayBuffer.sample_episodes`, the reference's sampling) as a
:class:`~worldloom.training.replay_protocol.SampledBatch`, and a
:meth:`~EpisodeReplay.save`/:meth:`~EpisodeReplay.load` pair that, for a disk
replay, writes the bookkeeping (episode bounds, final observations, counters)
and per-chunk checksums instead of a copy of the rows.

A disk replay resumes to its checkpoint: episodes a killed run added after it
are dropped (they are collected again), and so are the checkpoint's episodes
whose rows those later episodes overwrote in the ring (the ring would have
dropped them anyway). Every other row is checked against its checksum.
"""

from __future__ import annotations

import json
import os

import numpy as np

from worldloom.core.archives import read_npz, write_npz
from worldloom.core.errors import CheckpointError, ConfigError
from worldloom.training._buffer import ReplayBuffer
from worldloom.training.replay_protocol import SampledBatch
from worldloom.training.replay_storage import DiskArrays

FORMAT = "worldloom-episode-replay"
VERSION = 1

__all__ = ["EpisodeReplay"]


class EpisodeReplay:
    """Whole episodes in a ring of ``capacity`` rows, sampled episode-uniformly.

    Args:
        capacity: Rows held.
        obs_shape, obs_dtype: One observation.
        action_dim: Action vector size (one-hot when discrete).
        seed: Seeds window sampling.
        directory: Keep the rows in memory-mapped files there; ``None``: in RAM.
        resume: With ``directory``: reopen the files a run wrote there (for :meth:`load`).
    """

    def __init__(self, capacity: int, obs_shape, obs_dtype, action_dim: int, *, seed: int = 0, directory=None,
                 resume: bool = False):
        self.capacity = int(capacity)
        self.disk = None if directory is None else DiskArrays(directory, 1, self.capacity, resume=resume)
        self.buffer = ReplayBuffer(self.capacity, obs_shape, action_dim, obs_dtype=obs_dtype, seed=seed,
                                   storage=self.disk)
        if self.disk is not None and not resume:
            self.disk.head[:] = 0

    @property
    def storage(self) -> str:
        """``"ram"`` or ``"disk"``."""
        return "ram" if self.disk is None else "disk"

    def __len__(self) -> int:
        return self.buffer.num_transitions

    def add(self, episode: dict) -> None:
        """Append one episode: the keywords of :meth:`ReplayBuffer.add_episode` (``obs``, ``actions``, ...)."""
        self.buffer.add_episode(**episode)

    def ready(self, length: int) -> bool:
        """Whether an episode holds a window of ``length`` observations (its final one included)."""
        bounds = self.buffer.episode_bounds()
        return bool(len(bounds)) and bool(((bounds[:, 1] - bounds[:, 0]) + 1 >= length).any())

    def sample(self, batch_size: int, length: int) -> SampledBatch:
        """Windows inside episodes (:meth:`ReplayBuffer.sample_episodes`); nothing goes back, so ``where`` is None."""
        return SampledBatch(self.buffer.sample_episodes(batch_size, length), None)

    def update(self, where, values: dict) -> None:
        """Nothing: TD-MPC2's replay stores no values of the update."""

    # ------------------------------------------------------------ files

    def save(self, path: str | os.PathLike) -> None:
        """RAM: :meth:`ReplayBuffer.save` (every row). Disk: the bookkeeping and per-chunk checksums, signed.

        Raises:
            CheckpointError: the write failed (naming the path and the cause).
        """
        buffer = self.buffer
        if self.disk is None:
            buffer.save(path)
            return
        self.disk.flush()
        bounds = buffer.episode_bounds()
        held = np.array([min(buffer._written, self.capacity)], np.int64)
        crcs = self.disk.checksums(held)
        starts = [int(start) for start in bounds[:, 0] if int(start) in buffer._final_obs]
        obs_shape = buffer.obs_shape
        final = (np.stack([buffer._final_obs[start] for start in starts]) if starts
                 else np.zeros((0, *obs_shape), buffer.obs_dtype or np.float32))
        write_npz(path, {
            "bounds": bounds, "written": np.asarray(buffer._written, np.int64),
            "final_obs": final, "final_obs_start": np.asarray(starts, np.int64),
            "obs_dtype": np.asarray("" if buffer.obs_dtype is None else buffer.obs_dtype.str),
            "rng": np.asarray(json.dumps(buffer._rng.bit_generator.state)),
            "disk_id": np.asarray(self.disk.id), "epoch": np.asarray(self.disk.checked_epoch, np.int64),
            "capacity": np.asarray(self.capacity, np.int64),
            **{f"crc/{key}": table for key, table in crcs.items()},
        }, format=FORMAT, version=VERSION, what="agent's disk replay")

    def load(self, path: str | os.PathLike) -> EpisodeReplay:
        """Restore :meth:`save`'s file into this replay (a RAM replay: grown to this replay's capacity).

        Raises:
            ConfigError: the saved episodes hold more rows than this capacity.
            CheckpointError: a damaged or foreign file, another storage, or
                (disk) a chunk that differs from its checksum.
        """
        if self.disk is None:
            self._load_rows(path)
        else:
            self._load_disk(path)
        return self

    def _load_rows(self, path) -> None:
        if "disk_id" in _peek(path):
            raise CheckpointError(f"{path}: the replay was saved on disk; expected a replay in RAM, resume with "
                                  "replay_storage 'disk'.")
        buffer = ReplayBuffer.load(path)
        if buffer.num_transitions > self.capacity:
            raise ConfigError(f"The replay in {path} holds {buffer.num_transitions} transitions; expected a "
                              f"capacity of at least that, got {self.capacity} (buffer_capacity or total_steps "
                              "lowered since the run was saved).")
        if buffer.capacity != self.capacity:
            buffer = ReplayBuffer.load(path, capacity=self.capacity)
        self.buffer = buffer

    def _load_disk(self, path) -> None:
        saved = read_npz(path, format=FORMAT, versions=(VERSION,), what="agent's disk replay",
                         writer="EpisodeReplay.save()", signed=True)
        try:
            bounds, written = saved["bounds"].astype(np.int64), int(saved["written"])
            disk_id, epoch, capacity = str(saved["disk_id"]), int(saved["epoch"]), int(saved["capacity"])
            final, final_start = saved["final_obs"], saved["final_obs_start"].astype(np.int64)
            generator, obs_dtype = json.loads(str(saved["rng"])), str(saved["obs_dtype"])
            crcs = {key[len("crc/"):]: value for key, value in saved.items() if key.startswith("crc/")}
        except (KeyError, ValueError, TypeError) as err:
            raise CheckpointError(f"{path}: expected the bookkeeping of EpisodeReplay.save(), got {sorted(saved)}: "
                                  f"{err}") from err
        disk = self.disk
        if disk_id != disk.id or capacity != self.capacity:
            raise CheckpointError(f"{path}: expected the disk replay {disk_id} of {capacity} rows, the files at "
                                  f"{disk.directory} are {disk.id} of {self.capacity}; the checkpoint and the "
                                  "replay directory do not belong together.")
        if bounds.ndim != 2 or bounds.shape[1:] != (2,) or len(final) != len(final_start):
            raise CheckpointError(f"{path}: expected episode bounds [E, 2] and one final observation per start, got "
                                  f"{list(bounds.shape)} and {len(final)} for {len(final_start)}.")
        live = int(disk.head[0])
        if live < written:
            raise CheckpointError(f"{disk.directory / 'head.npy'}: the files hold {live} rows, fewer than the "
                                  f"{written} the checkpoint counted.")
        overwritten = np.zeros((1, self.capacity), bool)  # rows added after the save over rows it held
        first = max(written, self.capacity)
        count = min(live - first, self.capacity)
        if count > 0:
            overwritten[0, (first + np.arange(count)) % self.capacity] = True
        self.unchecked_chunks = disk.verify(crcs, np.array([min(written, self.capacity)]), epoch, overwritten)
        buffer = self.buffer
        if obs_dtype and buffer._obs is None:
            buffer._allocate_obs(np.dtype(obs_dtype))
        drop = 0  # the ring overwrites the oldest rows first: drop the oldest episodes that lost a row
        while drop < len(bounds) and overwritten[0, np.arange(*bounds[drop]) % self.capacity].any():
            drop += 1
        bounds = bounds[drop:]
        buffer._episodes.clear()
        buffer._episodes.extend((int(start), int(end - start)) for start, end in bounds)
        finals = dict(zip(final_start.tolist(), final))
        buffer._final_obs = {int(start): finals[int(start)] for start, _ in bounds if int(start) in finals}
        buffer._written = written
        disk.head[0] = written  # rows of episodes added after the checkpoint are dropped: collected again
        try:
            buffer._rng.bit_generator.state = generator
        except (TypeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{path}: rng: expected the sampler's generator state, got {err}.") from err


def _peek(path) -> set:
    """The array names of a replay file (for telling a disk replay's file from a buffer's)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return {name[:-4] for name in archive.namelist()}
    except (OSError, zipfile.BadZipFile):
        return set()  # ReplayBuffer.load reports a missing or damaged file with its own message
