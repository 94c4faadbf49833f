"""Train-state checkpoints: one directory per step, written atomically with orbax.

Layout::

    save_dir/
      step_00010000/
        meta.json   {"format": "worldloom-train-state", "version", "step", "family",
                     "preset", "model_config", "training_config", "sampler",
                     "state_sha256"}
        state/      orbax directory of {"train_state": ..., "key": ...}

Each step directory is assembled under a temporary name and renamed into
place, so a crash never leaves a half-written checkpoint; only directories
named ``step_<digits>`` with a ``meta.json`` count as checkpoints.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import jax

from worldloom.core.errors import CheckpointError
from worldloom.models.checkpoint import atomic_directory, params_sha256, restore_pytree, save_pytree

FORMAT = "worldloom-train-state"
VERSION = 1
META_FILE = "meta.json"
STATE_DIR = "state"
_NAME = re.compile(r"^step_(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step_{int(step):08d}"


def list_checkpoints(directory) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``directory`` as ``[(step, path), ...]``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        match = _NAME.match(child.name)
        if match and (child / META_FILE).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def find_checkpoint(path) -> Path:
    """``path`` itself if it is a checkpoint, else the newest checkpoint inside it.

    Raises:
        CheckpointError: neither.
    """
    path = Path(path)
    if (path / META_FILE).is_file():
        return path
    found = list_checkpoints(path)
    if not found:
        raise CheckpointError(f"No training checkpoint at {str(path)!r}: expected a directory written by "
                              "CheckpointCallback (step_<N>/meta.json) or one such step directory.")
    return found[-1][1]


def save_checkpoint(directory, step: int, tree: Any, meta: dict, keep_last: int | None = None) -> Path:
    """Write ``tree`` (a pytree of arrays) and ``meta`` as ``directory/step_<step>``.

    Keeps only the newest ``keep_last`` checkpoints of ``directory`` when given.
    """
    host = jax.device_get(tree)
    meta = dict(meta, format=FORMAT, version=VERSION, step=int(step), state_sha256=params_sha256(host))
    target = Path(directory) / checkpoint_name(step)

    def fill(tmp: Path) -> None:
        save_pytree(host, tmp / STATE_DIR)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))

    atomic_directory(target, fill)
    if keep_last:
        for _, old in list_checkpoints(directory)[:-int(keep_last)]:
            shutil.rmtree(old, ignore_errors=True)
    return target


def read_meta(path) -> dict:
    """The checked ``meta.json`` of a checkpoint directory."""
    meta_file = Path(path) / META_FILE
    try:
        meta = json.loads(meta_file.read_text())
    except FileNotFoundError as err:
        raise CheckpointError(f"{str(path)!r} has no {META_FILE}; not a training checkpoint.") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{meta_file} is not valid JSON ({err}); the checkpoint is corrupt.") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "step" not in meta:
        raise CheckpointError(f"{meta_file} is not a worldloom training checkpoint (format {FORMAT!r} expected).")
    return meta


def load_state(path, like: Any, meta: dict) -> Any:
    """Restore the tree (NumPy leaves) of checkpoint ``path`` shaped like ``like``.

    Args:
        path: A step directory (see :func:`find_checkpoint`).
        like: Arrays or ``ShapeDtypeStruct``s of the expected structure.
        meta: Its :func:`read_meta`, whose checksum the restored tree must match.

    Raises:
        CheckpointError: unreadable, mismatched or corrupt state.
    """
    path = Path(path)
    try:
        tree = restore_pytree(path / STATE_DIR, like)
    except Exception as err:  # noqa: BLE001 - orbax raises many types
        raise CheckpointError(f"Could not restore the train state at {path / STATE_DIR} into the expected "
                              f"structure (a different model or optimiser?): {err}") from err
    if params_sha256(tree) != meta.get("state_sha256"):
        raise CheckpointError(f"The train state at {path / STATE_DIR} does not match its checksum; "
                              "the checkpoint is corrupt.")
    return tree
