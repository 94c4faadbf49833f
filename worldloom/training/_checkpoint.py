"""Train-state checkpoints: one directory per step, written atomically with orbax.

Layout::

    save_dir/
      .worldloom-writer.lock   while a run writes here: {"pid", "host", "token", "since"}
      step_00010000/
        meta.json       {"format": "worldloom-train-state", "version", "step", "run_id", "family",
                         "preset", "model_config", "training_config", "sampler", "data",
                         "state_sha256", "state_files"}
        state/          orbax directory of {"train_state": ..., "key": ...}
        manifest.json   the size and CRC-32 of every other file, meta.json included
      best/         a saved model (``CheckpointCallback(save_best=True)``), whose
                    ``worldloom.json["info"]`` holds its step, metric and run_id

Each step directory is a saved directory of :mod:`worldloom.core.persist`
(format ``worldloom-train-state``, version 2): assembled under a temporary name
and moved into place, so a crash never leaves a half-written checkpoint, and
every file checked against the manifest on load. Version 1 (no manifest; the
state's files listed in ``meta.json["state_files"]``, ``meta.json`` itself
unchecked) still loads; only ``step_<digits>``
directories with both ``meta.json`` and ``state/`` count as checkpoints.
Deleting one (``keep_last``) renames it away first, so an interrupted deletion
never leaves a listed but broken checkpoint.

A directory holds the checkpoints of one run: every checkpoint carries the
``run_id`` of the run that wrote it (a resumed run keeps its checkpoint's), a
save refuses a directory holding another run's checkpoints, and ``keep_last``
deletes only the writing run's own. Writers hold :class:`WriterLock` on the
directory.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import jax

from worldloom.core.errors import CheckpointError
from worldloom.core.files import WriterLock, discard, read_json_object, remove_leftovers
from worldloom.core.persist import (
    MANIFEST_FILE,
    check_saved_files,
    file_manifest,
    read_manifest,
    save_directory,
    writing,
)
from worldloom.models.checkpoint import (
    check_files,
    is_saved_model,
    params_sha256,
    record_info,
    restore_pytree,
    save_pytree,
)

FORMAT = "worldloom-train-state"
VERSION = 2
READS = (1, 2)
META_FILE = "meta.json"
STATE_DIR = "state"
BEST_DIR = "best"
_NAME = re.compile(r"^step_(\d+)$")
_ANY_RUN = object()

__all__ = ["BEST_DIR", "WriterLock", "checkpoint_name", "find_checkpoint", "foreign_checkpoints",
           "list_checkpoints", "load_state", "open_directory", "read_meta", "resume_candidates", "run_id_of",
           "save_checkpoint"]


def checkpoint_name(step: int) -> str:
    return f"step_{int(step):08d}"


def _complete(path: Path) -> bool:
    return (path / META_FILE).is_file() and (path / STATE_DIR).is_dir()


_DAMAGED = object()


def _written_by(path: Path) -> Any:
    """The ``run_id`` in complete checkpoint ``path``'s ``meta.json``; ``_DAMAGED`` when that file cannot be read
    (a write cut short, a damaged disk): such a checkpoint is no run's, and resume skips it."""
    meta = read_json_object(path / META_FILE)
    return _DAMAGED if meta is None else meta.get("run_id")


def _check_target(target: Path, run_id: str | None) -> None:
    """CheckpointError when ``target`` holds something a checkpoint must not be written over: anything but a
    checkpoint of this run, or a damaged checkpoint (:func:`_written_by`)."""
    if not os.path.lexists(target) or (_complete(target) and _written_by(target) in (_DAMAGED, run_id)):
        return
    raise CheckpointError(f"Cannot write the checkpoint {str(target)!r}: expected nothing there or a checkpoint "
                          f"of this run, got {'a directory' if target.is_dir() else 'a file'} worldloom did not "
                          "write for it; it is left as it is. Move it away, or choose another checkpoint directory.")


def run_id_of(path) -> str | None:
    """The ``run_id`` a checkpoint (or a ``best`` saved model) was written by; None when unknown."""
    path = Path(path)
    meta = read_json_object(path / META_FILE)
    if meta is not None:
        return meta.get("run_id")
    info = record_info(path)  # a saved model's: its info holds the run_id
    return info.get("run_id") if isinstance(info, dict) else None


def list_checkpoints(directory, run_id: Any = _ANY_RUN) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``directory`` as ``[(step, path), ...]``, oldest first.

    Args:
        directory: A checkpoint directory.
        run_id: Only those of this run (default: every run's).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        match = _NAME.match(child.name)
        if match and _complete(child) and (run_id is _ANY_RUN or run_id_of(child) == run_id):
            found.append((int(match.group(1)), child))
    return sorted(found)


def foreign_checkpoints(directory, run_id: str | None) -> list[str]:
    """Names of the checkpoints (and ``best``) in ``directory`` written by a run other than ``run_id``. A
    ``best`` that is not a saved model is none of them: it is not this package's."""
    directory = Path(directory)
    names = [path.name for _, path in list_checkpoints(directory) if _written_by(path) not in (_DAMAGED, run_id)]
    best = directory / BEST_DIR
    if is_saved_model(best) and run_id_of(best) != run_id:
        names.append(BEST_DIR)
    return names


def open_directory(directory) -> None:
    """Clean ``directory`` for a writer holding its lock: leftovers of killed writes and deletions.

    Removes the package's temporary entries whose process is gone (see
    :func:`worldloom.core.files.remove_leftovers`) and step directories this
    package wrote that lack ``state/`` (a deletion cut short by an earlier version).
    """
    directory = Path(directory)
    remove_leftovers(directory)
    if not directory.is_dir():
        return
    for child in directory.iterdir():
        if _NAME.match(child.name) and child.is_dir() and not (child / STATE_DIR).exists():
            try:
                read_meta(child)
            except CheckpointError:
                continue
            discard(child)


def find_checkpoint(path) -> Path:
    """``path`` itself if it is a checkpoint, else the newest checkpoint inside it.

    Raises:
        CheckpointError: neither.
    """
    return resume_candidates(path)[0]


def resume_candidates(path) -> list[Path]:
    """What to resume from at ``path``, best first: ``[path]`` for a step directory, else its checkpoints newest first.

    Raises:
        CheckpointError: no checkpoint there.
    """
    path = Path(path)
    if (path / META_FILE).is_file():
        return [path]
    found = list_checkpoints(path)
    if not found:
        raise CheckpointError(f"No training checkpoint at {str(path)!r}: expected a directory written by "
                              "CheckpointCallback (step_<N>/meta.json and state/) or one such step directory.")
    return [checkpoint for _, checkpoint in reversed(found)]


def check_one_run(directory, run_id: str | None) -> None:
    """CheckpointError when ``directory`` holds checkpoints of a run other than ``run_id``."""
    foreign = foreign_checkpoints(directory, run_id)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign)} in all)" if len(foreign) > 5 else "")
        raise CheckpointError(f"{str(directory)!r} holds checkpoints of another run ({shown}): expected a "
                              "directory with this run's checkpoints only. Pass resume=True (or "
                              "Trainer(resume_from=...)) to continue that run, or choose another directory.")


def save_checkpoint(directory, step: int, tree: Any, meta: dict, keep_last: int | None = None) -> Path:
    """Write ``tree`` (a pytree of arrays) and ``meta`` as ``directory/step_<step>``.

    ``meta["run_id"]`` names the writing run. Keeps only the newest
    ``keep_last`` checkpoints of that run when given.

    Raises:
        CheckpointError: another process holds the directory's lock, the
            directory holds another run's checkpoints, or the write failed
            (naming the path and the cause; the checkpoints there stay).
    """
    directory = Path(directory)
    host = jax.device_get(tree)
    run_id = meta.get("run_id")
    meta = dict(meta, format=FORMAT, version=VERSION, step=int(step), state_sha256=params_sha256(host))
    target = directory / checkpoint_name(step)

    def fill(tmp: Path) -> None:
        save_pytree(host, tmp / STATE_DIR)
        meta["state_files"] = file_manifest(tmp / STATE_DIR)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))

    with writing(target, "training checkpoint"), WriterLock(directory):
        open_directory(directory)
        check_one_run(directory, run_id)
        _check_target(target, run_id)
        save_directory(target, fill, format=FORMAT, version=VERSION, what="training checkpoint")
        if keep_last:
            for _, old in list_checkpoints(directory, run_id)[:-int(keep_last)]:
                discard(old)
    return target


def _manifest(path: Path) -> dict | None:
    """The checked manifest of a checkpoint; None for version 1 (none written)."""
    if not os.path.lexists(path / MANIFEST_FILE):
        return None
    return read_manifest(path, FORMAT, READS[1:], "training checkpoint")


def read_meta(path) -> dict:
    """The checked ``meta.json`` of a checkpoint directory (against the manifest, from version 2).

    Raises:
        CheckpointError: a missing, damaged or edited ``meta.json``, or a format version this worldloom does not read.
    """
    path = Path(path)
    meta_file = path / META_FILE
    try:
        meta = json.loads(meta_file.read_text())
    except FileNotFoundError as err:
        raise CheckpointError(f"{str(path)!r} has no {META_FILE}; not a training checkpoint.") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{meta_file} is not valid JSON ({err}); the checkpoint is corrupt.") from err
    manifest = _manifest(path)
    if manifest is not None:
        check_saved_files(path, manifest, "training checkpoint", names=(META_FILE,))
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "step" not in meta:
        raise CheckpointError(f"{meta_file} is not a worldloom training checkpoint (format {FORMAT!r} expected).")
    version = meta.get("version")
    if version not in READS:
        raise CheckpointError(f"{meta_file}: a training checkpoint of format version {version!r}: this worldloom "
                              f"reads versions {', '.join(map(str, READS))}.")
    if version >= 2 and manifest is None:
        raise CheckpointError(f"{str(path)!r} has no {MANIFEST_FILE}: expected it beside a version {version} "
                              f"{META_FILE}; the checkpoint is incomplete.")
    for name, kinds, expected in _META_FIELDS:
        value = meta.get(name)
        if (name in meta or name == "step") and (isinstance(value, bool) or not isinstance(value, kinds)
                                                 or (name == "step" and value < 0)):
            raise CheckpointError(f"{meta_file}: expected {name} to be {expected}, got {value!r}; the "
                                  "checkpoint is damaged or was edited.")
    seed = meta.get("sampler", {}).get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise CheckpointError(f"{meta_file}: expected sampler.seed to be an int, got {seed!r}; the checkpoint is "
                              "damaged or was edited.")
    return meta


# The fields of meta.json the trainer reads, with their types: (name, types, in words).
_META_FIELDS = (("step", int, "a step count (an int >= 0)"), ("run_id", (str, type(None)), "a run id (a string)"),
                ("sampler", dict, "a mapping"), ("data", (dict, type(None)), "a mapping"),
                ("eval_history", list, "a list"), ("training_config", dict, "a mapping"),
                ("model_config", dict, "a mapping"))


def load_state(path, like: Any, meta: dict) -> Any:
    """Restore the tree (NumPy leaves) of checkpoint ``path`` shaped like ``like``.

    Args:
        path: A step directory (see :func:`find_checkpoint`).
        like: Arrays or ``ShapeDtypeStruct``s of the expected structure.
        meta: Its :func:`read_meta`, whose file list and checksum the state must match.

    Raises:
        CheckpointError: missing, damaged, mismatched or corrupt state.
    """
    path = Path(path)
    if not (path / STATE_DIR).is_dir():
        raise CheckpointError(f"{path} has no {STATE_DIR}/ directory; the checkpoint is incomplete.")
    manifest = _manifest(path)
    if manifest is not None:
        check_saved_files(path, manifest, "training checkpoint", under=STATE_DIR)
    else:
        check_files(path / STATE_DIR, meta.get("state_files"), "train state files")
    try:
        tree = restore_pytree(path / STATE_DIR, like)
    except Exception as err:  # noqa: BLE001 - orbax raises many types
        raise CheckpointError(f"Could not restore the train state at {path / STATE_DIR} into the expected "
                              f"structure (a different model or optimiser?): {err}") from err
    if params_sha256(tree) != meta.get("state_sha256"):
        raise CheckpointError(f"The train state at {path / STATE_DIR} does not match its checksum; "
                              "the checkpoint is corrupt.")
    return tree
