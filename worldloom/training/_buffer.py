"""The replay buffer: a ring of transitions grouped into episodes.

Row ``t`` of an episode holds ``obs_t, action_t, reward_t, done_t``:
``reward_t`` and ``done_t`` follow ``action_t`` (the spec's collection loop).
Episodes are written one after another into a ring of ``capacity`` rows.
When the ring wraps, an episode that is (even partly) overwritten is dropped
whole, so the retained rows always form one contiguous run of whole episodes
``[oldest, written)`` in absolute row numbers (row ``a`` lives at slot
``a % capacity``). A sampled window is ``seq_len`` consecutive rows of that
run: it may span several episodes (``is_first`` marks where each starts) but
never reads a dropped row or crosses the write head.
"""

from __future__ import annotations

import collections
import json
import math
import os
from typing import Any

import numpy as np

from worldloom.core.archives import write_npz as write_archive
from worldloom.core.config import flag
from worldloom.core.errors import CheckpointError, ConfigError, DataError, ShapeError
from worldloom.core.validation import check_observations
from worldloom.training import _buffer_io
from worldloom.training._episode import (
    INDEX_BYTES,
    as_array,
    check_episode,
    integer,
    memory_limit,
    shape_tuple,
    size_text,
    storage_dtype,
)

BATCH_KEYS = ("obs", "actions", "rewards", "continues", "is_first", "terminals")


class ReplayBuffer:
    """Storage for trajectories, sampled as ``[B, T, ...]`` windows.

    Args:
        capacity: Maximum number of transitions (rows) held.
        obs_shape: Shape of one observation, e.g. ``(4,)`` or ``(64, 64, 3)``.
        action_dim: Size of an action vector (number of actions when discrete).
        obs_dtype: Storage dtype of observations. ``None``: the dtype of the
            first episode added (``uint8`` images stay ``uint8``; float64 is
            stored as float32).
        seed: Seeds the buffer's own generator used by :meth:`sample`.
        storage: Where rows live: ``None`` (RAM, the default), or a
            :class:`~worldloom.training.replay_storage.DiskArrays` of one
            stream and ``capacity`` rows (memory-mapped files; see
            :class:`~worldloom.training.episode_replay.EpisodeReplay`, which
            saves and reopens such a buffer).

    Raises:
        ConfigError: ``capacity``/``seed`` not integers (>= 1 / >= 0) or an
            unknown ``obs_dtype``. ShapeError: ``obs_shape``/``action_dim`` not
            positive integers. Floats and bools are refused, not rounded.

    Example:
        >>> buffer = ReplayBuffer(capacity=1000, obs_shape=(4,), action_dim=2)
        >>> buffer.add_episode(obs=np.zeros((10, 4)), actions=np.zeros((10, 1), int),
        ...                    rewards=np.ones(10), dones=np.eye(10)[-1])
        >>> buffer.sample(batch_size=2, seq_len=5)["obs"].shape
        (2, 5, 4)
    """

    #: Largest batch, in bytes, :meth:`sample`/:meth:`window_rows` may build; ``None``: half of
    #: :func:`memory_limit`. Set it on a buffer (or on the class) to lower or raise the bound.
    max_sample_bytes: int | None = None

    def __init__(self, capacity: int, obs_shape, action_dim: int, *, obs_dtype=None, seed: int = 0, storage=None):
        self.capacity = capacity = integer("capacity", capacity)
        self.obs_shape = shape_tuple("obs_shape", obs_shape)
        self.action_dim = integer("action_dim", action_dim, error=ShapeError)
        self.obs_dtype = None if obs_dtype is None else storage_dtype("obs_dtype", obs_dtype)
        self.seed = integer("seed", seed, minimum=0)
        self._rng = np.random.default_rng(self.seed)
        self._storage = storage
        self._written = 0  # absolute number of rows ever written
        # Retained episodes, oldest first: (absolute start row, length).
        self._episodes: collections.deque[tuple[int, int]] = collections.deque()
        self._final_obs: dict[int, np.ndarray] = {}  # absolute start row -> observation after the episode
        self._obs = None
        self._actions = self._zeros("actions", (self.action_dim,), np.float32)
        self._rewards = self._zeros("rewards", (), np.float32)
        self._dones, self._terminals, self._is_first = (self._zeros(name, (), bool)
                                                        for name in ("dones", "terminals", "is_first"))
        if self.obs_dtype is not None:
            self._allocate_obs(self.obs_dtype)

    # ------------------------------------------------------------ accounting

    @property
    def num_episodes(self) -> int:
        """Number of whole episodes held."""
        return len(self._episodes)

    @property
    def num_transitions(self) -> int:
        """Number of transitions (rows) held."""
        return self._written - self._oldest

    def __len__(self) -> int:
        return self.num_transitions

    @property
    def _oldest(self) -> int:
        return self._episodes[0][0] if self._episodes else self._written

    def __repr__(self) -> str:
        dtype = None if self._obs is None else self._obs.dtype
        return (f"ReplayBuffer(capacity={self.capacity}, obs_shape={self.obs_shape}, obs_dtype={dtype}, "
                f"action_dim={self.action_dim}, episodes={self.num_episodes}, "
                f"transitions={self.num_transitions})")

    # ------------------------------------------------------------ writing

    def _zeros(self, name: str, row_shape: tuple, dtype) -> np.ndarray:
        """A ``[capacity, *row_shape]`` array (in RAM or in ``storage``); ConfigError when the memory cannot be had."""
        if self._storage is not None:
            return self._storage.zeros(name, row_shape, dtype)[0]
        try:
            return np.zeros((self.capacity, *row_shape), dtype)
        except (MemoryError, ValueError) as err:  # ValueError: larger than NumPy can index
            need = self.capacity * math.prod(row_shape) * np.dtype(dtype).itemsize
            raise ConfigError(f"capacity={self.capacity}: expected a buffer that fits in memory, got one needing "
                              f"{size_text(need)} for {np.dtype(dtype)} rows of shape {list(row_shape)}.") from err

    def _allocate_obs(self, dtype: np.dtype) -> None:
        self._obs = self._zeros("obs", self.obs_shape, dtype)
        self.obs_dtype = np.dtype(dtype)

    def add_episode(self, obs, actions, rewards, dones=None, terminated=None, truncated=None, final_obs=None) -> None:
        """Append one episode of ``T`` transitions.

        Args:
            obs: ``[T, *obs_shape]``; ``obs[t]`` is seen before ``actions[t]``.
            actions: ``[T, action_dim]``, or discrete indices ``[T]``/``[T, 1]``
                (one-hot encoded here when ``action_dim > 1``).
            rewards: ``[T]``; ``rewards[t]`` follows ``actions[t]``.
            dones: ``[T]`` bool; the episode ends after this row. Without
                ``terminated``, a done counts as terminal (continue 0).
            terminated: Optional ``[T]`` bool: a true terminal (continue 0).
            truncated: Optional ``[T]`` bool: a time-limit end; the episode
                stops but the continue stays 1.
            final_obs: Optional ``[*obs_shape]``: the observation after the last
                action (kept with the episode, see :meth:`episode`).

        A done before the last row splits the arrays into several episodes.

        Raises:
            ShapeError: an array of the wrong shape (the message says what was expected).
            DataError: NaN/inf values, values too large for float32 (or for
                ``obs_dtype``), indices out of range, an episode longer than the capacity;
                images (``obs_shape`` of three axes) the models cannot read: integers
                outside 0..255, float 0..255 pixels, bools (:mod:`worldloom.core.validation`).
        """
        obs_dtype = self.obs_dtype
        if obs_dtype is None:
            obs = as_array("obs", obs)
            obs_dtype = np.dtype(np.float32) if obs.dtype in (np.float64, np.bool_) else obs.dtype
        episode = check_episode(obs, actions, rewards, dones, terminated, truncated, final_obs,
                                obs_shape=self.obs_shape, obs_dtype=obs_dtype,
                                action_dim=self.action_dim)
        if len(self.obs_shape) == 3:  # images, by the models' rules: integers in 0..255, floats as [0, 1]
            for name in ("obs", "final_obs"):
                if episode[name] is not None:
                    check_observations(name, episode[name], image=True)
        if self._obs is None:
            self._allocate_obs(obs_dtype)
        # A done before the last row ends an episode there: write the pieces separately.
        cuts = np.flatnonzero(episode["dones"][:-1]) + 1
        bounds = list(zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(episode["rewards"])]])))
        longest = max(end - start for start, end in bounds)
        if longest > self.capacity:
            raise DataError(f"An episode of {longest} transitions does not fit a buffer of capacity {self.capacity}.")
        for start, end in bounds:
            last = end == len(episode["rewards"])
            self._write({k: (v[start:end] if k != "final_obs" else (v if last else None))
                         for k, v in episode.items()})

    def _write(self, episode: dict[str, Any]) -> None:
        length = len(episode["rewards"])
        start = self._written
        slots = (start + np.arange(length)) % self.capacity
        self._obs[slots] = episode["obs"]
        self._actions[slots] = episode["actions"]
        self._rewards[slots] = episode["rewards"]
        self._dones[slots] = episode["dones"]
        self._terminals[slots] = episode["terminals"]
        self._is_first[slots] = np.arange(length) == 0
        if self._storage is not None:
            for name in self._storage.layout:
                self._storage.mark(name, 0, slots)
            self._storage.head[0] = start + length  # after the rows: the count never names a row not written
        self._written = start + length
        self._episodes.append((start, length))
        if episode.get("final_obs") is not None:
            self._final_obs[start] = episode["final_obs"]
        # Drop every episode whose first row has been overwritten.
        while self._episodes and self._episodes[0][0] < self._written - self.capacity:
            dropped, _ = self._episodes.popleft()
            self._final_obs.pop(dropped, None)

    # ------------------------------------------------------------ reading

    def episode(self, index: int) -> dict[str, np.ndarray]:
        """One held episode (``index`` 0 is the oldest, -1 the newest).

        Returns:
            ``obs [T, *obs_shape]``, ``actions [T, A]``, ``rewards [T]``,
            ``dones [T]``, ``terminals [T]`` and ``final_obs`` (or None).
        """
        count = len(self._episodes)
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise DataError(f"episode index: expected an int, got {type(index).__name__} {index!r}.")
        if not -count <= index < count:
            raise DataError(f"episode index {index} out of range for a buffer holding {count} episodes.")
        start, length = self._episodes[index]
        slots = (start + np.arange(length)) % self.capacity
        return {
            "obs": self._obs[slots], "actions": self._actions[slots], "rewards": self._rewards[slots],
            "dones": self._dones[slots], "terminals": self._terminals[slots],
            "final_obs": self._final_obs.get(start),
        }

    def episode_bounds(self) -> np.ndarray:
        """``[num_episodes, 2]`` absolute ``(start, end)`` rows of the held episodes, oldest first."""
        if not self._episodes:
            return np.zeros((0, 2), np.int64)
        starts = np.fromiter((s for s, _ in self._episodes), np.int64, len(self._episodes))
        lengths = np.fromiter((n for _, n in self._episodes), np.int64, len(self._episodes))
        return np.stack([starts, starts + lengths], 1)

    def segments(self) -> np.ndarray:
        """``[1, 2]``: the contiguous run of held rows ``(oldest, written)``."""
        return np.array([[self._oldest, self._written]], np.int64)

    def window_rows(self, rng: np.random.Generator, batch_size: int, seq_len: int,
                    segments: np.ndarray | None = None, lead: tuple = ()) -> np.ndarray:
        """Absolute rows of ``[*lead, batch_size, seq_len]`` windows, uniform over valid starts.

        Args:
            rng: The generator to draw window starts from.
            segments: ``[S, 2]`` absolute ``(start, end)`` runs a window must lie
                in; defaults to all held rows.
            lead: Extra leading axes (e.g. ``(K,)`` for K batches at once).

        Raises:
            ConfigError: ``batch_size``/``seq_len`` not integers >= 1, or a
                batch larger than :meth:`sample_limit` bytes.
            DataError: no run holds ``seq_len`` rows.
        """
        batch_size, seq_len = integer("batch_size", batch_size), integer("seq_len", seq_len)
        lead = tuple(integer("lead", size) for size in lead)
        self.check_sample_size(math.prod(lead) * batch_size, seq_len)
        segments = self.segments() if segments is None else np.asarray(segments, np.int64)
        counts = np.maximum(segments[:, 1] - segments[:, 0] - seq_len + 1, 0)
        total = int(counts.sum())
        if total <= 0:
            longest = int((segments[:, 1] - segments[:, 0]).max(initial=0))
            raise DataError(f"Cannot sample windows of seq_len={seq_len}: the buffer holds "
                            f"{self.num_transitions} transitions and the longest usable run is {longest}; "
                            f"add more episodes or lower seq_len.")
        cumulative = np.cumsum(counts)
        draws = rng.integers(0, total, size=(*lead, batch_size))
        segment = np.searchsorted(cumulative, draws, side="right")
        starts = segments[segment, 0] + draws - (cumulative[segment] - counts[segment])
        return starts[..., None] + np.arange(seq_len)

    def bytes_per_transition(self) -> int:
        """Bytes one sampled transition takes: every batch field plus the row indices."""
        obs_dtype = self.obs_dtype if self.obs_dtype is not None else np.dtype(np.float32)
        obs = obs_dtype.itemsize * math.prod(self.obs_shape)
        return obs + 4 * self.action_dim + 4 + 4 + 1 + 1 + INDEX_BYTES

    def sample_limit(self) -> int:
        """The most bytes one sample may take: ``max_sample_bytes``, or half of :func:`memory_limit`."""
        limit = self.max_sample_bytes
        if limit is None:
            return memory_limit() // 2
        return integer("max_sample_bytes", limit)

    def check_sample_size(self, batch_size: int, seq_len: int) -> None:
        """Refuse, before allocating, a ``[batch_size, seq_len]`` sample larger than :meth:`sample_limit`.

        Raises:
            ConfigError: the sample would need more bytes than the limit.
        """
        per_row = self.bytes_per_transition()
        need, limit = batch_size * seq_len * per_row, self.sample_limit()
        if need > limit:
            source = ("max_sample_bytes" if self.max_sample_bytes is not None
                      else "max_sample_bytes=None: half of the memory this process may use")
            raise ConfigError(f"sample: batch_size={batch_size} x seq_len={seq_len} needs {size_text(need)} "
                              f"({per_row} bytes per transition); expected at most {size_text(limit)} "
                              f"({source}). Lower batch_size/seq_len, or raise buffer.max_sample_bytes.")

    def gather(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The batch at absolute ``rows`` ``[..., T]`` (fancy indexing, one pass per field).

        Returns:
            ``obs [..., T, *obs_shape]`` (storage dtype), ``actions [..., T, A]``
            f32, ``rewards``/``continues [..., T]`` f32, ``is_first``/``terminals``
            ``[..., T]`` bool. Row 0 of every window is not forced to be first.
        """
        slots = rows % self.capacity
        terminals = self._terminals[slots]
        return {
            "obs": self._obs[slots],
            "actions": self._actions[slots],
            "rewards": self._rewards[slots],
            "continues": (~terminals).astype(np.float32),
            "is_first": self._is_first[slots],
            "terminals": terminals,
        }

    def sample(self, batch_size: int, seq_len: int, device=None) -> dict:
        """Sample ``batch_size`` windows of ``seq_len`` consecutive transitions.

        Args:
            batch_size: ``B``.
            seq_len: ``T``. Windows may span episodes; ``is_first`` marks starts.
            device: ``None`` gives NumPy arrays; ``"cpu"``, ``"cuda"``, ... give
                JAX arrays on that device.

        Returns:
            ``obs [B, T, *obs_shape]``, ``actions [B, T, A]`` f32, ``rewards
            [B, T]`` f32, ``continues [B, T]`` f32 (``1 - terminal``),
            ``is_first [B, T]`` bool, ``terminals [B, T]`` bool.

        Raises:
            ConfigError: ``batch_size``/``seq_len`` not integers >= 1 (floats and
                bools are refused), or a batch larger than :meth:`sample_limit`
                bytes (see ``max_sample_bytes``).
            DataError: fewer than ``seq_len`` transitions held.
            DeviceError: ``device`` is not present.
        """
        batch = self.gather(self.window_rows(self._rng, batch_size, seq_len))
        if device is None:
            return batch
        import jax

        from worldloom.core.devices import resolve_device

        return jax.device_put(batch, resolve_device(device))

    def sample_episodes(self, batch_size: int, seq_len: int, include_final: bool = True) -> dict[str, np.ndarray]:
        """Windows inside episodes, TD-MPC2's sampling: an episode uniformly, then a start uniformly in it.

        Args:
            batch_size: ``B``.
            seq_len: ``T`` observations per window; a window never crosses an episode boundary.
            include_final: An episode stored with ``final_obs`` has ``T_ep + 1``
                observations, so a window may end on that final observation: its
                row holds the observation, a zero action and reward, and
                ``is_final`` True (the transition before it keeps its terminal flag).

        Returns:
            The fields of :meth:`sample` plus ``is_final [B, T]`` bool (NumPy).

        Raises:
            DataError: no episode holds ``seq_len`` observations.
        """
        batch_size, seq_len = integer("batch_size", batch_size), integer("seq_len", seq_len)
        self.check_sample_size(batch_size, seq_len)
        bounds = self.episode_bounds()
        extra = np.array([include_final and int(start) in self._final_obs for start in bounds[:, 0]], np.int64)
        observations = bounds[:, 1] - bounds[:, 0] + extra
        usable = np.flatnonzero(observations >= seq_len)
        if usable.size == 0:
            raise DataError(f"Cannot sample windows of seq_len={seq_len} inside episodes: the longest of the "
                            f"{self.num_episodes} held episodes has {int(observations.max(initial=0))} "
                            f"observations; add longer episodes or lower seq_len.")
        episode = usable[self._rng.integers(0, usable.size, batch_size)]
        offset = np.floor(self._rng.random(batch_size) * (observations[episode] - seq_len + 1)).astype(np.int64)
        rows = (bounds[episode, 0] + offset)[:, None] + np.arange(seq_len)
        is_final = rows >= bounds[episode, 1][:, None]
        batch = self.gather(np.where(is_final, rows - 1, rows))
        for key in ("actions", "rewards"):
            batch[key][is_final] = 0.0
        batch["is_first"] = batch["is_first"] & ~is_final
        batch["terminals"] = batch["terminals"] & ~is_final
        batch["continues"][is_final] = 1.0
        for b in np.flatnonzero(is_final.any(1)):
            batch["obs"][b, -1] = self._final_obs[int(bounds[episode[b], 0])]
        batch["is_final"] = is_final
        return batch

    # ------------------------------------------------------------ files

    def state_dict(self) -> dict[str, np.ndarray]:
        """Held rows oldest first plus episode lengths and settings (what :meth:`save` writes)."""
        rows = np.arange(self._oldest, self._written)
        slots = rows % self.capacity
        obs = self._obs[slots] if self._obs is not None else np.zeros((0, *self.obs_shape), np.float32)
        starts = [s for s, _ in self._episodes if s in self._final_obs]
        final_obs = (np.stack([self._final_obs[s] for s in starts]) if starts
                     else np.zeros((0, *self.obs_shape), obs.dtype))
        return {
            "obs": obs, "actions": self._actions[slots], "rewards": self._rewards[slots],
            "dones": self._dones[slots], "terminals": self._terminals[slots],
            "episode_lengths": np.array([n for _, n in self._episodes], np.int64),
            "final_obs": final_obs,
            "final_obs_episode": np.array([i for i, (s, _) in enumerate(self._episodes) if s in self._final_obs],
                                          np.int64),
            "capacity": np.array(self.capacity, np.int64),
            "obs_shape": np.array(self.obs_shape, np.int64),
            "action_dim": np.array(self.action_dim, np.int64),
            "seed": np.array(self.seed, np.int64),
            "rng": np.array(json.dumps(self._rng.bit_generator.state)),
        }

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the buffer to ``path`` (``.npz``) atomically (temp name + ``os.replace``).

        Keys: ``obs, actions, rewards, dones`` ``[N, ...]`` (held rows, oldest
        first), ``terminals``, ``episode_lengths``, ``final_obs``,
        ``final_obs_episode``, ``capacity``, ``obs_shape``, ``action_dim``, ``seed``
        and ``rng`` (the sampling generator's state, JSON).

        Args:
            path: The file: a new name, or a file worldloom wrote (an earlier save, also one without a
                signature), which is replaced.
            overwrite: Also replace a file that is not worldloom's (refused otherwise).

        Raises:
            ConfigError: ``path`` is not a file name. CheckpointError: ``path`` is a
                directory or a file worldloom did not write (and ``overwrite`` is False),
                or the write failed; nothing is changed at ``path`` then.
        """
        write_archive(path, self.state_dict(), format=_buffer_io.FORMAT, version=_buffer_io.VERSION,
                      what="replay buffer", overwrite=flag("overwrite", overwrite), earlier=_buffer_io.REQUIRED)

    @classmethod
    def load(cls, path: str | os.PathLike, *, capacity: int | None = None, obs_shape=None,
             action_dim: int | None = None, seed: int | None = None) -> ReplayBuffer:
        """Read a buffer written by :meth:`save` (or any npz with ``obs, actions, rewards, dones``).

        Args:
            path: The ``.npz`` file.
            capacity: Capacity of the new buffer (default: the saved one, at
                least the number of saved transitions).
            obs_shape, action_dim: If given, the file must match them.
            seed: Seed of the new buffer's generator (default: the saved generator as it
                was, so the loaded buffer samples what the saved one would have sampled next).

        Raises:
            ConfigError: ``path`` not a file name; ``capacity``/``seed`` not
                integers; a ``capacity`` below the saved transitions. ShapeError: a bad ``obs_shape`` or ``action_dim``.
            CheckpointError: a missing, unreadable, truncated or corrupt file,
                or one that is not a buffer (e.g. a ``.npy`` renamed ``.npz``).
            DataError: arrays of inconsistent lengths, dones other than 0/1 or
                that disagree with ``episode_lengths``, values the buffer
                cannot store, or shapes other than requested.
        """
        capacity = None if capacity is None else integer("capacity", capacity)
        obs_shape = None if obs_shape is None else shape_tuple("obs_shape", obs_shape)
        action_dim = None if action_dim is None else integer("action_dim", action_dim, error=ShapeError)
        seed = None if seed is None else integer("seed", seed, minimum=0)
        path, data = _buffer_io.read_npz(path, obs_shape=obs_shape, action_dim=action_dim)
        saved_capacity = int(data.get("capacity", len(data["rewards"])))
        held = len(data["rewards"])
        if capacity is not None and capacity < held:
            episodes = len(_buffer_io.episode_ranges(data))
            raise ConfigError(f"capacity={capacity}: expected at least the {held} transitions ({episodes} episodes) "
                              f"{path} holds, got fewer; loading would drop the oldest episodes. Pass "
                              f"capacity >= {held} (or none: the saved capacity, {saved_capacity}).")
        capacity = max(saved_capacity, held, 1) if capacity is None else capacity
        given_seed, seed = seed, int(data.get("seed", 0)) if seed is None else seed
        buffer = cls(capacity, data["obs"].shape[1:], data["actions"].shape[1], obs_dtype=data["obs"].dtype,
                     seed=seed)
        final = dict(zip(data["final_obs_episode"].tolist(), data["final_obs"]))
        for index, (start, end) in enumerate(_buffer_io.episode_ranges(data)):
            try:
                buffer.add_episode(data["obs"][start:end], data["actions"][start:end], data["rewards"][start:end],
                                   dones=data["dones"][start:end], terminated=data["terminals"][start:end],
                                   final_obs=final.get(index))
            except (DataError, ShapeError) as err:
                raise DataError(f"{path}: episode {index} (rows {start} to {end - 1}): {err}") from err
        if given_seed is None and "rng" in data:
            buffer._restore_generator(path, data["rng"])
        return buffer

    def _restore_generator(self, path, saved: np.ndarray) -> None:
        try:
            state = json.loads(str(saved))
            if state.get("bit_generator") != type(self._rng.bit_generator).__name__:
                raise ValueError(f"a {state.get('bit_generator')!r} generator")
            self._rng.bit_generator.state = state
        except (ValueError, TypeError, AttributeError, KeyError, OverflowError) as err:  # Overflow: out of range
            raise CheckpointError(f"{path}: rng: expected the state of the buffer's "
                                  f"{type(self._rng.bit_generator).__name__} generator, got an invalid one "
                                  f"({type(err).__name__}: {err}).") from err
