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
other ``T`` rows are written back after each update.
"""

from __future__ import annotations

import json
import os

import numpy as np

from worldloom.core.archives import read_npz, write_npz
from worldloom.core.errors import CheckpointError, DataError, ShapeError

FLAGS = ("is_first", "is_last", "is_terminal")
FORMAT = "worldloom-stream-replay"
VERSION = 1


class StreamReplay:
    """Ring buffers of ``capacity // num_streams`` rows per environment stream.

    Args:
        capacity: Rows held over all streams.
        num_streams: Environments writing steps (one stream each).
        obs_shape, obs_dtype: One observation.
        action_dim: Action vector size (one-hot when discrete).
        deter, stoch: Sizes of the stored latent.
        seed: Seeds window sampling.
    """

    def __init__(self, capacity: int, num_streams: int, obs_shape, obs_dtype, action_dim: int, deter: int,
                 stoch: int, *, seed: int = 0):
        if num_streams < 1 or capacity < 2 * num_streams:
            raise DataError(f"StreamReplay: expected capacity >= 2 rows per stream, got capacity={capacity} "
                            f"for {num_streams} streams.")
        self.num_streams, self.rows = int(num_streams), int(capacity) // int(num_streams)
        self.obs_shape, self.action_dim = tuple(obs_shape), int(action_dim)
        shape = (self.num_streams, self.rows)
        self.data = {
            "obs": np.zeros((*shape, *self.obs_shape), obs_dtype),
            "actions": np.zeros((*shape, self.action_dim), np.float32),
            "rewards": np.zeros(shape, np.float32),
            **{flag: np.zeros(shape, bool) for flag in FLAGS},
            "deter": np.zeros((*shape, int(deter)), np.float32),
            "stoch": np.zeros((*shape, int(stoch)), np.uint8),
        }
        self.written = np.zeros(self.num_streams, np.int64)  # rows ever written per stream
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return int(np.minimum(self.written, self.rows).sum())

    @property
    def num_transitions(self) -> int:
        return len(self)

    def add(self, step: dict) -> None:
        """Append one row to every stream: each value ``[num_streams, ...]`` (keys of :attr:`data`)."""
        missing = set(self.data) - set(step)
        if missing:
            raise DataError(f"StreamReplay.add: expected keys {sorted(self.data)}, missing {sorted(missing)}.")
        slot = self.written % self.rows
        streams = np.arange(self.num_streams)
        for key, store in self.data.items():
            value = np.asarray(step[key])
            if value.shape != (self.num_streams, *store.shape[2:]):
                raise ShapeError(f"StreamReplay.add: {key} expected shape "
                                 f"{[self.num_streams, *store.shape[2:]]}, got {list(value.shape)}.")
            store[streams, slot] = value
        self.written += 1

    def _windows(self, count: int, length: int):
        """``(stream [count], absolute start [count])`` of windows of ``length`` rows, uniform over all starts."""
        valid = np.maximum(np.minimum(self.written, self.rows) - length + 1, 0)
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

    def ready(self, length: int) -> bool:
        return bool((np.minimum(self.written, self.rows) >= length).any())

    def sample(self, batch_size: int, length: int) -> tuple[dict, tuple]:
        """``batch_size`` windows of ``length`` rows and where they came from.

        Returns:
            ``(batch, where)``: the batch holds every row field ``[B, L, ...]``
            except the latents, plus ``deter``/``stoch`` of row 0 only
            (``[B, D]``, ``[B, S]`` f32), the context a window starts from;
            ``where`` locates the rows for :meth:`write_latents`.
        """
        stream, start = self._windows(batch_size, length)
        slots = (start[:, None] + np.arange(length)) % self.rows
        rows = stream[:, None], slots
        batch = {key: self.data[key][rows] for key in ("obs", "actions", "rewards", *FLAGS)}
        batch["deter"] = self.data["deter"][stream, slots[:, 0]]
        batch["stoch"] = self.data["stoch"][stream, slots[:, 0]].astype(np.float32)
        return batch, (stream, slots)

    def write_latents(self, where: tuple, deter: np.ndarray, stoch: np.ndarray) -> None:
        """Store fresh posteriors ``[B, L-1, ...]`` for rows ``1..L-1`` of the windows ``where`` names."""
        stream, slots = where
        rows = stream[:, None], slots[:, 1:]
        self.data["deter"][rows] = deter
        self.data["stoch"][rows] = np.asarray(stoch).round().astype(np.uint8)

    def resize(self, capacity: int) -> StreamReplay:
        """Hold ``capacity // num_streams`` rows per stream from now on, keeping every row held, in order.

        Raises:
            ConfigError: ``capacity`` holds fewer rows per stream than a stream holds now.
        """
        from worldloom.core.errors import ConfigError

        rows = int(capacity) // self.num_streams
        held = np.minimum(self.written, self.rows)
        if rows < int(held.max(initial=0)):
            raise ConfigError(f"StreamReplay: a capacity of {capacity} rows ({rows} per stream) cannot keep the "
                              f"{int(held.sum())} rows held ({held.max()} in one stream); expected a capacity of at "
                              f"least {int(held.max()) * self.num_streams}.")
        if rows == self.rows:
            return self
        data = {key: np.zeros((self.num_streams, rows, *store.shape[2:]), store.dtype)
                for key, store in self.data.items()}
        for stream in range(self.num_streams):
            absolute = self.written[stream] - held[stream] + np.arange(held[stream])  # oldest to newest
            for key, store in self.data.items():  # the oldest row held goes to slot 0
                data[key][stream, :held[stream]] = store[stream, absolute % self.rows]
        # Counted from the oldest row held, so the ring goes on after the newest.
        self.data, self.rows, self.written = data, rows, held.astype(np.int64)
        return self

    # ------------------------------------------------------------ files

    def save(self, path: str | os.PathLike) -> None:
        """Write every stream and counter to a signed ``.npz`` file, atomically (:mod:`worldloom.core.archives`).

        Raises:
            CheckpointError: the write failed (naming the path and the cause).
        """
        write_npz(path, {"written": self.written, "rng": np.asarray(json.dumps(self._rng.bit_generator.state)),
                         **self.data}, format=FORMAT, version=VERSION, what="agent's replay")

    def load_state(self, path: str | os.PathLike) -> StreamReplay:
        """Fill this replay from :meth:`save`'s file, keeping the saved capacity.

        Raises:
            CheckpointError: a missing, unreadable, truncated or damaged file, a
                format version this worldloom does not read, or rows of another
                shape (other observations, actions, latents or number of streams).
        """
        saved = read_npz(path, format=FORMAT, versions=(VERSION,), what="agent's replay", writer="StreamReplay.save()",
                         signed=True)
        try:
            arrays = {key: saved[key] for key in (*self.data, "written")}
            generator = json.loads(str(saved["rng"]))
            written = arrays["written"].astype(np.int64)
        except (KeyError, ValueError, TypeError) as err:
            raise CheckpointError(f"{path}: expected the arrays {sorted(self.data)}, 'written' and 'rng' of "
                                  f"StreamReplay.save(), got {sorted(saved)}: {err}") from err
        for key, store in self.data.items():
            got = arrays[key].shape
            if got[:1] + got[2:] != store.shape[:1] + store.shape[2:] or arrays[key].dtype != store.dtype:
                raise CheckpointError(f"{path}: {key} expected {store.dtype} rows of shape "
                                      f"{[store.shape[0], 'rows', *store.shape[2:]]}, got {arrays[key].dtype} "
                                      f"{list(got)}.")
        if written.shape != (self.num_streams,) or np.any(written < 0):
            raise CheckpointError(f"{path}: written: expected {self.num_streams} non-negative row counts, got "
                                  f"{written.tolist()}.")
        try:
            self._rng.bit_generator.state = generator
        except (TypeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{path}: rng: expected the sampler's generator state, got {err}.") from err
        self.data = {key: arrays[key] for key in self.data}
        self.rows = int(arrays["obs"].shape[1])
        self.written = written
        return self
