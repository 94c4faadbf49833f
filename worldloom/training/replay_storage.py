"""Where replay rows live: in RAM, or in memory-mapped ``.npy`` files on disk.

``replay_storage="auto"`` (:func:`choose_storage`) keeps a replay in RAM when
its full size is at most half of the host's available memory (psutil, else
``/proc/meminfo``), and puts it on disk otherwise. A disk replay
(:class:`DiskArrays`) is a directory of ``.npy`` files opened with
``numpy.memmap``: the operating system pages rows in and out, so a replay
larger than RAM costs only disk. The files are created sparse (a file of
100 GiB takes no disk until rows are written), and the full size is checked
against the free disk at start (:func:`check_free_disk`), so a run does not
fail half-way with a full disk.

Layout of a replay directory::

    identity.json       {"format", "version", "id": a random hex id, "chunk_rows", "arrays": {name: {shape, dtype}}}
    <name>.npy          one array, rows along axis 1: [streams, rows, ...]
    head.npy            [streams] int64: rows ever written per stream (updated after each row)
    marks.npy           [arrays, streams, chunks] int64: the save epoch after which each chunk last changed

Checksums. A checkpoint does not copy the rows; it records the directory's
``id``, the counters, and a CRC-32 per chunk of ``chunk_rows`` rows of every
array (over the rows held in that chunk). A chunk is checksummed again only
when it changed since the last save (``marks.npy`` says which), so a save
costs the rows written since the last one, not the whole replay. On load every
chunk is read and checked against the checksum of the rows it held at the
save; a mismatch is a CheckpointError naming the file, stream and rows. Two
kinds of chunk are left unchecked, and counted: a chunk holding rows that a
run killed after the save overwrote in the ring (the counters in ``head.npy``
say which), and a chunk of an array the run rewrites in place (written-back
latents) whose mark is newer than the save. Rows appended after the save are
kept or dropped as the replay's ``load`` says.

``head.npy`` and ``marks.npy`` are the replay's live state, rewritten with
every row; no checkpoint can vouch for them. They are checked for what can be
checked: a head below the checkpoint's counts is a CheckpointError, and a mark
can only excuse a chunk of written-back latents from its check, never rows.
``identity.json`` must name the directory id and layout the checkpoint
recorded.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
import weakref
import zlib
from pathlib import Path

import numpy as np

from worldloom.core.errors import CheckpointError, ConfigError

STORAGES = ("auto", "ram", "disk")
"""The values of ``replay_storage``."""
AUTO_MEMORY_FRACTION = 0.5
"""``"auto"`` keeps a replay in RAM when its size is at most this share of the available memory."""
CHUNK_ROWS = 1024
"""Rows per checksummed chunk of a disk replay (the reference's chunk size)."""
FORMAT = "worldloom-disk-replay"
VERSION = 1
IDENTITY = "identity.json"
HEAD, MARKS = "head", "marks"

__all__ = ["AUTO_MEMORY_FRACTION", "CHUNK_ROWS", "STORAGES", "DiskArrays", "allocated_bytes", "available_memory",
           "check_free_disk", "choose_storage", "size_text"]


def size_text(count: int) -> str:
    """``count`` bytes in TiB/GiB/MiB/KiB, e.g. ``"1.5 GiB"``."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def available_memory() -> int:
    """Bytes of memory available to new allocations now (psutil, else ``/proc/meminfo``'s MemAvailable)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    from worldloom.training._episode import memory_limit

    return memory_limit()


def choose_storage(setting: str, nbytes: int, available: int | None = None) -> tuple[str, str]:
    """``("ram" | "disk", why)`` for a replay of ``nbytes`` bytes under ``replay_storage=setting``.

    Raises:
        ConfigError: ``setting`` is not one of :data:`STORAGES`.
    """
    if setting not in STORAGES:
        raise ConfigError(f"replay_storage must be one of {', '.join(map(repr, STORAGES))}, got {setting!r}.")
    if setting != "auto":
        return setting, f"replay_storage={setting!r}"
    available = available_memory() if available is None else int(available)
    choice = "ram" if nbytes <= AUTO_MEMORY_FRACTION * available else "disk"
    relation = "<=" if choice == "ram" else ">"
    return choice, (f"auto: {size_text(nbytes)} {relation} {AUTO_MEMORY_FRACTION:g} x {size_text(available)} "
                    "of available memory")


def allocated_bytes(directory: Path) -> int:
    """Disk blocks the files in ``directory`` take now (0 when it does not exist)."""
    total = 0
    if Path(directory).is_dir():
        for entry in os.scandir(directory):
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_blocks * 512
    return total


def check_free_disk(directory: Path, nbytes: int) -> None:
    """Refuse a disk replay of ``nbytes`` that the free disk under ``directory`` cannot hold once full.

    Blocks the replay's files already take there (a resumed run) count as its own.

    Raises:
        ConfigError: less free disk than the replay still needs.
    """
    directory = Path(directory)
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    need = max(int(nbytes) - allocated_bytes(directory), 0)
    if need > free:
        raise ConfigError(f"A disk replay at {str(directory)!r} needs {size_text(need)} more once full; expected "
                          f"at least that much free disk, got {size_text(free)} free. Lower buffer_capacity, "
                          "or put out_dir on a larger disk.")


def _close_all(descriptors: dict[str, int]) -> None:
    for fd in descriptors.values():
        os.close(fd)
    descriptors.clear()


class DiskArrays:
    """Arrays ``[streams, rows, ...]`` in memory-mapped files under ``directory``.

    Args:
        directory: The replay directory (created when missing).
        streams, rows: The leading axes every array shares.
        resume: Reopen the arrays a run wrote there before (keeping their rows);
            otherwise a replay worldloom wrote there is replaced by empty arrays.

    Raises:
        ConfigError: ``directory`` holds files that are not a worldloom replay
            (they are never deleted), or another layout on resume.
        CheckpointError: the files cannot be created or opened.
    """

    def __init__(self, directory, streams: int, rows: int, *, resume: bool = False,
                 chunk_rows: int = CHUNK_ROWS):
        self.directory = Path(directory)
        self.streams, self.rows, self.chunk_rows = int(streams), int(rows), int(chunk_rows)
        self.chunks = max(math.ceil(self.rows / self.chunk_rows), 1)
        self.arrays: dict[str, np.memmap] = {}
        self.epoch = 1  # writes now mark their chunks with this; a save covers marks <= the epoch it records
        self.checked_epoch = 0  # chunks marked later than this need a fresh checksum
        self.crcs: dict[str, np.ndarray] = {}
        self._checked_held: dict[str, np.ndarray] = {}  # the held rows each array's checksums cover
        self._indices: dict[str, int] = {}
        self._read_fds: dict[str, int] = {}  # read-only descriptors for read_windows
        self.preads = hasattr(os, "preadv")  # read sampled windows with os.preadv, not through the map
        weakref.finalize(self, _close_all, self._read_fds)
        from worldloom.core.files import remove_leftovers

        remove_leftovers(self.directory)  # files of a creation that was killed (their process is gone)
        identity = self._read_identity()
        if resume and identity is not None:
            self.id, self.layout = identity["id"], identity["arrays"]
            if (identity["streams"], identity["rows"], identity["chunk_rows"]) != (self.streams, self.rows,
                                                                                  self.chunk_rows):
                raise ConfigError(f"{self.directory}: expected a disk replay of {self.streams} streams x {self.rows} "
                                  f"rows, got {identity['streams']} x {identity['rows']}.")
            self.head = self._open(HEAD, (self.streams,), np.int64)
            for name, spec in self.layout.items():
                self.arrays[name] = self._open(name, tuple(spec["shape"]), np.dtype(spec["dtype"]))
            self.marks = self._open(MARKS, (len(self.layout), self.streams, self.chunks), np.int64)
            self.epoch = int(self.marks.max(initial=0)) + 1
        else:
            if identity is not None:
                self._remove(identity)
            self._refuse_foreign()
            self.id, self.layout = uuid.uuid4().hex, {}
            self.head = self._create(HEAD, (self.streams,), np.int64)
            self.marks = self._create(MARKS, (0, self.streams, self.chunks), np.int64)
            self._write_identity()

    # ------------------------------------------------------------ files

    def _read_identity(self) -> dict | None:
        path = self.directory / IDENTITY
        if not path.exists():
            return None
        try:
            identity = json.loads(path.read_text())
            if identity.get("format") != FORMAT:
                raise ValueError(f"format {identity.get('format')!r}")
            if identity.get("version") != VERSION:
                raise ValueError(f"version {identity.get('version')!r}, this worldloom reads {VERSION}")
            for key in ("id", "arrays", "streams", "rows", "chunk_rows"):
                identity[key]  # noqa: B018 - a KeyError names the missing key
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as err:
            raise CheckpointError(f"{path}: expected the identity of a worldloom disk replay, got {err}") from err
        return identity

    def _write_identity(self) -> None:
        from worldloom.core.files import atomic_write_text

        atomic_write_text(self.directory / IDENTITY, json.dumps({
            "format": FORMAT, "version": VERSION, "id": self.id, "streams": self.streams, "rows": self.rows,
            "chunk_rows": self.chunk_rows, "arrays": self.layout}, indent=1))

    def _refuse_foreign(self) -> None:
        if self.directory.is_dir():
            ours = {f"{name}.npy" for name in (HEAD, MARKS)}
            foreign = [entry.name for entry in os.scandir(self.directory)
                       if entry.name not in ours and not entry.name.startswith(".")]
            if foreign:
                raise ConfigError(f"{self.directory}: expected an empty directory or a worldloom disk replay for "
                                  f"the replay's files, got other files ({sorted(foreign)[:5]}); they are left "
                                  "alone. Choose another out_dir or move them.")

    def _remove(self, identity: dict) -> None:
        """Delete the files of the worldloom replay ``identity`` describes (nothing else)."""
        (self.directory / IDENTITY).unlink()
        for name in (*identity["arrays"], HEAD, MARKS):
            path = self.directory / f"{name}.npy"
            if path.is_file():
                path.unlink()

    def _create(self, name: str, shape: tuple, dtype) -> np.memmap:
        """A new zero-filled array file, sparse, created under a temporary name then renamed into place."""
        from worldloom.core.files import temp_path

        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{name}.npy"
        tmp = temp_path(path)
        try:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            os.replace(tmp, path)
        except OSError as err:
            if tmp.exists():
                tmp.unlink()
            raise CheckpointError(f"Cannot create the disk replay file {str(path)!r}: {err}") from err
        return array

    def _open(self, name: str, shape: tuple, dtype) -> np.memmap:
        path = self.directory / f"{name}.npy"
        try:
            array = np.lib.format.open_memmap(path, mode="r+")
        except (OSError, ValueError) as err:
            raise CheckpointError(f"Cannot open the disk replay file {str(path)!r}: {err}") from err
        if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
            raise CheckpointError(f"{path}: expected {np.dtype(dtype)} {list(shape)}, got {array.dtype} "
                                  f"{list(array.shape)}; the file does not belong to this replay.")
        return array

    def zeros(self, name: str, row_shape: tuple, dtype) -> np.memmap:
        """The array ``name`` ``[streams, rows, *row_shape]``: created (zeros) or, on resume, the one held."""
        shape, dtype = (self.streams, self.rows, *row_shape), np.dtype(dtype)
        if name in self.arrays:
            array = self.arrays[name]
            if array.shape != shape or array.dtype != dtype:
                raise ConfigError(f"{self.directory}: {name}: expected {dtype} {list(shape)}, the replay there "
                                  f"holds {array.dtype} {list(array.shape)}.")
            return array
        self.arrays[name] = array = self._create(name, shape, dtype)
        self.layout[name] = {"shape": list(shape), "dtype": dtype.str}
        marks = np.zeros((len(self.layout), self.streams, self.chunks), np.int64)
        marks[:-1] = self.marks
        self.marks = self._create(MARKS, marks.shape, np.int64)
        self.marks[:] = marks
        self._write_identity()
        return array

    @property
    def _index(self) -> dict[str, int]:
        """Array name -> its row in ``marks``."""
        if len(self._indices) != len(self.layout):
            self._indices = {name: index for index, name in enumerate(self.layout)}
        return self._indices

    @property
    def nbytes(self) -> int:
        return sum(array.nbytes for array in self.arrays.values())

    # ------------------------------------------------------------ writes

    def mark(self, name: str, streams, slots) -> None:
        """Record that rows ``(streams, slots)`` (broadcastable index arrays) of ``name`` changed."""
        self.marks[self._index[name], streams, np.asarray(slots) // self.chunk_rows] = self.epoch

    def flush(self) -> None:
        for array in (*self.arrays.values(), self.head, self.marks):
            array.flush()

    # ------------------------------------------------------------ reads

    def read_windows(self, name: str, streams: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
        """Windows of ``length`` rows of array ``name``: ``[B, length, ...]``, one read per window.

        Each window's rows are contiguous in the file (two stretches where it
        wraps around the ring's end), so each is read with one ``os.preadv``
        straight into the batch instead of being gathered through the memory
        map one page fault at a time: from files the page cache does not
        hold, that is the difference between the disk's throughput and a few
        percent of it. Reads go through the page cache, which rows written
        through the memory map are in, so they see every row written.

        Args:
            name: The array.
            streams, starts: ``[B]`` each window's stream and first slot.
            length: Rows per window.
        """
        array, path = self.arrays[name], self.directory / f"{name}.npy"
        fd = self._read_fds.get(name)
        if fd is None:
            fd = self._read_fds[name] = os.open(path, os.O_RDONLY)
        starts = np.asarray(starts) % self.rows
        out = np.empty((len(starts), length, *array.shape[2:]), array.dtype)
        row, stream_bytes = array.strides[1], array.strides[0]
        for index, (stream, start) in enumerate(zip(np.asarray(streams).tolist(), starts.tolist())):
            base = array.offset + stream * stream_bytes
            count = min(length, self.rows - start)
            parts = [(out[index, :count], base + start * row)]
            if count < length:  # wrapped: the rest from the ring's start
                parts.append((out[index, count:], base))
            for target, offset in parts:
                view = memoryview(target.reshape(-1).view(np.uint8))
                done = 0
                while done < view.nbytes:  # a read may return less than asked
                    got = os.preadv(fd, [view[done:]], offset + done)
                    if got <= 0:
                        raise CheckpointError(f"{path}: a read of rows of stream {stream} ended early (the file "
                                              "is shorter than its header says).")
                    done += got
        return out

    # ------------------------------------------------------------ checksums

    def _chunk_crc(self, array: np.memmap, stream: int, chunk: int, held: int) -> int:
        begin = chunk * self.chunk_rows
        end = min(begin + self.chunk_rows, held)
        if end <= begin:
            return 0
        return zlib.crc32(np.ascontiguousarray(array[stream, begin:end]).view(np.uint8).reshape(-1)) & 0xFFFFFFFF

    def checksums(self, held: np.ndarray) -> dict[str, np.ndarray]:
        """CRC-32 ``[streams, chunks]`` of every array over the ``held[s]`` first rows of each stream.

        Only chunks changed since the last call are read again; the epoch
        advances, so later writes are told apart from the rows checksummed here.
        """
        held = np.minimum(np.asarray(held, np.int64), self.rows)
        for index, (name, array) in enumerate(self.arrays.items()):
            table = self.crcs.setdefault(name, np.zeros((self.streams, self.chunks), np.uint32))
            stale = self.marks[index] > self.checked_epoch
            if name not in self._checked_held:
                stale[:] = True
            else:  # chunks whose held part grew or shrank
                stale |= self._held_changed(self._checked_held[name], held)
            for stream, chunk in zip(*np.nonzero(stale)):
                table[stream, chunk] = self._chunk_crc(array, stream, chunk, int(held[stream]))
            self._checked_held[name] = held.copy()
        self.checked_epoch = self.epoch
        self.epoch += 1
        return {name: table.copy() for name, table in self.crcs.items()}

    def _held_changed(self, before: np.ndarray, after: np.ndarray) -> np.ndarray:
        chunk_begin = np.arange(self.chunks) * self.chunk_rows
        chunk_end = chunk_begin + self.chunk_rows
        part = lambda held: np.clip(held[:, None], chunk_begin, chunk_end)  # noqa: E731
        return part(before) != part(after)

    def verify(self, crcs: dict[str, np.ndarray], held: np.ndarray, epoch: int, skip: np.ndarray,
               may_change: tuple = ()) -> int:
        """Check the chunks the checkpoint at ``epoch`` checksummed (``crcs`` over ``held`` rows per stream).

        Args:
            skip: ``[streams, rows]`` bool: rows overwritten since the checkpoint;
                a chunk holding one is not checked.
            may_change: Arrays a run rewrites after a checkpoint (written-back
                latents): a chunk of them marked after ``epoch`` is not checked.

        Returns:
            The number of chunks left unchecked.

        Raises:
            CheckpointError: a chunk's rows differ from the checkpoint's checksum.
        """
        held = np.minimum(np.asarray(held, np.int64), self.rows)
        unchecked = 0
        row_bytes = sum(array.nbytes // max(self.streams * self.rows, 1) for array in self.arrays.values())
        total = int(held.sum()) * row_bytes
        began = time.perf_counter()
        if total > 2**30:
            print(f"Checking {size_text(total)} of replay rows in {self.directory} against the checkpoint's "
                  "checksums ...", flush=True)
        for index, (name, array) in enumerate(self.arrays.items()):
            table = crcs.get(name)
            if table is None or table.shape != (self.streams, self.chunks):
                raise CheckpointError(f"{self.directory}: expected checksums [{self.streams}, {self.chunks}] of "
                                      f"{name}, got {None if table is None else list(table.shape)}.")
            for stream in range(self.streams):
                for chunk in range(math.ceil(int(held[stream]) / self.chunk_rows)):
                    begin = chunk * self.chunk_rows
                    end = min(begin + self.chunk_rows, int(held[stream]))
                    if skip[stream, begin:end].any() or (name in may_change
                                                         and self.marks[index, stream, chunk] > epoch):
                        unchecked += 1
                        continue
                    if self._chunk_crc(array, stream, chunk, int(held[stream])) != int(table[stream, chunk]):
                        raise CheckpointError(
                            f"{self.directory / (name + '.npy')}: rows {begin} to {end - 1} of stream {stream} "
                            f"differ from the checkpoint's checksum; the replay file is damaged.")
        if total > 2**30:
            print(f"Checked in {time.perf_counter() - began:.0f} s ({unchecked} chunks written after the checkpoint "
                  "left unchecked)", flush=True)
        self.crcs = {name: np.asarray(table, np.uint32).copy() for name, table in crcs.items()}
        self._checked_held = {name: held.copy() for name in self.arrays}
        self.checked_epoch = epoch
        self.epoch = max(self.epoch, epoch + 1)
        return unchecked
