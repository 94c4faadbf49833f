"""Saving and loading models: ``config.json`` plus orbax weights, written atomically.

Layout of a saved directory::

    config.json   {"format": "worldloom-model", "version": 1, "family", "preset",
                   "config", "seed", "num_parameters", "weights_sha256"}
    weights/      orbax StandardCheckpointer directory of the params pytree

The directory is assembled under a temporary name beside the target and
renamed into place, so a crash never leaves a half-written model. The weights'
SHA-256 is checked on load, so a corrupt file is an error, never a silently
different model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import jax
import numpy as np

from worldloom.core.errors import CheckpointError, ConfigError
from worldloom.models.base import flatten_params

FORMAT = "worldloom-model"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_DIR = "weights"


def params_sha256(params: Any) -> str:
    """SHA-256 over every leaf's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name, leaf in flatten_params(params):
        arr = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{name}|{arr.dtype}|{arr.shape}".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def save_pytree(tree: Any, directory: Path) -> None:
    """Write ``tree`` with orbax to ``directory`` (which must not exist)."""
    ckptr = _checkpointer()
    ckptr.save(Path(directory).absolute(), jax.device_get(tree))
    ckptr.wait_until_finished()


def restore_pytree(directory: Path, like: Any) -> Any:
    """Restore an orbax pytree shaped like ``like`` (arrays or ShapeDtypeStructs)."""
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), like
    )
    ckptr = _checkpointer()
    return ckptr.restore(Path(directory).absolute(), abstract)


def atomic_directory(path: Path, fill) -> None:
    """Build a directory with ``fill(tmp_dir)`` then rename it to ``path``.

    An existing ``path`` is replaced only after the new one is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        fill(tmp)
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_text(text)
    os.replace(tmp, path)


def save_model(model, path) -> None:
    """Save ``model`` (a WorldModel) to directory ``path`` atomically."""
    params = jax.device_get(model.params)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "family": model.family,
        "preset": model.preset,
        "config": model.config.to_dict(),
        "seed": model.seed,
        "num_parameters": model.num_parameters(),
        "weights_sha256": params_sha256(params),
    }

    def fill(tmp: Path) -> None:
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        save_pytree(params, tmp / WEIGHTS_DIR)

    atomic_directory(Path(path), fill)


def read_meta(path) -> dict:
    """Read and check ``config.json`` of a saved model directory."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"No saved model at {str(path)!r}: expected a directory written by save_pretrained().")
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise CheckpointError(f"{str(path)!r} has no {CONFIG_FILE}; expected a directory written by save_pretrained().")
    try:
        meta = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_file} is not valid JSON ({err}); the saved model is corrupt.") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{config_file} is not a worldloom model config (format {FORMAT!r} expected).")
    for key in ("family", "config", "weights_sha256"):
        if key not in meta:
            raise CheckpointError(f"{config_file} lacks {key!r}; the saved model is corrupt.")
    return meta


def load_model(path, *, device=None, seed=None, **overrides):
    """Restore a model saved by :func:`save_model`, bit for bit.

    Raises:
        CheckpointError: missing directory, missing/corrupt config or weights.
        ConfigError: ``overrides`` that change the parameter shapes.
    """
    from worldloom.core import registry

    path = Path(path)
    meta = read_meta(path)
    families = registry.families()
    family = families.get(meta["family"])
    if family is None:
        raise CheckpointError(f"{path} holds a model of unknown family {meta['family']!r}; known: {sorted(families)}.")
    config = family.config_cls.from_dict(meta["config"])
    if overrides:
        config = config.replace(**overrides)
    weights = path / WEIGHTS_DIR
    if not weights.is_dir():
        raise CheckpointError(f"{path} has no {WEIGHTS_DIR}/ directory; the saved model is incomplete.")
    like = jax.eval_shape(lambda: family.init_params(config, jax.random.PRNGKey(0)))
    try:
        params = restore_pytree(weights, like)
    except Exception as err:  # noqa: BLE001 - orbax raises many types
        if overrides:
            raise ConfigError(f"Overrides {sorted(overrides)} do not fit the weights saved at {path}: {err}") from err
        raise CheckpointError(f"Could not read the weights at {weights}: {err}") from err
    if params_sha256(params) != meta["weights_sha256"]:
        raise CheckpointError(f"The weights at {weights} do not match their checksum; the saved model is corrupt.")
    seed = meta.get("seed", 0) if seed is None else seed
    return family.build(config, params=params, seed=seed, device=device, preset=meta.get("preset"))
