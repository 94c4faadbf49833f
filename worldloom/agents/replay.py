"""``StreamReplay``: DreamerV3's replay, one continuous stream of steps per environment.

Layout (the reference's): row ``t`` of a stream holds the observation
``obs_t``, the reward ``reward_t`` that arrived with it (0 at the first step of
an episode), the flags ``is_first``/``is_last``/``is_terminal`` of that
observation, the action the agent took at it (ignored after a last step) and
the agent's latent ``(deter, stoch)`` after observing it. The terminal
observation of an episode is a row of its own, so its reward and continue are
predicted from its posterior. Episodes follow each other in a stream and
windows may cross them (``is_first`` resets the model there).

Steps are added one at a time as they happen, so a long episode is trained
on while it runs. A window of ``T + 1`` rows starts from the stored latent of
its first row (the reference's ``replay_context: 1``); the posteriors of the
other ``T`` rows are written back after each update (:meth:`StreamReplay.update`).

Online queue (the reference's ``replay.online: True``): each stream's steps
are cut into consecutive windows as they complete (the reference's starts:
rows ``1, L + 1, 2L + 1, ...`` of the stream, ``L`` the window length); a
sample takes the completed windows not yet trained first, oldest first, and
fills the rest of the batch uniformly. So every new window is trained once
soon after it is collected, however large the replay has grown.

Storage: the rows live in RAM, or in memory-mapped files of a directory
(:class:`~worldloom.training.replay_storage.DiskArrays`) for replays larger
than memory. A disk replay's :meth:`StreamReplay.save` writes its counters
and per-chunk checksums, not its rows; :meth:`StreamReplay.load` reopens the
files and checks them.
"""

from __future__ import annotations

import json
import os

import numpy as np

from worldloom.core.archives import read_npz, write_npz
from worldloom.core.errors import CheckpointError, ConfigError, DataError, ShapeError
from worldloom.training.replay_protocol import SampledBatch, WindowLocations
from worldloom.training.replay_storage import DiskArrays

FLAGS = ("is_first", "is_last", "is_terminal")
LATENTS = ("deter", "stoch")
FORMAT = "worldloom-stream-replay"
VERSION = 1
DISK_VERSION = 2  # a disk replay's file: counters and checksums, not rows

__all__ = ["StreamReplay"]


def _stoch_bytes(stoch) -> np.ndarray:
    """One-hot latents as stored (uint8). Rounded: a straight-through sample's ones can be 0.99999994 in f32."""
    return np.asarray(stoch).round().astype(np.uint8)


class StreamReplay:
    """Ring buffers of ``capacity // num_streams`` rows per environment stream.

    Args:
        capacity: Rows held over all streams.
        num_streams: Environments writing steps (one stream each).
        obs_shape, obs_dtype: One observation.
        action_dim: Action vector size (one-hot when discrete).
        deter, stoch: Sizes of the stored latent.
        seed: Seeds window sampling.
        online: Train each newly completed window once before uniform samples
            (the reference's online queue).
        directory: Keep the rows in memory-mapped files there (a disk replay);
            ``None``: in RAM.
        resume: With ``directory``: reopen the files a run wrote there (for
            :meth:`load`), instead of starting empty.
    """

    def __init__(self, capacity: int, num_streams: int, obs_shape, obs_dtype, action_dim: int, deter: int,
                 stoch: int, *, seed: int = 0, online: bool = False, directory=None, resume: bool = False):
        if num_streams < 1 or capacity < 2 * num_streams:
            raise DataError(f"StreamReplay: expected capacity >= 2 rows per stream, got capacity={capacity} "
                            f"for {num_streams} streams.")
        self.num_streams, self.rows = int(num_streams), int(capacity) // int(num_streams)
        self.obs_shape, self.action_dim = tuple(obs_shape), int(action_dim)
        self.disk = None if directory is None else DiskArrays(directory, self.num_streams, self.rows, resume=resume)
        self.data = self._allocate(self.rows, np.dtype(obs_dtype), int(deter), int(stoch))
        self.written = np.zeros(self.num_streams, np.int64) if self.disk is None else self.disk.head
        if self.disk is not None and not resume:
            self.written[:] = 0
        self.seed, self.online = seed, bool(online)
        self._rng = np.random.default_rng(seed)
        self.online_next = np.ones(self.num_streams, np.int64)  # start of each stream's next online window
        self.online_sampled = 0  # windows taken from the online queue

    def _allocate(self, rows: int, obs_dtype, deter: int, stoch: int, disk=None) -> dict:
        disk = self.disk if disk is None else disk
        layout = {"obs": (self.obs_shape, obs_dtype), "actions": ((self.action_dim,), np.float32),
                  "rewards": ((), np.float32), **{flag: ((), bool) for flag in FLAGS},
                  "deter": ((deter,), np.float32), "stoch": ((stoch,), np.uint8)}
        if disk is not None:
            return {key: disk.zeros(key, shape, dtype) for key, (shape, dtype) in layout.items()}
        return {key: np.zeros((self.num_streams, rows, *shape), dtype) for key, (shape, dtype) in layout.items()}

    def __len__(self) -> int:
        return int(np.minimum(self.written, self.rows).sum())

    @property
    def num_transitions(self) -> int:
        return len(self)

    @property
    def storage(self) -> str:
        """``"ram"`` or ``"disk"``."""
        return "ram" if self.disk is None else "disk"

    def add(self, step: dict) -> None:
        """Append one row to every stream: each value ``[num_streams, ...]`` (keys of :attr:`data`)."""
        missing = set(self.data) - set(step)
        if missing:
            raise DataError(f"StreamReplay.add: expected keys {sorted(self.data)}, missing {sorted(missing)}.")
        slot = self.written % self.rows
        streams = np.arange(self.num_streams)
        values = {}
        for key, store in self.data.items():
            value = np.asarray(step[key])
            if value.shape != (self.num_streams, *store.shape[2:]):
                raise ShapeError(f"StreamReplay.add: {key} expected shape "
                                 f"{[self.num_streams, *store.shape[2:]]}, got {list(value.shape)}.")
            values[key] = value
        values["stoch"] = _stoch_bytes(values["stoch"])
        for key, store in self.data.items():
            store[streams, slot] = values[key]
            if self.disk is not None:
                self.disk.mark(key, streams, slot)
        self.written += 1  # after the rows: a disk replay's counters never name a row not yet written

    def _windows(self, count: int, length: int):
        """``(stream [count], absolute start [count])`` of windows of ``length`` rows, uniform over all starts."""
        valid = self._window_starts(length)
        total = int(valid.sum())
        if total <= 0:
            raise DataError(f"StreamReplay: no stream holds a window of {length} rows yet "
                            f"(rows per stream: {np.minimum(self.written, self.rows).tolist()}).")
        draws = self._rng.integers(0, total, count)
        cumulative = np.cumsum(valid)
        stream = np.searchsorted(cumulative, draws, side="right")
        offset = draws - (cumulative[stream] - valid[stream])
        oldest = np.maximum(self.written - self.rows, 0)
        return stream, oldest[stream] + offset

    def _online_windows(self, count: int, length: int):
        """Up to ``count`` completed windows not yet trained, in the order they completed (then by stream).

        A window whose first row the ring has overwritten is passed over, as
        the reference passes over queued windows of removed chunks.
        """
        oldest = np.maximum(self.written - self.rows, 0)
        late = np.maximum(oldest - self.online_next, 0)
        self.online_next += -(-late // length) * length  # the first window still held, on the same grid
        ready = np.maximum((self.written - self.online_next) // length, 0)  # windows of L rows completed
        take = np.minimum(ready, count)
        streams = np.repeat(np.arange(self.num_streams), take)
        if streams.size == 0:
            return streams, streams
        index = np.arange(streams.size) - np.repeat(np.cumsum(take) - take, take)
        starts = self.online_next[streams] + index * length
        order = np.lexsort((streams, starts))[:count]
        streams, starts = streams[order], starts[order]
        np.add.at(self.online_next, streams, length)
        return streams, starts

    def _window_starts(self, length: int) -> np.ndarray:
        """``[num_streams]``: how many windows of ``length`` rows each stream holds."""
        return np.maximum(np.minimum(self.written, self.rows) - length + 1, 0)

    def window_count(self, length: int) -> int:
        """Windows of ``length`` rows held (their starts, summed over streams): the reference's ``len(replay)``."""
        return int(self._window_starts(length).sum())

    def sample(self, batch_size: int, length: int) -> SampledBatch:
        """``batch_size`` windows of ``length`` rows and where they came from.

        With ``online``, the completed windows not yet trained come first
        (the online queue), the rest of the batch uniformly over all starts.

        Returns:
            ``SampledBatch(data, where)``: ``data`` holds every row field
            ``[B, L, ...]`` except the latents, plus ``deter``/``stoch`` of row 0
            only (``[B, D]``, ``[B, S]`` f32), the context a window starts from;
            ``where`` (:class:`~worldloom.training.replay_protocol.WindowLocations`)
            locates the rows for :meth:`update`.
        """
        if self.online:
            stream, start = self._online_windows(batch_size, length)
            self.online_sampled += len(stream)
            if len(stream) < batch_size:
                more_stream, more_start = self._windows(batch_size - len(stream), length)
                stream, start = np.concatenate([stream, more_stream]), np.concatenate([start, more_start])
        else:
            stream, start = self._windows(batch_size, length)
        slots = (start[:, None] + np.arange(length)) % self.rows
        rows = stream[:, None], slots
        batch = {key: self.data[key][rows] for key in ("actions", "rewards", *FLAGS)}
        if self.disk is not None and self.disk.preads:  # a disk replay reads each window's frames at once
            batch["obs"] = self.disk.read_windows("obs", stream, start, length)
        else:
            batch["obs"] = self.data["obs"][rows]
        batch["deter"] = self.data["deter"][stream, slots[:, 0]]
        batch["stoch"] = self.data["stoch"][stream, slots[:, 0]].astype(np.float32)
        return SampledBatch(batch, WindowLocations(stream, slots))

    def update(self, where: WindowLocations, values: dict) -> None:
        """Store an update's fresh posteriors ``{"deter", "stoch"}`` ``[B, L-1, ...]`` in rows ``1..L-1`` of
        the windows ``where`` names (the replay protocol's write-back)."""
        self.write_latents(where, np.asarray(values["deter"]), np.asarray(values["stoch"]))

    def write_latents(self, where: tuple, deter: np.ndarray, stoch: np.ndarray) -> None:
        """Store fresh posteriors ``[B, L-1, ...]`` for rows ``1..L-1`` of the windows ``where`` names."""
        stream, slots = where
        rows = stream[:, None], slots[:, 1:]
        self.data["deter"][rows] = deter
        self.data["stoch"][rows] = _stoch_bytes(stoch)
        if self.disk is not None:
            for key in LATENTS:
                self.disk.mark(key, *rows)

    def end_episodes(self) -> None:
        """Make the newest row of every stream a last step (a resumed run restarts the episodes in flight)."""
        streams = np.flatnonzero(np.asarray(self.written) > 0)
        newest = (np.asarray(self.written)[streams] - 1) % self.rows
        self.data["is_last"][streams, newest] = True
        if self.disk is not None:
            self.disk.mark("is_last", streams, newest)

    def resize(self, capacity: int) -> StreamReplay:
        """Hold ``capacity // num_streams`` rows per stream from now on, keeping every row held, in order.

        A disk replay keeps the rows per stream it was created with (its files
        are sparse: room costs no disk until used); a larger ``capacity`` is refused.

        Raises:
            ConfigError: ``capacity`` holds fewer rows per stream than a stream
                holds now, or more than a disk replay's files hold.
        """
        rows = int(capacity) // self.num_streams
        held = np.minimum(self.written, self.rows)
        if rows < int(held.max(initial=0)):
            raise ConfigError(f"StreamReplay: a capacity of {capacity} rows ({rows} per stream) cannot keep the "
                              f"{int(held.sum())} rows held ({held.max()} in one stream); expected a capacity of at "
                              f"least {int(held.max()) * self.num_streams}.")
        if rows == self.rows or (self.disk is not None and rows < self.rows):
            return self
        if self.disk is not None:
            raise ConfigError(f"StreamReplay: a disk replay holds the {self.rows} rows per stream it was created "
                              f"with; expected a capacity of at most {self.rows * self.num_streams}, got {capacity}. "
                              "Start a new run to use a larger disk replay.")
        data = {key: np.zeros((self.num_streams, rows, *store.shape[2:]), store.dtype)
                for key, store in self.data.items()}
        for stream in range(self.num_streams):
            absolute = self.written[stream] - held[stream] + np.arange(held[stream])  # oldest to newest
            for key, store in self.data.items():  # the oldest row held goes to slot 0
                data[key][stream, :held[stream]] = store[stream, absolute % self.rows]
        # Counted from the oldest row held, so the ring goes on after the newest.
        offset = self.written - held
        self.data, self.rows, self.written = data, rows, held.astype(np.int64)
        self.online_next -= offset
        return self

    # ------------------------------------------------------------ files

    def _counters(self) -> dict:
        return {"written": np.array(self.written), "online_next": self.online_next.copy(),
                "rng": np.asarray(json.dumps(self._rng.bit_generator.state))}

    def save(self, path: str | os.PathLike) -> None:
        """Write the replay's state to a signed ``.npz`` file, atomically (:mod:`worldloom.core.archives`).

        A RAM replay writes every stream and counter. A disk replay flushes its
        files and writes its counters, its directory's id and a CRC-32 per
        chunk of rows (:class:`~worldloom.training.replay_storage.DiskArrays`);
        only the chunks changed since the last save are read.

        Raises:
            CheckpointError: the write failed (naming the path and the cause).
        """
        if self.disk is None:
            write_npz(path, {**self._counters(), **self.data}, format=FORMAT, version=VERSION,
                      what="agent's replay")
            return
        self.disk.flush()
        written = np.array(self.written)
        crcs = self.disk.checksums(np.minimum(written, self.rows))
        arrays = {**self._counters(), "written": written, "disk_id": np.asarray(self.disk.id),
                  "disk_directory": np.asarray(str(self.disk.directory.resolve())),
                  "epoch": np.asarray(self.disk.checked_epoch, np.int64), "rows": np.asarray(self.rows, np.int64),
                  **{f"crc/{key}": table for key, table in crcs.items()}}
        write_npz(path, arrays, format=FORMAT, version=DISK_VERSION, what="agent's disk replay")

    def load(self, path: str | os.PathLike) -> StreamReplay:
        """The replay protocol's name for :meth:`load_state`."""
        return self.load_state(path)

    def load_state(self, path: str | os.PathLike) -> StreamReplay:
        """Fill this replay from :meth:`save`'s file, keeping the saved capacity.

        A disk replay's file is read against the files this replay opened
        (``resume=True``): the same directory id, every chunk that has not
        changed since the save checked against its checksum. Rows the run added
        after the save (a run killed later) are kept: the files' own counters
        (``head.npy``) count them; chunks those rows overwrote, and latents
        written back after the save, are left unchecked.

        Raises:
            CheckpointError: a missing, unreadable, truncated or damaged file, a
                format version this worldloom does not read, rows of another
                shape (other observations, actions, latents or number of streams),
                a disk replay's file for another directory or storage, or a chunk
                that differs from its checksum.
        """
        saved = read_npz(path, format=FORMAT, versions=(VERSION, DISK_VERSION), what="agent's replay",
                         writer="StreamReplay.save()", signed=True)
        on_disk = "disk_id" in saved
        if on_disk != (self.disk is not None):
            raise CheckpointError(f"{path}: the replay was saved {'on disk' if on_disk else 'in RAM'}; expected a "
                                  f"replay of the same storage, got one {'on disk' if self.disk else 'in RAM'} "
                                  f"(replay_storage: resume with {'disk' if on_disk else 'ram'}).")
        try:
            generator = json.loads(str(saved["rng"]))
            written = saved["written"].astype(np.int64)
            online_next = saved["online_next"].astype(np.int64) if "online_next" in saved else written.copy()
        except (KeyError, ValueError, TypeError) as err:
            raise CheckpointError(f"{path}: expected the arrays 'written' and 'rng' of StreamReplay.save(), got "
                                  f"{sorted(saved)}: {err}") from err
        if written.shape != (self.num_streams,) or np.any(written < 0) or online_next.shape != written.shape:
            raise CheckpointError(f"{path}: written: expected {self.num_streams} non-negative row counts, got "
                                  f"{written.tolist()}.")
        if on_disk:
            self._load_disk(path, saved, written)
        else:
            self._load_rows(path, saved)
            self.written = written
        try:
            self._rng.bit_generator.state = generator
        except (TypeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{path}: rng: expected the sampler's generator state, got {err}.") from err
        self.online_next = online_next
        return self

    def _load_rows(self, path, saved: dict) -> None:
        missing = sorted(set(self.data) - set(saved))
        if missing:
            raise CheckpointError(f"{path}: expected the arrays {sorted(self.data)} of StreamReplay.save(), "
                                  f"missing {missing}.")
        for key, store in self.data.items():
            got = saved[key].shape
            if got[:1] + got[2:] != store.shape[:1] + store.shape[2:] or saved[key].dtype != store.dtype:
                raise CheckpointError(f"{path}: {key} expected {store.dtype} rows of shape "
                                      f"{[store.shape[0], 'rows', *store.shape[2:]]}, got {saved[key].dtype} "
                                      f"{list(got)}.")
        self.data = {key: saved[key] for key in self.data}
        self.rows = int(saved["obs"].shape[1])

    def _load_disk(self, path, saved: dict, written: np.ndarray) -> None:
        disk = self.disk
        try:
            disk_id, rows, epoch = str(saved["disk_id"]), int(saved["rows"]), int(saved["epoch"])
            crcs = {key[len("crc/"):]: value for key, value in saved.items() if key.startswith("crc/")}
        except (KeyError, ValueError, TypeError) as err:
            raise CheckpointError(f"{path}: expected a disk replay's id, rows and epoch, got {sorted(saved)}.") from err
        if disk_id != disk.id or rows != self.rows:
            raise CheckpointError(f"{path}: expected the disk replay {disk_id} of {rows} rows per stream, the files "
                                  f"at {disk.directory} are {disk.id} of {self.rows}; the checkpoint and the "
                                  "replay directory do not belong together.")
        live = np.array(self.written)
        if np.any(live < written):
            raise CheckpointError(f"{disk.directory / 'head.npy'}: the files hold {live.tolist()} rows per stream, "
                                  f"fewer than the {written.tolist()} the checkpoint counted.")
        overwritten = np.zeros((self.num_streams, self.rows), bool)
        for stream in range(self.num_streams):  # rows written after the save over rows it held
            first = max(int(written[stream]), self.rows)
            count = min(int(live[stream]) - first, self.rows)
            if count > 0:
                overwritten[stream, (first + np.arange(count)) % self.rows] = True
        self.unchecked_chunks = disk.verify(crcs, np.minimum(written, self.rows), epoch, overwritten,
                                            may_change=LATENTS)
