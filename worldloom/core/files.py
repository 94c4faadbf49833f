"""Directories written whole: temp names, atomic replacement, leftovers of killed writes, writer locks.

Entries the package writes beside a target ``<name>`` while it works on it
(``<host>``: 6 hex digits of a hash of the machine's name)::

    .<name>.tmp-<host>-<pid>-<8 hex>     the new <name>, being written
    .<name>.old-<host>-<pid>-<8 hex>     the previous <name>, moved away while a replace completes
    .<name>.trash-<host>-<pid>-<8 hex>   a <name> being deleted

A write that is killed leaves such entries behind. :func:`remove_leftovers`
removes those of this machine whose process is gone (and ``tmp`` entries of
this process that no write of it is using) and puts a moved-away
``old`` copy back when its target is missing, so the last complete directory
is never lost. Entries of other machines (a shared file system) are left
alone, and nothing else is ever touched: directories named
``.<name>.tmp-<8 hex>`` or ``.<name>.old-<8 hex>`` (how earlier versions named
their temporary directories) count only once they are ten minutes old, and
files of that older pattern (replay buffers' temporary files) are left to the
buffer's own cleaner.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from worldloom.core.errors import CheckpointError

_ENTRY = re.compile(r"\.(?P<target>.+)\.(?P<kind>tmp|old|trash)-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]{8}")
_EARLIER_ENTRY = re.compile(r"\.(?P<target>.+)\.(?P<kind>tmp|old)-[0-9a-f]{8}")
_EARLIER_MIN_AGE_S = 600.0
# The ``tmp`` entries this process is writing now; its other ``tmp`` entries are leftovers (of a failed write
# that orbax's background writes recreated after the clean-up).
_WRITING: set[str] = set()
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def host_tag() -> str:
    """6 hex digits naming this machine in temporary names."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def temp_path(path: Path, kind: str = "tmp") -> Path:
    """A fresh name beside ``path`` for this process: ``.<name>.<kind>-<host>-<pid>-<8 hex>``."""
    path = Path(path)
    return path.parent / f".{path.name}.{kind}-{host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a zombie counts as gone)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def remove_path(path: Path) -> None:
    """Remove a file, link or directory tree; absent is fine (also on a read-only file system)."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def discard(path: Path) -> None:
    """Delete ``path`` crash-safely: renamed to a ``trash`` name first, so a half-deleted tree never keeps its name."""
    path = Path(path)
    trash = temp_path(path, "trash")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    remove_path(trash)


def _leftover(entry: os.DirEntry) -> tuple[str, str, bool] | None:
    """``(target, kind, writer_gone)`` for one of the package's temporary entries, else None."""
    match = _ENTRY.fullmatch(entry.name)
    if match is not None:
        pid = int(match["pid"])
        ours = pid == os.getpid() and match["kind"] == "tmp" and entry.name not in _WRITING
        gone = match["host"] == host_tag() and (ours or not process_alive(pid))
        return match["target"], match["kind"], gone
    match = _EARLIER_ENTRY.fullmatch(entry.name)
    try:
        if match is None or not entry.is_dir(follow_symlinks=False):
            return None
        old_enough = time.time() - entry.stat(follow_symlinks=False).st_mtime > _EARLIER_MIN_AGE_S
    except OSError:
        return None
    return match["target"], match["kind"], old_enough


def remove_leftovers(directory: Path) -> list[Path]:
    """Clean what killed writes left in ``directory`` (see the module doc); returns the entries removed.

    A moved-away ``old`` copy whose target is missing is renamed back to it
    instead. Errors (a read-only directory, a vanished entry) are ignored.
    """
    directory = Path(directory)
    try:
        with os.scandir(directory) as entries:
            found = [(Path(entry.path), info) for entry in entries if (info := _leftover(entry)) is not None]
    except OSError:
        return []
    removed = []
    # Newest first, so the newest moved-away copy is the one put back.
    found.sort(key=lambda item: _mtime(item[0]), reverse=True)
    for path, (target, kind, gone) in found:
        if not gone:
            continue
        home = directory / target
        with contextlib.suppress(OSError):
            if kind == "old" and not os.path.lexists(home):
                os.rename(path, home)
                continue
            remove_path(path)
            removed.append(path)
    return removed


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


def recover(path: Path) -> None:
    """Make ``path`` whole again if a killed replace left only its moved-away copy (cleans its directory too).

    Raises:
        CheckpointError: ``path`` is missing while a live process is replacing it.
    """
    path = Path(path)
    remove_leftovers(path.parent)
    if os.path.lexists(path):
        return
    prefix = f".{path.name}.old-"
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            match = _ENTRY.fullmatch(entry.name)
            if entry.name.startswith(prefix) and match is not None:
                raise CheckpointError(f"{str(path)!r} is being replaced by process {match['pid']}: expected it in "
                                      f"place, got only its previous copy {entry.name}; try again in a moment.")


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _move_in(tmp: Path, path: Path) -> None:
    """Put the complete ``tmp`` at ``path``; what was there is removed (or left at ``tmp``'s name).

    With an atomic exchange a complete entry is at ``path`` at every moment
    and the old one ends at ``tmp``'s name, for the caller to remove. Without
    one, the old entry is moved to an ``old`` name first; a kill between the
    two renames is repaired by :func:`remove_leftovers`.
    """
    if not os.path.lexists(path):
        os.rename(tmp, path)
        return
    if _exchange(tmp, path):
        return
    old = temp_path(path, "old")
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except OSError:
        os.rename(old, path)
        raise
    remove_path(old)


def atomic_directory(path: Path, fill: Callable[[Path], None]) -> None:
    """Build a directory with ``fill(tmp_dir)``, then move it to ``path`` in one step.

    What was at ``path`` is replaced only once the new directory is complete;
    leftovers of killed writes beside it are cleaned first (see :func:`recover`).

    Raises:
        CheckpointError: the parent cannot be created (a file is in the way).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:
        raise CheckpointError(f"Cannot write {str(path)!r}: expected its parent to be a directory, got a file "
                              f"in the way ({err}).") from err
    recover(path)
    tmp = temp_path(path)
    _WRITING.add(tmp.name)
    try:
        tmp.mkdir()
        fill(tmp)
        _move_in(tmp, path)
        _fsync_directory(path.parent)
    finally:
        _clean_up(tmp)
        _WRITING.discard(tmp.name)


def _clean_up(tmp: Path, attempts: int = 5) -> None:
    """Remove a temporary entry, best effort: a failure here must not hide the error that ended the write.

    A failed orbax save may still finish writing files of other arrays into
    it for a moment after raising; the removal is tried again while it stays.
    """
    for attempt in range(attempts):
        with contextlib.suppress(OSError):
            remove_path(tmp)
        if not os.path.lexists(tmp):
            return
        time.sleep(0.05 * (attempt + 1))


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_json_object(path) -> dict | None:
    """The JSON object (a mapping) in the file ``path``; None when it is missing, unreadable, not JSON or not
    an object. For files that may not be there or may be half-written, read without complaint."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` under a temporary name, then rename it into place.

    Raises:
        CheckpointError: the write failed (naming ``path`` and the cause, the original chained).
    """
    from worldloom.core.persist import writing  # persist builds on this module

    path = Path(path)
    tmp = temp_path(path)
    _WRITING.add(tmp.name)
    try:
        with writing(path, "file"):
            tmp.write_text(text)
            os.replace(tmp, path)
    finally:
        _clean_up(tmp)
        _WRITING.discard(tmp.name)


# ------------------------------------------------------------ writer locks


class WriterLock:
    """One writer per directory: an ``O_EXCL`` lock file naming the process that holds it.

    The lock is stale, and taken over, when that process is gone (same
    machine), or when it is this process and ``borrow`` is False (a run of it
    that ended without releasing). Threads of one process are not kept apart.

    Args:
        directory: The directory to lock (created when missing).
        name: The lock file's name inside it.
    """

    def __init__(self, directory: Path, name: str = ".worldloom-writer.lock"):
        self.directory = Path(directory)
        self.path = self.directory / name
        self.held = False
        self._token = uuid.uuid4().hex

    def acquire(self, borrow: bool = False) -> WriterLock:
        """Take the lock (idempotent).

        Args:
            borrow: When this process already holds the lock (through another
                ``WriterLock``), use it as it is: :meth:`release` then leaves it.
                Otherwise such a lock is taken over.

        Raises:
            CheckpointError: another live process holds it.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CheckpointError(f"Cannot lock {str(self.directory)!r}: expected a directory that can be "
                                  f"created, got {err}.") from err
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "token": self._token,
                             "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        for _ in range(8):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder.get("token") == self._token:
                    self.held = True
                    return self
                ours = holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid()
                if ours and borrow:
                    return self
                if self._live(holder):
                    raise CheckpointError(
                        f"{str(self.directory)!r} is being written by process {holder.get('pid')} on "
                        f"{holder.get('host')} (since {holder.get('since')}; lock file {self.path.name}): expected "
                        "one writer per directory. Wait for that run to finish or choose another directory; "
                        f"delete {str(self.path)!r} only if that process is gone.") from None
                self._break(holder)
                continue
            except OSError as err:  # a read-only or full disk, no permission
                raise CheckpointError(f"Cannot write in {str(self.directory)!r}: expected a directory this process "
                                      f"can write, got {err}.") from err
            with os.fdopen(fd, "w") as handle:
                handle.write(record)
            self.held = True
            return self
        raise CheckpointError(f"Could not take the writer lock {str(self.path)!r}: expected it to be free or held, "
                              "got it changing hands repeatedly.")

    def release(self) -> None:
        """Give the lock back (a no-op unless held)."""
        if self.held and self._holder().get("token") == self._token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.held = False

    def _holder(self) -> dict:
        return read_json_object(self.path) or {}

    def _live(self, holder: dict) -> bool:
        if not holder:  # being written this instant, or torn by a kill: stale once a few seconds old
            return time.time() - _mtime(self.path) < 5.0
        if holder.get("host") != socket.gethostname():
            return True
        pid = int(holder.get("pid", -1))
        return pid != os.getpid() and process_alive(pid)

    def _break(self, holder: dict) -> None:
        """Remove a stale lock file, unless another process replaced it in the meantime."""
        trash = temp_path(self.path, "trash")
        try:
            os.rename(self.path, trash)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(trash.read_text())
        except (OSError, ValueError):
            moved = {}
        if moved != holder:  # a fresh lock: put it back unless yet another one took its place
            with contextlib.suppress(OSError):
                os.link(trash, self.path)
        remove_path(trash)

    def __enter__(self) -> WriterLock:
        return self.acquire(borrow=True)

    def __exit__(self, *exc) -> None:
        self.release()
