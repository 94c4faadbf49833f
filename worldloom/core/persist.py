"""One persistence layer: saved directories with a manifest, a format version and one-step swaps.

Every directory worldloom saves (a model, a Trainer checkpoint, a saved agent,
an agent checkpoint) holds ``manifest.json`` beside the files it describes::

    {"format": "worldloom-model", "version": 2,
     "files": {"config.json": [size, crc32], "weights/...": [size, crc32], ...}}

``files`` lists every other file beneath the directory, saved configs and
counters included, so a flipped byte, a cut file or a hand edit is a
:class:`~worldloom.core.errors.CheckpointError` naming the file. ``format``
says what the directory holds and ``version`` how it is laid out; each loader
names the versions it reads and refuses the others. Single files of arrays
(replay) carry the same facts inside themselves (:mod:`worldloom.core.archives`).

Writing (:func:`save_directory`): ``fill(tmp)`` builds the directory under a
temporary name, the manifest is written last, and the directory replaces
``path`` in one step (:func:`worldloom.core.files.atomic_directory`), so a
reader finds the previous directory or the new one, never a mix. An optional
:class:`~worldloom.core.files.WriterLock` is held for the write and released
on any exception. Every error of the write (a full disk, a read-only file
system, orbax's ``RESOURCE_EXHAUSTED``) becomes a CheckpointError naming the
path and the cause, with the original chained; what was at ``path`` stays.

Reading (:func:`open_saved`, :func:`load_consistent`): leftovers of killed
writes beside the directory are cleaned first (a moved-away previous copy is
put back), then the manifest and every file are checked. A read that meets a
directory being swapped under it is retried on the new one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from worldloom.core.errors import CheckpointError, ConfigError
from worldloom.core.files import WriterLock, atomic_directory, recover

__all__ = ["MANIFEST_FILE", "check_saved_files", "file_manifest", "load_consistent", "manifest_problems", "open_saved",
           "read_manifest", "save_directory", "saved_config", "write_failure", "write_manifest", "writing"]

MANIFEST_FILE = "manifest.json"
_SHOWN = 6
# Status names of tensorstore/orbax errors (raised as ValueError) that mean the storage failed.
_STORAGE_STATUS = re.compile(r"\b(RESOURCE_EXHAUSTED|PERMISSION_DENIED|UNAVAILABLE|DATA_LOSS)\b|No space left"
                             r"|Read-only file system|Disk quota exceeded|Input/output error")
_HINTS = {
    errno.ENOSPC: "free some space there or choose another location",
    errno.EDQUOT: "free some space there or choose another location",
    errno.EROFS: "choose a location on a writable file system",
    errno.EACCES: "choose a location you may write to",
    errno.EPERM: "choose a location you may write to",
}
# Operating-system errors named in the message of a storage error that is not an OSError.
_OS_CAUSES = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)
C = TypeVar("C")
T = TypeVar("T")


# ------------------------------------------------------------ write errors


def _cause(err: BaseException) -> tuple[str, int | None]:
    """A one-line cause and its errno (when known) for an error raised by a write.

    Orbax's errors carry the operating system's words deep in a long message
    (``RESOURCE_EXHAUSTED: Error writing ... : No space left on device
    [os_error_code='28']``): those words come first, then the message's start.
    """
    if isinstance(err, OSError) and err.strerror:
        code = err.errno
        name = errno.errorcode.get(code, "") if code is not None else ""
        return f"{err.strerror}{f' [{name}]' if name else ''}", code
    text = " ".join(str(err).split()) or type(err).__name__
    short = f"{type(err).__name__}: {text if len(text) <= 160 else text[:157] + '...'}"
    for code in _OS_CAUSES:
        if os.strerror(code) in text:
            return f"{os.strerror(code)} [{errno.errorcode[code]}] ({short})", code
    code = errno.ENOSPC if "RESOURCE_EXHAUSTED" in text else getattr(err, "errno", None)
    return short, code


def write_failure(path, what: str, err: BaseException) -> CheckpointError | None:
    """The CheckpointError for ``err`` raised while writing ``what`` to ``path``; None when it is not a write failure.

    Write failures are OSErrors and orbax/tensorstore errors whose message
    carries a storage status (``RESOURCE_EXHAUSTED``, ``PERMISSION_DENIED``, ...).
    The CheckpointError keeps the original as ``write_error`` (and is raised
    from it), so a write within another is named by the outer path.
    """
    if isinstance(err, CheckpointError):
        inner = getattr(err, "write_error", None)  # a failure of a write within this one: name this path
        if inner is None:
            return err
        err = inner
    if not isinstance(err, OSError) and not (isinstance(err, (ValueError, RuntimeError))
                                             and _STORAGE_STATUS.search(str(err))):
        return None
    cause, code = _cause(err)
    hint = _HINTS.get(code, "check the location and try again")
    failure = CheckpointError(f"Cannot write the {what} to {str(path)!r}: expected a writable location with free "
                              f"space, got {cause}. Anything saved there before is unchanged; {hint}.")
    failure.write_error = err
    return failure


@contextlib.contextmanager
def writing(path, what: str) -> Iterator[None]:
    """Turn write failures inside the block into CheckpointErrors naming ``path`` and the cause.

    See :func:`write_failure` for what counts; other errors pass unchanged.
    """
    try:
        yield
    except Exception as err:
        failure = write_failure(path, what, err)
        if failure is None or failure is err:
            raise
        raise failure from failure.write_error


# ------------------------------------------------------------ manifests


def file_manifest(directory: Path) -> dict[str, list[int]]:
    """``{relative path: [size, crc32]}`` of every file under ``directory``."""
    directory = Path(directory)
    manifest = {}
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        manifest[file.relative_to(directory).as_posix()] = [file.stat().st_size, _crc32(file)]
    return manifest


def _crc32(file: Path) -> int:
    value = 0
    with open(file, "rb") as handle:
        while chunk := handle.read(1 << 20):
            value = zlib.crc32(chunk, value)
    return value


def manifest_problems(directory: Path, manifest: dict) -> list[str]:
    """How the files under ``directory`` differ from ``manifest`` (empty when they match)."""
    directory = Path(directory)
    problems = []
    for name, (size, crc) in sorted(manifest.items()):
        file = directory / name
        try:
            found = file.stat().st_size
        except OSError:
            problems.append(f"{name} is missing")
            continue
        if found != size:
            problems.append(f"{name} holds {found} bytes, expected {size}")
        elif _crc32(file) != crc:
            problems.append(f"{name} has different content (CRC-32 mismatch)")
    return problems


def write_manifest(directory: Path, format: str, version: int) -> dict:  # noqa: A002 - the manifest's key
    """Write ``manifest.json`` listing every other file under ``directory``; returns it."""
    directory = Path(directory)
    files = {name: entry for name, entry in file_manifest(directory).items() if name != MANIFEST_FILE}
    manifest = {"format": format, "version": int(version), "files": files}
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def _entry_ok(entry) -> bool:
    return (isinstance(entry, list) and len(entry) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in entry))


def read_manifest(directory, format: str, versions: tuple[int, ...], what: str) -> dict:  # noqa: A002
    """The checked ``manifest.json`` of ``directory``: of ``format``, at one of ``versions``.

    Raises:
        CheckpointError: no manifest, an unreadable or malformed one, another
            format, or a version this worldloom does not read.
    """
    directory = Path(directory)
    file = directory / MANIFEST_FILE
    article = "an" if what[:1] in "aeiou" else "a"
    expected = f"{article} {what} written by worldloom (format {format!r}, version {max(versions)})"
    try:
        text = file.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{str(directory)!r} has no {MANIFEST_FILE}: expected {expected}, whose manifest "
                              "lists the checksum of every file. An earlier worldloom wrote such directories "
                              "without one; they are not loaded, since nothing can vouch for their files.") from None
    except OSError as err:
        raise CheckpointError(f"Cannot read {str(file)!r}: expected {expected}, got {err}.") from err
    try:
        manifest = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{str(file)!r} is not valid JSON ({err}): the {what} at {str(directory)!r} is "
                              "damaged.") from err
    if (not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict)
            or not isinstance(manifest.get("format"), str) or not isinstance(manifest.get("version"), int)
            or not all(_entry_ok(entry) for entry in manifest["files"].values())):
        shown = sorted(manifest) if isinstance(manifest, dict) else type(manifest).__name__
        raise CheckpointError(f"{str(file)!r}: expected a manifest {{format, version, files: {{name: [size, "
                              f"crc32]}}}}, got {shown}: the {what} at {str(directory)!r} is damaged.")
    if manifest["format"] != format:
        raise CheckpointError(f"{str(directory)!r} holds a {manifest['format']!r} directory (its {MANIFEST_FILE}): "
                              f"expected {expected}.")
    version = manifest["version"]
    if version not in versions:
        newer = " (a newer worldloom wrote it: upgrade to read it)" if version > max(versions) else ""
        raise CheckpointError(f"{str(directory)!r} is a {what} of format version {version}{newer}, says its "
                              f"{MANIFEST_FILE}: this worldloom reads version{'s' if len(versions) > 1 else ''} "
                              f"{', '.join(map(str, versions))} of {format!r}.")
    return manifest


def _summary(problems: list[str]) -> str:
    more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    return "; ".join(problems[:_SHOWN]) + more


def check_saved_files(directory, manifest: dict, what: str, under: str | None = None,
                      names: tuple[str, ...] = ()) -> None:
    """CheckpointError naming each file under ``directory`` that differs from ``manifest``.

    Args:
        under: Check only the files in this subdirectory (``"state"``); all by default.
        names: Check only these files (each must be listed).
    """
    files = manifest["files"]
    problems = [f"{name} is not listed in {MANIFEST_FILE}" for name in names if name not in files]
    if names:
        files = {name: files[name] for name in names if name in files}
    if under is not None:
        files = {name: entry for name, entry in files.items() if name.startswith(f"{under}/")}
    problems += manifest_problems(Path(directory), files)
    if problems:
        raise CheckpointError(f"The {what} at {str(directory)!r} is damaged: {_summary(problems)}; expected "
                              f"the files as they were written (their sizes and CRC-32 checksums in {MANIFEST_FILE}).")


# ------------------------------------------------------------ directories


def save_directory(path, fill: Callable[[Path], None], *, format: str, version: int, what: str,  # noqa: A002
                   lock: WriterLock | None = None) -> Path:
    """Write directory ``path`` whole: ``fill(tmp)``, then the manifest, then one swap into place.

    Args:
        path: The directory to write (replaced in one step when it exists).
        fill: Writes the directory's files into the temporary directory it is given.
        format, version: What the directory holds and its layout (stored in the manifest).
        what: Its name in messages (``"saved model"``).
        lock: Held for the write (borrowed when this process holds it already), released on any exception.

    Raises:
        CheckpointError: the write failed (naming ``path`` and the cause, the
            original chained), or another live process holds ``lock``.
    """
    path = Path(path)

    def build(tmp: Path) -> None:
        fill(tmp)
        write_manifest(tmp, format, version)

    with writing(path, what), (lock if lock is not None else contextlib.nullcontext()):
        atomic_directory(path, build)
    return path


def open_saved(directory, *, format: str, versions: tuple[int, ...], what: str) -> dict:  # noqa: A002
    """Check a saved directory before it is read: returns its manifest.

    Cleans leftovers of killed writes beside it (putting back a previous copy
    a killed swap moved away), then checks the manifest's format and version
    and every file's size and CRC-32.

    Raises:
        CheckpointError: no such directory, or a missing, damaged or other manifest or file.
    """
    directory = Path(directory)
    recover(directory)
    if not directory.is_dir():
        raise CheckpointError(f"No {what} at {str(directory)!r}: expected a directory written by worldloom.")
    manifest = read_manifest(directory, format, versions, what)
    check_saved_files(directory, manifest, what)
    return manifest


def _identity(path: Path) -> tuple | None:
    """What tells one saved directory at ``path`` from the next: its inode and times, and its manifest's bytes.

    (An inode number alone may be reused by the next save once the previous copy is deleted.)
    """
    try:
        stat = os.stat(path)
        manifest = (path / MANIFEST_FILE).read_bytes() if (path / MANIFEST_FILE).is_file() else b""
    except OSError:
        return None
    return stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, manifest


def load_consistent(path, load: Callable[[Path], T], attempts: int = 10) -> T:
    """``load(path)``, read again when ``path`` was replaced by a new save while it read.

    A save swaps the whole directory in one step, but a reader opens its files
    one at a time: one that spans a swap reads some files of each copy, which
    the checks turn into a CheckpointError (never a mixed result). Such a read
    is repeated, on the copy now in place, while each failure coincides with a
    replacement (up to ``attempts`` reads); any other CheckpointError is raised at once.
    """
    path = Path(path)
    for attempt in range(1, max(attempts, 1) + 1):
        before = _identity(path)
        try:
            return load(path)
        except CheckpointError:
            if attempt == attempts or _identity(path) == before:
                raise
        time.sleep(0.01 * attempt)


# ------------------------------------------------------------ saved configs


def saved_config(config_cls: type[C], data: Any, source) -> C:
    """``config_cls`` from a saved dict that must hold every field: a missing field is an error, not a default.

    Raises:
        CheckpointError: not a mapping, a missing field, or a value the config refuses.
    """
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{source}: expected the saved {config_cls.__name__} as a mapping of fields, got "
                              f"{type(data).__name__}.")
    missing = [name for name in config_cls.field_names() if name not in data]
    if missing:
        raise CheckpointError(f"{source}: the saved {config_cls.__name__} lacks {missing}: expected every field "
                              "as it was saved (a missing field is not filled in with its default).")
    try:
        return config_cls.from_dict(data)
    except ConfigError as err:
        detail = str(err).removeprefix(f"{config_cls.__name__}: ")
        raise CheckpointError(f"{source}: the saved {config_cls.__name__} is not valid: {detail}") from err
