"""Reading and writing replay buffers as ``.npz`` files, atomically and checked.

A save writes ``.<name>.tmp-<8 hex digits>`` beside the target, holding an
exclusive ``flock`` on it while it writes, then ``os.replace``-s it into
place. A save killed half-way leaves that temp file behind; the next save or
load in the same directory removes such leftovers: regular files with exactly
that name pattern whose content is (the start of) a zip archive, or empty
for an ``.npz`` target, and that no live writer holds locked.
"""

from __future__ import annotations

import os
import re
import struct
import uuid
import zipfile
import zlib
from pathlib import Path

import numpy as np

from worldloom.core.arrays import check_finite
from worldloom.core.errors import CheckpointError, ConfigError, DataError

try:
    import fcntl
except ImportError:  # Windows: a file another process holds open cannot be removed there
    fcntl = None

REQUIRED = ("obs", "actions", "rewards", "dones")
TEMP_NAME = re.compile(r"\.(?P<target>.+)\.tmp-[0-9a-f]{8}")
ZIP_MAGIC = b"PK\x03\x04"
NPY_MAGIC = b"\x93NUMPY"
# Everything reading a damaged archive or array header may raise.
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, struct.error, ValueError, OSError, EOFError,
                KeyError, NotImplementedError, RuntimeError, SyntaxError, OverflowError, MemoryError)


def as_path(path) -> Path:
    """``path`` as a ``Path``; ConfigError for anything but ``str``/``os.PathLike``."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or not path or "\x00" in path:
        raise ConfigError(f"path: expected a non-empty str or os.PathLike file name, got {path!r}.")
    return Path(path)


# ------------------------------------------------------------ leftovers of killed saves


def _is_leftover(entry: os.DirEntry) -> bool:
    match = TEMP_NAME.fullmatch(entry.name)
    try:
        if match is None or not entry.is_file(follow_symlinks=False):
            return False
        with open(entry.path, "rb") as handle:
            head = handle.read(len(ZIP_MAGIC))
    except OSError:
        return False
    return head == ZIP_MAGIC or (not head and match["target"].endswith(".npz"))


def _remove_if_unlocked(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    except OSError:
        return False
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while a live writer holds it
            if not os.path.samestat(os.fstat(fd), os.stat(path)):
                return False
        else:
            os.close(fd)
            fd = -1
        os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        if fd >= 0:
            os.close(fd)


def remove_leftovers(directory: str | os.PathLike) -> list[Path]:
    """Remove the temp files that killed saves left in ``directory``; returns the removed paths."""
    try:
        with os.scandir(directory) as entries:
            candidates = [entry.path for entry in entries if _is_leftover(entry)]
    except OSError:
        return []
    return [Path(name) for name in candidates if _remove_if_unlocked(name)]


# ------------------------------------------------------------ writing


def _create_locked_temp(path: Path) -> tuple[Path, int]:
    """A new temp file beside ``path``, open for writing and locked against :func:`remove_leftovers`."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(8):
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
        fd = os.open(tmp, flags, 0o644)
        if fcntl is None:
            return tmp, fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # no locks on this file system: cleaners cannot lock either and leave temp files alone
            return tmp, fd
        try:  # a cleaner may have removed the file between open and lock
            if os.path.samestat(os.fstat(fd), os.stat(tmp)):
                return tmp, fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise CheckpointError(f"Cannot create a temp file beside {str(path)!r}: expected it to stay in place, "
                          "got it removed repeatedly.")


def _fsync_directory(directory: Path) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` under a locked temp name, then ``os.replace`` it into place.

    Leftover temp files of killed saves in the directory are removed first.

    Raises:
        ConfigError: ``path`` is not a file name. CheckpointError: it cannot be written.
    """
    path = as_path(path)
    if path.is_dir():
        raise CheckpointError(f"{str(path)!r} is a directory: expected a file name such as 'buffer.npz'.")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(path.parent)
        tmp, fd = _create_locked_temp(path)
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
            if fcntl is not None:  # replace while still holding the lock
                os.replace(tmp, path)
        if fcntl is None:
            os.replace(tmp, path)
        _fsync_directory(path.parent)
    except CheckpointError:
        raise
    except OSError as err:
        raise CheckpointError(f"Cannot write the replay buffer to {str(path)!r}: expected a writable file "
                              f"location, got {err}.") from err
    finally:
        if tmp is not None:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass


# ------------------------------------------------------------ reading


def resolve(path) -> Path:
    """The file :meth:`ReplayBuffer.load` reads: ``path``, or ``path + ".npz"`` when only that exists."""
    path = as_path(path)
    try:
        if not path.is_file() and path.suffix != ".npz" and path.with_name(path.name + ".npz").is_file():
            path = path.with_name(path.name + ".npz")
        path.stat()
    except FileNotFoundError:
        pass
    except OSError as err:
        raise CheckpointError(f"Cannot read {str(path)!r}: expected a replay buffer file, got {err}.") from err
    return path


def _found(head: bytes) -> str:
    if not head:
        return "an empty file"
    if head.startswith(NPY_MAGIC):
        return "a single .npy array (np.save), not an archive of arrays"
    return f"a file starting with {head[:8]!r}"


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    """One ``.npy`` member, after checking that its header matches its size (no huge allocation)."""
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
        header = member.tell()
    if dtype.hasobject:
        raise CheckpointError(f"{str(path)!r}: {info.filename}: expected an array of numbers, got dtype {dtype} "
                              "(Python objects are not loaded).")
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if expected != info.file_size - header:
        raise CheckpointError(f"{str(path)!r}: {info.filename}: expected {expected} bytes of array data for shape "
                              f"{list(shape)} {dtype}, found {info.file_size - header}; the file is truncated or "
                              "corrupt.")
    with archive.open(info) as member:
        return np.lib.format.read_array(member, allow_pickle=False)


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(ZIP_MAGIC) * 2)
        if not head.startswith(ZIP_MAGIC):
            raise CheckpointError(f"{str(path)!r}: expected an .npz archive written by ReplayBuffer.save(), "
                                  f"found {_found(head)}.")
        data = {}
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    raise CheckpointError(f"{str(path)!r}: expected only .npy arrays in the archive, found "
                                          f"{info.filename!r}; it is not a replay buffer file.")
                data[info.filename[: -len(".npy")]] = _read_member(archive, info, path)
    except CheckpointError:
        raise
    except _READ_ERRORS as err:
        raise CheckpointError(f"{str(path)!r} is not a readable .npz replay buffer: expected a complete archive "
                              f"written by ReplayBuffer.save(), got {type(err).__name__}: {err}; the file is "
                              "truncated or corrupt.") from err
    return data


def read_npz(path, *, obs_shape=None, action_dim: int | None = None) -> tuple[Path, dict[str, np.ndarray]]:
    """Read and check a buffer file.

    Returns:
        The path read, and a dict with at least ``obs [N, *obs_shape]``,
        ``actions [N, A]``, ``rewards [N]``, ``dones [N]`` bool (every row
        that ends an episode), ``terminals [N]`` bool, ``final_obs [E,
        *obs_shape]`` and ``final_obs_episode [E]``.

    Raises:
        ConfigError: ``path`` is not a file name.
        CheckpointError: missing, unreadable, truncated or corrupt file, missing keys.
        DataError: inconsistent lengths, non-finite values, flags other than
            0/1, episode lengths that disagree with the dones, unexpected shapes.
    """
    path = resolve(path)
    if not path.is_file():
        raise CheckpointError(f"No replay buffer file at {str(path)!r}: expected an .npz written by "
                              "ReplayBuffer.save().")
    remove_leftovers(path.parent)
    data = _read_arrays(path)
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise CheckpointError(f"{str(path)!r} lacks {missing}; a replay buffer file holds {list(REQUIRED)} "
                              f"(found {sorted(data)}).")
    return path, _check(path, data, obs_shape, action_dim)


def _scalar(path: Path, data: dict, key: str, minimum: int) -> None:
    value = data.get(key)
    if value is not None and (value.shape != () or value.dtype.kind not in "iu" or int(value) < minimum):
        raise DataError(f"{path}: {key}: expected one integer >= {minimum}, got {value!r}.")


def _flags(path: Path, data: dict, key: str, count: int) -> np.ndarray:
    flags = data[key]
    if flags.shape != (count,):
        raise DataError(f"{path}: {key}: expected shape [{count}], got {list(flags.shape)}.")
    if flags.dtype == bool:
        return flags
    other = (flags != 0) & (flags != 1) if flags.dtype.kind in "biuf" else np.ones(count, bool)
    if other.any():
        row = int(np.flatnonzero(other)[0])
        raise DataError(f"{path}: {key}: expected 0/1 flags, got dtype {flags.dtype} with {int(other.sum())} "
                        f"other values (e.g. {flags[row].item()!r} at row {row}).")
    return flags.astype(bool)


def _check_episodes(path: Path, data: dict, count: int) -> None:
    """Episode lengths: integers >= 1 summing to ``count``; a done only at the last row of an episode."""
    lengths = data["episode_lengths"]
    expected = f"{path}: episode_lengths: expected integers >= 1 (one per episode) summing to {count}"
    if lengths.ndim != 1 or lengths.dtype.kind not in "iu":
        raise DataError(f"{expected}, got {lengths.dtype} of shape {list(lengths.shape)}.")
    lengths = lengths.astype(np.int64)
    if np.any(lengths < 1) or int(lengths.sum()) != count:
        raise DataError(f"{expected}, got {len(lengths)} lengths from {lengths.min(initial=0)} to "
                        f"{lengths.max(initial=0)} summing to {int(lengths.sum())}; the file is inconsistent.")
    inner = np.ones(count, bool)
    inner[np.cumsum(lengths) - 1] = False
    stray = np.flatnonzero(data["dones"] & inner)
    if len(stray):
        episode = int(np.searchsorted(np.cumsum(lengths), stray[0], side="right"))
        raise DataError(f"{path}: dones: expected episodes to end only at the last row of each of the "
                        f"{len(lengths)} episode_lengths, got {len(stray)} dones inside an episode (first at "
                        f"row {int(stray[0])}, inside episode {episode}); the file is inconsistent.")
    data["episode_lengths"] = lengths


def _check(path: Path, data: dict, obs_shape, action_dim) -> dict:
    obs, actions, rewards = data["obs"], data["actions"], data["rewards"]
    for key in ("obs", "actions", "rewards"):
        if data[key].dtype.kind not in "biuf":
            raise DataError(f"{path}: {key}: expected numbers, got dtype {data[key].dtype}.")
    count = len(rewards) if rewards.ndim else 0
    if rewards.ndim != 1:
        raise DataError(f"{path}: rewards: expected shape [N], got {list(rewards.shape)}.")
    if obs.ndim < 2 or len(obs) != count or 0 in obs.shape[1:]:
        raise DataError(f"{path}: obs: expected shape [{count}, *obs_shape] with positive sizes, "
                        f"got {list(obs.shape)}.")
    if actions.ndim != 2 or len(actions) != count or actions.shape[1] < 1:
        raise DataError(f"{path}: actions: expected shape [{count}, action_dim], got {list(actions.shape)}.")
    _scalar(path, data, "capacity", 1)
    _scalar(path, data, "seed", 0)
    _scalar(path, data, "action_dim", 1)
    if "action_dim" in data and int(data["action_dim"]) != actions.shape[1]:
        raise DataError(f"{path}: actions have {actions.shape[1]} columns but the file records action_dim "
                        f"{int(data['action_dim'])}; the file is inconsistent.")
    recorded = data.get("obs_shape")
    if recorded is not None and (recorded.ndim != 1 or recorded.dtype.kind not in "iu"
                                 or tuple(int(d) for d in recorded) != obs.shape[1:]):
        raise DataError(f"{path}: obs has shape {list(obs.shape[1:])} per step but the file records "
                        f"obs_shape {recorded.tolist()}; the file is inconsistent.")
    if obs_shape is not None and tuple(np.atleast_1d(obs_shape).tolist()) != obs.shape[1:]:
        raise DataError(f"{path}: expected observations of shape {np.atleast_1d(obs_shape).tolist()}, "
                        f"the file holds {list(obs.shape[1:])}.")
    if action_dim is not None and action_dim != actions.shape[1]:
        raise DataError(f"{path}: expected action_dim {action_dim!r}, the file holds {actions.shape[1]}.")
    for key in ("obs", "actions", "rewards"):
        check_finite(f"{path}: {key}", data[key])
    dones = _flags(path, data, "dones", count)
    terminals = _flags(path, data, "terminals", count) if "terminals" in data else dones.copy()
    data["dones"], data["terminals"] = dones | terminals, terminals  # a terminal also ends its episode
    if "episode_lengths" in data:
        _check_episodes(path, data, count)
    episodes = len(episode_ranges(data))
    data.setdefault("final_obs", np.zeros((0, *obs.shape[1:]), obs.dtype))
    data.setdefault("final_obs_episode", np.zeros((0,), np.int64))
    final, owners = data["final_obs"], data["final_obs_episode"]
    if (owners.ndim != 1 or owners.dtype.kind not in "iu" or len(np.unique(owners)) != len(owners)
            or np.any(owners < 0) or np.any(owners >= episodes)):
        raise DataError(f"{path}: final_obs_episode: expected distinct episode indices in [0, {episodes}), "
                        f"got {owners.tolist()}.")
    if final.dtype.kind not in "biuf" or final.shape != (len(owners), *obs.shape[1:]):
        raise DataError(f"{path}: final_obs: expected numbers of shape [{len(owners)}, "
                        f"{', '.join(map(str, obs.shape[1:]))}], got {final.dtype} {list(final.shape)}.")
    check_finite(f"{path}: final_obs", final)
    return data


def episode_ranges(data: dict) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` row ranges of the episodes in a checked file.

    Uses ``episode_lengths`` when present, else cuts after every done (a tail
    without a final done is one more episode).
    """
    count = len(data["rewards"])
    if "episode_lengths" in data:
        ends = np.cumsum(data["episode_lengths"])
    else:
        ends = np.flatnonzero(data["dones"]) + 1
        if count and (len(ends) == 0 or ends[-1] != count):
            ends = np.append(ends, count)
    starts = np.concatenate([[0], ends[:-1]])
    return [(int(s), int(e)) for s, e in zip(starts, ends)]
