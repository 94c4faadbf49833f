"""Files of arrays (``.npz``) written atomically and checked whole on load: worldloom's replay files.

A file is an ordinary ``.npz`` (a zip of ``.npy`` arrays that ``np.load``
reads) whose zip comment is its signature::

    worldloom <format> v<version> crc32 <8 hex digits>

the CRC-32 of every byte of the file before the comment. :func:`read_npz`
checks the signature's format and version and that CRC, so any changed byte,
the zip's own bookkeeping included, is a CheckpointError; then each array's
header against its size (no huge allocation for a damaged header) and the
zip's CRC of each member. A file without a comment (``np.savez``'s own, or an
earlier worldloom's) is read with the member checks alone when the caller
accepts such files.

A write goes to ``.<name>.tmp-<8 hex digits>`` beside the target, holding an
exclusive ``flock`` on it while it writes, then ``os.replace``-s it into
place. A write killed half-way leaves that temp file behind; the next write or
read in the same directory removes such leftovers: regular files with exactly
that name pattern whose content is (the start of) a zip archive, or empty for
an ``.npz`` target, and that no live writer holds locked. A write replaces
only a file worldloom wrote (a signed archive) unless told to overwrite: a
user's file of the same name is refused, not replaced.
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

from worldloom.core.errors import CheckpointError, ConfigError
from worldloom.core.persist import writing

try:
    import fcntl
except ImportError:  # Windows: a file another process holds open cannot be removed there
    fcntl = None

__all__ = ["as_path", "check_target", "is_worldloom_archive", "read_npz", "remove_temp_files", "write_npz"]

TEMP_NAME = re.compile(r"\.(?P<target>.+)\.tmp-[0-9a-f]{8}")
SIGNATURE = re.compile(rb"worldloom (?P<format>[a-z0-9-]+) v(?P<version>\d+) crc32 (?P<crc>[0-9a-f]{8})")
ZIP_MAGIC = b"PK\x03\x04"
NPY_MAGIC = b"\x93NUMPY"
_END_RECORD = b"PK\x05\x06"
_END_SIZE = 22
# Everything reading a damaged archive or array header may raise.
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, struct.error, ValueError, OSError, EOFError,
                KeyError, NotImplementedError, RuntimeError, SyntaxError, OverflowError, MemoryError)


def as_path(path, name: str = "path", expected: str = "a non-empty str or os.PathLike file name") -> Path:
    """``path`` as a ``Path``; ConfigError for anything but a non-empty ``str``/``os.PathLike`` (no NUL byte),
    saying ``f"{name}: expected {expected}, got ..."``."""
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str) or not path or "\x00" in path:
        raise ConfigError(f"{name}: expected {expected}, got {path!r} ({type(path).__name__}).")
    return Path(path)


# ------------------------------------------------------------ leftovers of killed writes


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


def remove_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Remove the temp files that killed writes left in ``directory``; returns the removed paths."""
    try:
        with os.scandir(directory) as entries:
            candidates = [entry.path for entry in entries if _is_leftover(entry)]
    except OSError:
        return []
    return [Path(name) for name in candidates if _remove_if_unlocked(name)]


# ------------------------------------------------------------ writing


def _create_locked_temp(path: Path) -> tuple[Path, int]:
    """A new temp file beside ``path``, open for reading and writing and locked against :func:`remove_temp_files`."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
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


def _crc32(handle, end: int) -> int:
    """CRC-32 of bytes ``[0, end)`` of an open file."""
    handle.seek(0)
    value, left = 0, end
    while left > 0:
        chunk = handle.read(min(left, 1 << 22))
        if not chunk:
            break
        value = zlib.crc32(chunk, value)
        left -= len(chunk)
    return value


def _sign(handle, path: Path, format: str, version: int) -> None:  # noqa: A002 - the signature's word
    """Append the signature as the zip comment of the archive just written to ``handle`` (for ``path``)."""
    end = handle.seek(0, os.SEEK_END)
    handle.seek(end - _END_SIZE)
    record = handle.read(_END_SIZE)
    if not record.startswith(_END_RECORD) or record[-2:] != b"\0\0":
        raise CheckpointError(f"Cannot write {str(path)!r}: expected np.savez to end the archive without a comment, "
                              "got another layout; nothing was written.")
    head = f"worldloom {format} v{int(version)} crc32 ".encode()
    handle.seek(end - 2)
    handle.write(struct.pack("<H", len(head) + 8))
    crc = _crc32(handle, end)
    handle.seek(end)
    handle.write(head + f"{crc:08x}".encode())


def is_worldloom_archive(path, earlier: tuple[str, ...] = (), format: str | None = None) -> bool:  # noqa: A002
    """Whether ``path`` is a file worldloom wrote with :func:`write_npz`: a zip whose comment is a signature
    (of any format; its CRC is not checked, so a damaged archive of worldloom's still counts).

    Args:
        earlier: The arrays a file of an earlier worldloom holds (written without a signature, by
            ``np.savez``): an unsigned zip of ``.npy`` arrays only, among them all of these, counts too.
        format: Only a signature of this format counts (default: any).
    """
    try:
        with open(path, "rb") as handle:
            if handle.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
                return False
            size = handle.seek(0, os.SEEK_END)
            tail_size = min(size, _END_SIZE + 0xFFFF)
            handle.seek(size - tail_size)
            tail = handle.read(tail_size)
    except OSError:
        return False
    at = tail.rfind(_END_RECORD)
    if at < 0:
        return False
    comment = tail[at + _END_SIZE:]
    signed = SIGNATURE.fullmatch(comment)
    if signed is not None:
        return format is None or signed["format"].decode() == format
    if comment or not earlier:
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except _READ_ERRORS:
        return False
    return all(name.endswith(".npy") for name in names) and {f"{name}.npy" for name in earlier} <= set(names)


def check_target(path, what: str, overwrite: bool = False, earlier: tuple[str, ...] = (),
                 format: str | None = None) -> None:  # noqa: A002
    """Refuse a directory, and anything but a worldloom archive unless ``overwrite`` (see :func:`write_npz`):
    what :func:`write_npz` checks, for a caller to check before the work whose arrays go there."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{str(path)!r} is a directory: expected a file name such as 'buffer.npz'.")
    if overwrite or not os.path.lexists(path) or is_worldloom_archive(path, earlier, format) or (
            path.is_file() and not path.is_symlink() and path.stat().st_size == 0):  # an empty file (mkstemp's)
        return
    try:
        found = f"a file of {path.stat().st_size} bytes" if path.is_file() else "something other than a file"
    except OSError as err:
        found = f"an entry that cannot be read ({err})"
    if path.is_symlink():
        found = f"a symbolic link to {found}"
    raise CheckpointError(f"Cannot write the {what} to {str(path)!r}: expected a new file name or a file worldloom "
                          f"wrote, got {found} that is not a {what} file worldloom wrote. "
                          "Nothing was written; choose another name, or pass overwrite=True to replace it.")


def write_npz(path, arrays: dict[str, np.ndarray], *, format: str, version: int,  # noqa: A002
              what: str = "array file", overwrite: bool = False, earlier: tuple[str, ...] = ()) -> None:
    """Write ``arrays`` to ``path`` as a signed ``.npz`` under a locked temp name, then ``os.replace`` it into place.

    Leftover temp files of killed writes in the directory are removed first.
    What is at ``path`` is replaced only if worldloom wrote it (a signed
    archive, or an unsigned one of an earlier worldloom holding the arrays
    ``earlier``; see :func:`is_worldloom_archive`), or with ``overwrite=True``.

    Raises:
        ConfigError: ``path`` is not a file name.
        CheckpointError: it is a directory, a file worldloom did not write (and
            ``overwrite`` is False), or the write failed (naming the path and
            the cause, e.g. ``No space left on device``; the original chained).
    """
    path = as_path(path)
    check_target(path, what, overwrite, tuple(earlier), format)
    tmp = None
    try:
        with writing(path, what):
            path.parent.mkdir(parents=True, exist_ok=True)
            remove_temp_files(path.parent)
            tmp, fd = _create_locked_temp(path)
            with os.fdopen(fd, "w+b") as handle:
                np.savez(handle, **arrays)
                _sign(handle, path, format, version)
                handle.flush()
                os.fsync(handle.fileno())
                if fcntl is not None:  # replace while still holding the lock
                    os.replace(tmp, path)
            if fcntl is None:
                os.replace(tmp, path)
            _fsync_directory(path.parent)
    finally:
        if tmp is not None:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass


# ------------------------------------------------------------ reading


def _found(head: bytes) -> str:
    if not head:
        return "an empty file"
    if head.startswith(NPY_MAGIC):
        return "a single .npy array (np.save), not an archive of arrays"
    return f"a file starting with {head[:8]!r}"


def _check_signature(handle, path: Path, format: str, versions: tuple[int, ...], what: str,  # noqa: A002
                     signed: bool) -> None:
    """Check the signature (see the module doc); a file without one passes unless ``signed``."""
    size = handle.seek(0, os.SEEK_END)
    tail_size = min(size, _END_SIZE + 0xFFFF)
    handle.seek(size - tail_size)
    tail = handle.read(tail_size)
    at = tail.rfind(_END_RECORD)
    if at < 0 or at + _END_SIZE > len(tail):
        raise zipfile.BadZipFile("no end of central directory record")
    comment = tail[at + _END_SIZE:]
    if struct.unpack("<H", tail[at + _END_SIZE - 2:at + _END_SIZE])[0] != len(comment):
        raise CheckpointError(f"{str(path)!r}: expected a complete {what}, got a zip end record whose comment "
                              f"length ({len(comment)} bytes follow it) disagrees; the file is truncated or corrupt.")
    if not comment:
        if signed:
            raise CheckpointError(f"{str(path)!r} carries no worldloom signature: expected a {what} written by "
                                  f"worldloom (format {format!r}, version {max(versions)}).")
        return
    match = SIGNATURE.fullmatch(comment)
    if match is None:
        raise CheckpointError(f"{str(path)!r}: expected the signature 'worldloom {format} v<version> crc32 "
                              f"<8 hex>' as its zip comment, got {comment[:60]!r}; the file is damaged.")
    if match["format"].decode() != format:
        raise CheckpointError(f"{str(path)!r} holds a {match['format'].decode()!r} file: expected a {what} "
                              f"({format!r}).")
    version = int(match["version"])
    if version not in versions:
        newer = " (a newer worldloom wrote it: upgrade to read it)" if version > max(versions) else ""
        raise CheckpointError(f"{str(path)!r} is a {what} of format version {version}{newer}: this worldloom "
                              f"reads version{'s' if len(versions) > 1 else ''} {', '.join(map(str, versions))}.")
    crc = _crc32(handle, size - len(comment))
    if crc != int(match["crc"], 16):
        raise CheckpointError(f"{str(path)!r} has different content than was written (CRC-32 {crc:08x}, its "
                              f"signature says {match['crc'].decode()}): the {what} is damaged.")


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


def read_npz(path, *, format: str, versions: tuple[int, ...], what: str, writer: str,  # noqa: A002
             signed: bool = False, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` file (or those of ``names``), checked (see the module doc).

    Args:
        path: The file.
        format, versions: The signature's format and the versions read.
        what, writer: Its name in messages and what writes it (``"ReplayBuffer.save()"``).
        signed: Refuse a file without a signature.
        names: Read only these arrays (those present); the others are not decompressed.

    Raises:
        CheckpointError: a missing, unreadable, truncated, damaged or other file.
    """
    path = as_path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(ZIP_MAGIC) * 2)
            if not head.startswith(ZIP_MAGIC):
                raise CheckpointError(f"{str(path)!r}: expected an .npz archive written by {writer}, "
                                      f"found {_found(head)}.")
            _check_signature(handle, path, format, versions, what, signed)
        data = {}
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    raise CheckpointError(f"{str(path)!r}: expected only .npy arrays in the archive, found "
                                          f"{info.filename!r}; it is not a {what} file.")
                name = info.filename[: -len(".npy")]
                if names is None or name in names:
                    data[name] = _read_member(archive, info, path)
    except CheckpointError:
        raise
    except _READ_ERRORS as err:
        raise CheckpointError(f"{str(path)!r} is not a readable .npz {what}: expected a complete archive "
                              f"written by {writer}, got {type(err).__name__}: {err}; the file is "
                              "truncated or corrupt.") from err
    return data
