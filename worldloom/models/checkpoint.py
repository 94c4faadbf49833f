"""Saving and loading models: ``config.json`` plus orbax weights, one saved directory of :mod:`worldloom.core.persist`.

Layout of a saved directory (format ``worldloom-model``, version 3)::

    config.json     {"model_type": family, <every config field>}: the config alone, as
                    the original library documents it (``DreamerV3Config(**json.load(f))``)
    worldloom.json  {"format": "worldloom-model", "version": 3, "family", "preset",
                     "seed", "num_parameters", "weights_sha256", ["info"]}
    weights/        orbax StandardCheckpointer directory of the params pytree
    manifest.json   the size and CRC-32 of every other file, both JSON files included

Version 2 kept the record and the config in one ``config.json``
(``{"format", "version", "family", "preset", "config", ...}``); it still loads.

The directory is assembled under a temporary name beside the target and
moved into place in one step (see :mod:`worldloom.core.files`), so a crash
never leaves a half-written model and an overwritten model stays loadable
throughout. A save goes only to a new path, an empty directory or an earlier
saved model; anything else is refused unless ``overwrite=True``.

On load, every file is checked against the manifest (a hand edit of
``config.json`` is a CheckpointError naming it), the saved config must hold
every field, the stored array shapes must be those the config implies, and
the restored params must match their SHA-256, so a corrupt or mismatched
directory is an error, never a silently different model. Version 1 (written
before the manifest) still loads: its ``config.json`` lists the weights'
sizes and CRC-32s (``weights_files``), which are checked, but nothing covers
``config.json`` itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any

import jax
import numpy as np

from worldloom.core.archives import as_path
from worldloom.core.config import flag
from worldloom.core.errors import CheckpointError, ConfigError
from worldloom.core.files import atomic_directory, atomic_write_text, read_json_object, recover
from worldloom.core.persist import (
    MANIFEST_FILE,
    check_saved_files,
    load_consistent,
    manifest_problems,
    read_manifest,
    save_directory,
    saved_config,
)
from worldloom.models.base import flatten_params

__all__ = ["atomic_directory", "atomic_write_text", "is_saved_model", "load_model", "params_sha256", "read_meta",
           "record_info",
           "restore_pytree", "save_model", "save_pytree", "stored_arrays"]

FORMAT = "worldloom-model"
VERSION = 3
READS = (1, 2, 3)
CONFIG_FILE = "config.json"
RECORD_FILE = "worldloom.json"
WEIGHTS_DIR = "weights"
_SHOWN = 6


def params_sha256(params: Any) -> str:
    """SHA-256 over every leaf's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, leaf in flatten_params(params):
        arr = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{name}|{arr.dtype}|{arr.shape}".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


class _OrbaxChatter(logging.Filter):
    """Holds back orbax's info and debug records (a handler's settings, its version, barrier functions: a
    dozen lines per save or load wherever a program logs at INFO); its warnings and errors pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


_ORBAX_CHATTER = _OrbaxChatter()


def _checkpointer():
    """An orbax checkpointer for host arrays written by this process alone.

    Saved trees are host copies, so with several processes (``worldloom.distributed``)
    the one process that reads or writes a directory does so without waiting for the others.
    """
    import orbax.checkpoint as ocp

    if _ORBAX_CHATTER not in logging.getLogger("absl").filters:
        logging.getLogger("absl").addFilter(_ORBAX_CHATTER)

    if jax.process_count() == 1:
        return ocp.StandardCheckpointer()
    index = jax.process_index()
    options = ocp.options.MultiprocessingOptions(primary_host=index, active_processes={index},
                                                 barrier_sync_key_prefix=f"worldloom-process-{index}")
    return ocp.StandardCheckpointer(multiprocessing_options=options)


def save_pytree(tree: Any, directory: Path) -> None:
    """Write ``tree`` with orbax to ``directory`` (which must not exist).

    Orbax's errors pass unchanged (a full disk is its ``ValueError:
    RESOURCE_EXHAUSTED``); :func:`worldloom.core.persist.save_directory`, within
    which every save runs, turns them into a CheckpointError naming the target.
    """
    ckptr = _checkpointer()
    previous = _silence_abandoned_reads()  # a failed write's abandoned tasks report late too, like a failed read's
    with _quiet_absl(logging.CRITICAL):  # its worker threads also log the error the save raises
        try:
            ckptr.save(Path(directory).absolute(), jax.device_get(tree))
            ckptr.wait_until_finished()
        except Exception:
            with contextlib.suppress(Exception):  # its other writes go on after the first fails: let them end
                ckptr.close()
            raise
    if previous is not None and getattr(sys.unraisablehook, "_drops_abandoned_reads", False):
        sys.unraisablehook = previous  # nothing failed: nothing to drop


def _abandoned_read_report(unraisable) -> bool:
    """A read orbax abandoned after a failed restore, reporting back to its closed event loop."""
    exc = unraisable.exc_value
    if not isinstance(exc, RuntimeError) or str(exc) != "Event loop is closed":
        return False
    return any(frame.name == "call_soon_threadsafe" for frame in traceback.extract_tb(unraisable.exc_traceback))


def _silence_abandoned_reads():
    """Install a ``sys.unraisablehook`` that drops the reports of reads orbax abandoned.

    When one array of a damaged checkpoint fails to read, orbax closes its
    event loop while tensorstore still completes the other reads; each then
    reports a RuntimeError("Event loop is closed") through
    ``sys.unraisablehook`` (hundreds of tracebacks, some after the restore has
    returned) for one error that is raised as a CheckpointError anyway.
    Every other report still reaches the previous hook.

    Returns:
        The previous hook when this call installed the filter, else None.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_drops_abandoned_reads", False):
        return None

    def hook(unraisable):
        if not _abandoned_read_report(unraisable):
            previous(unraisable)

    hook._drops_abandoned_reads = True
    sys.unraisablehook = hook
    return previous


class _FailedReads(logging.Filter):
    """Drops asyncio's "Task exception was never retrieved" records of reads in a directory whose restore failed.

    orbax gathers one read task per array and raises the first failure; when
    several arrays are damaged, the other tasks' errors are never retrieved,
    and asyncio logs each with its traceback when the task is collected,
    possibly long after the restore raised its CheckpointError. Records about
    other files or other errors pass.
    """

    def __init__(self):
        super().__init__()
        self.directories: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not record.getMessage().startswith("Task exception was never retrieved"):
            return True
        return not any(f'"{directory}/"' in str(exc) for directory in self.directories)


_FAILED_READS = _FailedReads()


def restore_pytree(directory: Path, like: Any) -> Any:
    """Restore an orbax pytree shaped like ``like`` (arrays or ShapeDtypeStructs).

    The abandoned-read reports of a failed restore are dropped; the filters
    stay installed after a failure, since those reports arrive late.
    """
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), like
    )
    ckptr = _checkpointer()
    directory = Path(directory).absolute()
    previous = _silence_abandoned_reads()
    try:
        restored = ckptr.restore(directory, abstract)
    except Exception:
        _FAILED_READS.directories.update({str(directory), str(directory.resolve())})
        if _FAILED_READS not in logging.getLogger("asyncio").filters:
            logging.getLogger("asyncio").addFilter(_FAILED_READS)
        raise
    if previous is not None and getattr(sys.unraisablehook, "_drops_abandoned_reads", False):
        sys.unraisablehook = previous  # nothing failed: nothing to drop
    return restored


@contextlib.contextmanager
def _quiet_absl(level: int = logging.ERROR):
    """Hold back absl's records below ``level`` within the block (orbax logs a warning per unreadable metadata
    item, and an error per worker thread of a failed save, which raises it anyway)."""
    logger = logging.getLogger("absl")
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def stored_arrays(directory: Path) -> dict[str, Any]:
    """``{dotted name: metadata with .shape and .dtype}`` of the arrays in an orbax directory.

    Empty when the directory's metadata does not describe its arrays (then
    only a restore can tell what is wrong).

    Raises:
        CheckpointError: unreadable metadata.
    """
    try:
        with _quiet_absl():
            metadata = _checkpointer().metadata(Path(directory).absolute())
    except Exception as err:  # noqa: BLE001 - orbax raises many types
        raise CheckpointError(f"Could not read the array metadata at {directory}: {err}") from err
    tree = getattr(metadata, "item_metadata", metadata)
    if tree is None:
        return {}
    return {name: leaf for name, leaf in flatten_params(tree) if hasattr(leaf, "shape") and hasattr(leaf, "dtype")}


def array_mismatches(like: Any, stored: dict[str, Any]) -> list[str]:
    """Each parameter whose presence, shape or dtype differs between ``like`` and ``stored``."""
    expected = dict(flatten_params(like))
    problems = []
    for name, leaf in expected.items():
        found = stored.get(name)
        if found is None:
            problems.append(f"{name}: the config expects shape {list(leaf.shape)}, the weights do not hold it")
        elif tuple(found.shape) != tuple(leaf.shape) or np.dtype(found.dtype) != np.dtype(leaf.dtype):
            problems.append(f"{name}: the config expects {list(leaf.shape)} {np.dtype(leaf.dtype)}, "
                            f"the weights hold {list(found.shape)} {np.dtype(found.dtype)}")
    problems += [f"{name}: the weights hold {list(found.shape)}, the config has no such parameter"
                 for name, found in stored.items() if name not in expected]
    return problems


def _summary(problems: list[str]) -> str:
    more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    return "; ".join(problems[:_SHOWN]) + more


def model_path(path) -> Path:
    """``path`` as a ``Path``: ConfigError for anything but a non-empty ``str``/``os.PathLike`` directory name."""
    return as_path(path, expected="a non-empty str or os.PathLike directory name for the saved model")


def _record_file(path: Path) -> Path:
    """The file holding a saved model's record: ``worldloom.json`` (version 3), else ``config.json`` (1 and 2)."""
    record = path / RECORD_FILE
    return record if os.path.lexists(record) else path / CONFIG_FILE


def _stored_record(path) -> dict | None:
    """The record at ``path`` as stored, unchecked; None when there is none that reads as a mapping."""
    return read_json_object(_record_file(Path(path)))


def is_saved_model(path) -> bool:
    """Whether ``path`` is a directory holding a worldloom model's record (``worldloom.json``, or an older
    ``config.json``)."""
    meta = _stored_record(path)
    return meta is not None and meta.get("format") == FORMAT


def record_info(path) -> Any:
    """``info`` of the saved model at ``path`` as stored (None when absent or unreadable); unchecked."""
    meta = _stored_record(path)
    return None if meta is None else meta.get("info")


def _check_target(path: Path, overwrite: bool) -> None:
    """Refuse to replace anything but a saved model or an empty directory, unless ``overwrite``."""
    if flag("overwrite", overwrite) or not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink():
        entries = sorted(os.listdir(path))
        if not entries or is_saved_model(path):
            return
        shown = ", ".join(entries[:5]) + (f", ... ({len(entries)} entries)" if len(entries) > 5 else "")
        found = f"a directory that is not a saved worldloom model (it holds {shown})"
    elif path.is_symlink():
        found = "a symbolic link"
    else:
        found = f"a file ({path.stat().st_size} bytes)"
    raise CheckpointError(f"Cannot save a model to {str(path)!r}: expected a new path, an empty directory or a "
                          f"saved model, got {found}. Nothing was written; pass overwrite=True to replace it, "
                          "or choose another path.")


def save_model(model, path, *, overwrite: bool = False, params: Any = None, info: dict | None = None) -> None:
    """Save ``model`` (a WorldModel) to directory ``path`` atomically.

    Args:
        model: The model (its config, family, preset and seed are saved).
        path: The directory to write: a new path, an empty directory or an
            earlier saved model (replaced in one step).
        overwrite: Also replace anything else at ``path`` (a file, a directory
            of other files).
        params: Params to save instead of ``model.params`` (same structure).
        info: Extra JSON facts stored as ``worldloom.json["info"]``.

    Raises:
        CheckpointError: ``path`` holds something else and ``overwrite`` is
            False, or the write failed (naming ``path`` and the cause, such as
            ``No space left on device``; the model saved there before stays).
        ConfigError: ``path`` is not a directory name (``None``, a number, ``""``).
    """
    path = model_path(path)
    recover(path)
    _check_target(path, overwrite)
    params = jax.device_get(model.params if params is None else params)
    record = {
        "format": FORMAT,
        "version": VERSION,
        "family": model.family,
        "preset": model.preset,
        "seed": model.seed,
        "num_parameters": int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params))),
        "weights_sha256": params_sha256(params),
    }
    if info is not None:
        record["info"] = info
    config = {"model_type": model.family, **model.config.to_dict()}

    def fill(tmp: Path) -> None:
        save_pytree(params, tmp / WEIGHTS_DIR)
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2))
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))

    save_directory(path, fill, format=FORMAT, version=VERSION, what="model")


TRAINING_CHECKPOINT = (
    "is a training checkpoint (a Trainer's train state), not a saved model: resume training from it with "
    "Trainer(model, config, resume_from=path). A loadable model is what save_pretrained() writes; "
    "CheckpointCallback(save_best=True) keeps one in its save_dir/best.")


def is_training_checkpoint(path) -> bool:
    """Whether ``path`` holds a Trainer checkpoint (``worldloom.training._checkpoint``'s layout)."""
    return (Path(path) / "meta.json").is_file() and (Path(path) / "state").is_dir()


def read_meta(path) -> dict:
    """The record of a saved model directory, its config under ``"config"`` (as version 2 stored them).

    The JSON files are first checked against the manifest (so a hand edit is
    named, not read).

    Raises:
        CheckpointError: no saved model there, or a missing, damaged or edited ``worldloom.json``/``config.json``,
            or a record field of the wrong type (named, with what was expected and what was found).
        ConfigError: ``path`` is not a directory name.
    """
    path = model_path(path)
    if not path.is_dir():
        raise CheckpointError(f"No saved model at {str(path)!r}: expected a directory written by save_pretrained().")
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        if is_training_checkpoint(path):
            raise CheckpointError(f"{str(path)!r} {TRAINING_CHECKPOINT}")
        raise CheckpointError(f"{str(path)!r} has no {CONFIG_FILE}; expected a directory written by save_pretrained().")
    record_file = _record_file(path)
    legacy = record_file == config_file  # versions 1 and 2: the record and the config in config.json
    meta = _read_json(record_file, "a saved model's record")
    config = None if legacy else _read_json(config_file, "a saved model's config")
    manifest = _manifest(path)
    if manifest is not None:
        check_saved_files(path, manifest, "saved model", names=(CONFIG_FILE,) if legacy else (CONFIG_FILE, RECORD_FILE))
    if legacy and isinstance(meta, dict) and "format" not in meta and "model_type" in meta:
        raise CheckpointError(f"{str(path)!r} has no {RECORD_FILE}: expected it beside {CONFIG_FILE} (the model's "
                              "format, seed and checksums); the saved model is incomplete.")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{record_file} is not a worldloom model's record (format {FORMAT!r} expected).")
    version = meta.get("version")
    if not _is_int(version):
        raise CheckpointError(f"{record_file}: version: expected an integer format version "
                              f"({', '.join(map(str, READS))}), got {_shown(version)}.")
    if version not in READS or (version >= 3) == legacy:
        newer = " (a newer worldloom wrote it: upgrade to read it)" if isinstance(version, int) and version > VERSION \
            else ""
        raise CheckpointError(f"{record_file}: a saved model of format version {version!r}{newer}: this worldloom "
                              f"reads versions {', '.join(map(str, READS))} (3 in {RECORD_FILE}, 1 and 2 in "
                              f"{CONFIG_FILE}).")
    if version >= 2 and manifest is None:
        raise CheckpointError(f"{str(path)!r} has no {MANIFEST_FILE}: expected it beside a version {version} "
                              f"{record_file.name}, listing the checksum of every file; the saved model is incomplete.")
    _check_record_fields(meta, record_file)
    if version >= 3:
        if not isinstance(config, dict):
            raise CheckpointError(f"{config_file}: expected the saved config as a mapping of fields, got "
                                  f"{type(config).__name__}.")
        config = dict(config)
        if config.pop("model_type", meta.get("family")) != meta.get("family"):
            raise CheckpointError(f"{config_file} is a config of another family than the model's "
                                  f"{meta.get('family')!r} ({RECORD_FILE}); the saved model is inconsistent.")
        meta["config"] = config
    for key in ("family", "config", "weights_sha256"):
        if key not in meta:
            raise CheckpointError(f"{record_file} lacks {key!r}; the saved model is corrupt.")
    return meta


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_SHA256 = re.compile(r"[0-9a-f]{64}")
# The record's fields read on load, when present (a missing required one is reported by read_meta), and what each
# must be.
_RECORD_FIELDS = {
    "family": (lambda v: isinstance(v, str) and bool(v), "a model family name (a non-empty string such as "
                                                         "'dreamerv3')"),
    "preset": (lambda v: v is None or isinstance(v, str), "a preset name (a string such as 'size12m') or null"),
    "seed": (_is_int, "an integer"),
    "num_parameters": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "weights_sha256": (lambda v: isinstance(v, str) and _SHA256.fullmatch(v) is not None,
                       "a SHA-256 (64 lowercase hex digits)"),
}


def _shown(value) -> str:
    text = repr(value)
    return f"{text if len(text) <= 80 else text[:77] + '...'} ({type(value).__name__})"


def _check_record_fields(meta: dict, record_file: Path) -> None:
    """CheckpointError naming the file, the field, what it must be and what it holds, for the first field of the
    wrong type."""
    for name, (valid, expected) in _RECORD_FIELDS.items():
        if name in meta and not valid(meta[name]):
            raise CheckpointError(f"{record_file}: {name}: expected {expected}, got {_shown(meta[name])}; the saved "
                                  "model's record is corrupt.")


def _read_json(file: Path, what: str) -> Any:
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file} is not valid JSON ({err}); the saved model is corrupt.") from err
    except OSError as err:
        raise CheckpointError(f"Cannot read {str(file)!r}: expected {what}, got {err}.") from err


def _manifest(path: Path) -> dict | None:
    """The checked manifest of a saved model; None for version 1 (none written)."""
    if not os.path.lexists(path / MANIFEST_FILE):
        return None
    return read_manifest(path, FORMAT, READS[1:], "saved model")


def check_files(directory: Path, manifest: dict | None, what: str) -> None:
    """CheckpointError naming the damaged files when ``directory`` does not match ``manifest`` (None: unchecked)."""
    if not manifest:
        return
    problems = manifest_problems(directory, manifest)
    if problems:
        raise CheckpointError(f"The {what} at {directory} are damaged: {_summary(problems)}; expected the files "
                              "as they were written.")


def load_model(path, *, device=None, seed=None, **overrides):
    """Restore a model saved by :func:`save_model`, bit for bit.

    A load that meets the directory being replaced by a new save reads the new one.

    Raises:
        CheckpointError: missing directory, missing/corrupt/edited config or
            weights, a config field missing, a format version this worldloom
            does not read, or a ``config.json`` whose shapes do not match the weights.
        ConfigError: ``overrides`` that change the parameter shapes (named,
            with the expected and stored shapes); ``path`` not a directory name.
    """
    return load_consistent(model_path(path), lambda where: _load_model(where, device, seed, overrides))


def _load_model(path: Path, device, seed, overrides: dict):
    from worldloom.core import registry

    recover(path)
    meta = read_meta(path)
    families = registry.families()
    family = families.get(meta["family"])
    if family is None:
        raise CheckpointError(f"{path} holds a model of unknown family {meta['family']!r}; known: {sorted(families)}.")
    saved = saved_config(family.config_cls, meta["config"], path / CONFIG_FILE)
    config = saved.replace(**overrides) if overrides else saved
    weights = path / WEIGHTS_DIR
    if not weights.is_dir():
        raise CheckpointError(f"{path} has no {WEIGHTS_DIR}/ directory; the saved model is incomplete.")
    manifest = _manifest(path)
    if manifest is not None:
        check_saved_files(path, manifest, "saved model")
    else:
        check_files(weights, meta.get("weights_files"), "weights")
    like = jax.eval_shape(lambda: family.init_params(config, jax.random.PRNGKey(0)))
    stored = stored_arrays(weights)
    mismatches = array_mismatches(like, stored) if stored else []
    if mismatches:
        before, after = saved.to_dict(), config.to_dict()
        changed = [f"{name}={after[name]!r} (saved: {before[name]!r})" for name in after
                   if before.get(name) != after[name]]
        if changed:
            raise ConfigError(f"Overrides {', '.join(changed)} do not fit the weights saved at {path}: "
                              f"{_summary(mismatches)}. Load it without them, or create a new model from a preset.")
        raise CheckpointError(f"{path / CONFIG_FILE} does not match the weights in {weights} (was the config "
                              f"edited?): {_summary(mismatches)}.")
    try:
        params = restore_pytree(weights, like)
    except Exception as err:  # noqa: BLE001 - orbax raises many types
        raise CheckpointError(f"Could not read the weights at {weights}: {err}") from err
    if params_sha256(params) != meta["weights_sha256"]:
        raise CheckpointError(f"The weights at {weights} do not match their checksum; the saved model is corrupt.")
    seed = meta.get("seed", 0) if seed is None else seed
    return family.build(config, params=params, seed=seed, device=device, preset=meta.get("preset"))
