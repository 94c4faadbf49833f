"""What the trainer samples: the held-out split, per-step windows and the background prefetcher."""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator

import jax
import numpy as np

from worldloom.training._buffer import ReplayBuffer
from worldloom.training.parallel import Placement


def split_segments(buffer: ReplayBuffer, eval_fraction: float, seq_len: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Hold out the newest transitions for evaluation: whole episodes where they fit the share.

    ``want = max(eval_fraction * num_transitions, seq_len)`` transitions are
    held out: the smallest run of newest whole episodes that holds them, or,
    where those episodes would hold more than twice ``want`` (a buffer of a
    few long episodes, or one), the newest ``want`` rows, cut inside an
    episode. The rest trains. Windows never cross from one block into the other.

    Returns:
        ``(train_segments [1, 2], eval_segments [1, 2] | None)``, absolute rows;
        ``None`` when ``eval_fraction`` is 0 or the buffer is too small to
        leave ``seq_len`` transitions on both sides.
    """
    whole = buffer.segments()
    bounds = buffer.episode_bounds()
    if eval_fraction <= 0 or not len(bounds):
        return whole, None
    oldest, written = int(whole[0, 0]), int(whole[0, 1])
    want = max(math.ceil(eval_fraction * buffer.num_transitions), seq_len)
    lengths_newest_first = (bounds[:, 1] - bounds[:, 0])[::-1]
    held = int(np.searchsorted(np.cumsum(lengths_newest_first), want)) + 1
    cut = int(bounds[len(bounds) - held, 0]) if held < len(bounds) else oldest
    if written - cut > 2 * want:
        cut = written - want
    if cut - oldest < seq_len:
        return whole, None
    return np.array([[oldest, cut]], np.int64), np.array([[cut, written]], np.int64)


class WindowSampler:
    """Samples the batches of given update steps, each from its own seeded generator.

    The batch of step ``s`` depends only on ``(seed, s)`` and the buffer, so a
    run resumed at any step sees exactly the batches an uninterrupted run would.

    Args:
        buffer: The data.
        batch_size, seq_len: ``B`` and ``T``.
        seed: Base seed of the per-step generators.
        segments: ``[S, 2]`` absolute row runs to draw windows from.
        layout: ``{key: dtype}`` of the batch the model takes (keys of
            :meth:`ReplayBuffer.gather`).
        slots: ``K``, the number of batches per chunk.
        device: Where chunks are placed: a device, or a :class:`Placement`
            (a data-parallel mesh: each host gathers its devices' share).
        shard: ``None``: ``buffer`` is the whole data set; every process draws
            the same global windows and gathers its share. ``(index, count)``:
            ``buffer`` holds only this process's episodes; it draws its
            ``B / count`` windows of each batch from them, with a generator of
            its own (``[seed, stream, step, index]``).
    """

    def __init__(self, buffer: ReplayBuffer, batch_size: int, seq_len: int, seed: int, segments: np.ndarray,
                 layout: dict[str, np.dtype], slots: int, device, shard: tuple[int, int] | None = None):
        self.buffer, self.batch_size, self.seq_len = buffer, batch_size, seq_len
        self.seed, self.segments, self.layout = int(seed), segments, layout
        self.slots, self.device, self.shard = int(slots), device, shard
        self.placement = device if isinstance(device, Placement) else Placement(device)

    def rows(self, steps: Iterable[int], stream: int = 0) -> np.ndarray:
        """``[len(steps), B, T]`` absolute rows of the windows of ``steps`` (``B / count`` of a shard)."""
        where, size = [], self.batch_size
        if self.shard is not None:
            where, size = [int(self.shard[0])], self.batch_size // int(self.shard[1])
        return np.stack([
            self.buffer.window_rows(np.random.default_rng([self.seed, stream, int(step), *where]), size,
                                    self.seq_len, self.segments)
            for step in steps
        ])

    def _place(self, rows: np.ndarray) -> dict[str, jax.Array]:
        if self.shard is None:
            return self.placement.chunk(rows, self.arrays)
        return self.placement.chunk_local(self.arrays(rows), self.batch_size)

    def arrays(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        batch = self.buffer.gather(rows)
        return {key: batch[key].astype(dtype, copy=False) for key, dtype in self.layout.items()}

    def chunk(self, start: int, count: int) -> dict[str, jax.Array]:
        """Batches of steps ``start .. start+count-1`` as ``[K, B, T, ...]`` on the device.

        Slots past ``count`` repeat the last batch; the program skips them.
        """
        steps = list(range(start, start + count))
        steps += [steps[-1]] * (self.slots - count)
        return self._place(self.rows(steps))

    def fixed_chunks(self, count: int, stream: int) -> list[dict[str, jax.Array]]:
        """``count`` fixed batches (e.g. held-out ones), each alone in slot 0 of a chunk."""
        out = []
        for index in range(count):
            rows = self.rows([index], stream)
            out.append(self._place(np.repeat(rows, self.slots, 0)))
        return out


def chunk_plan(start: int, total: int, slots: int, intervals: Iterable[int]) -> Iterator[tuple[int, int]]:
    """``(first step, count)`` of each dispatch from ``start`` to ``total``.

    A dispatch runs at most ``slots`` updates and ends at every multiple of
    each interval (so checkpoints and evaluations see the state of that step).
    """
    intervals = [int(i) for i in intervals if i and i > 0]
    step = int(start)
    while step < total:
        end = min([step + slots, total] + [(step // i + 1) * i for i in intervals])
        yield step, end - step
        step = end


class Prefetcher:
    """Runs ``make(item)`` for each item of ``plan`` on a background thread, ``depth`` ahead.

    Iterating yields ``(item, made)`` in plan order; an exception on the
    thread is raised in the consumer. :meth:`close` stops the thread.
    """

    _DONE = object()

    def __init__(self, plan: Iterable, make: Callable, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(iter(plan), make), daemon=True,
                                        name="worldloom-prefetch")
        self._thread.start()

    def _put(self, value) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, plan: Iterator, make: Callable) -> None:
        try:
            for item in plan:
                if self._stop.is_set() or not self._put((item, make(*item))):
                    return
            self._put(self._DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            self._put(err)

    def __iter__(self):
        while True:
            value = self._queue.get()
            if value is self._DONE:
                return
            if isinstance(value, BaseException):
                raise value
            yield value

    def close(self) -> None:
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10)
