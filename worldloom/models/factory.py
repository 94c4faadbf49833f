"""``create_world_model``, ``list_models`` and ``get_model_info``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from worldloom.core import registry
from worldloom.core.errors import ConfigError
from worldloom.models.base import WorldModel
from worldloom.models.checkpoint import load_model

# Observation/action spaces at which presets are sized in the references.
REFERENCE_SPACES = {
    "dreamerv3": dict(obs_shape=(64, 64, 3), action_dim=18, action_type="discrete"),
    "tdmpc2": dict(obs_shape=(24,), action_dim=6),
}


def _looks_like_path(name: str) -> bool:
    return os.sep in name or name.startswith(".") or Path(name).exists()


def create_world_model(
    model: str | os.PathLike,
    obs_shape: Sequence[int] | None = None,
    action_dim: int | None = None,
    *,
    device: str = "auto",
    seed: int = 0,
    **overrides: Any,
) -> WorldModel:
    """Create a world model from a preset, an alias or a saved directory.

    Args:
        model: ``"dreamerv3:size12m"``, ``"tdmpc2:5m"``, an alias (``"dreamer"``,
            ``"tdmpc-small"``, ...) or the path of a ``save_pretrained`` directory.
        obs_shape: Observation shape, e.g. ``(4,)`` or ``(64, 64, 3)``; required
            for a new model.
        action_dim: Action size (number of actions when discrete); required for
            a new model.
        device: ``"cpu"``, ``"cuda"``/``"gpu"``, ``"tpu"`` or ``"auto"``.
        seed: Seeds the initial params and the model's RNG.
        **overrides: Any config field, e.g. ``action_type="discrete"``, ``deter=256``.

    Raises:
        UnknownModelError: unknown preset; the message lists those available.
        ConfigError: unknown or invalid override, or missing obs_shape/action_dim.
        CheckpointError: a saved directory that is missing or corrupt.
        DeviceError: a device that is not present.
    """
    name = os.fspath(model)
    if _looks_like_path(name) and not (":" in name and not Path(name).exists()):
        extra = dict(overrides)
        if obs_shape is not None:
            extra["obs_shape"] = tuple(obs_shape)
        if action_dim is not None:
            extra["action_dim"] = int(action_dim)
        return load_model(name, device=device, seed=None, **extra)
    family, preset = registry.resolve(name)
    if obs_shape is None or action_dim is None:
        raise ConfigError(
            f"create_world_model({name!r}) needs obs_shape= and action_dim= for a new model, "
            f"got obs_shape={obs_shape!r}, action_dim={action_dim!r}."
        )
    values = dict(family.presets[preset])
    values.update(obs_shape=tuple(int(d) for d in np.atleast_1d(obs_shape)), action_dim=int(action_dim))
    unknown = [key for key in overrides if key not in family.config_cls.field_names()]
    if unknown:  # names the field and close matches
        family.config_cls.__new__(family.config_cls).replace(**{unknown[0]: overrides[unknown[0]]})
    config = family.config_cls(**{**values, **overrides})  # validated once, overrides applied
    return family.build(config, seed=int(seed), device=device, preset=preset)


def list_models(verbose: bool = False) -> list:
    """Available presets.

    Args:
        verbose: If True, return one dict per preset with its family, sizes,
            aliases, description and parameter count at the reference space.

    Returns:
        ``["dreamerv3:size1m", ...]`` or a list of dicts.
    """
    names = registry.preset_names()
    if not verbose:
        return names
    return [get_model_info(name) for name in names]


def get_model_info(name: str, obs_shape: Sequence[int] | None = None,
                   action_dim: int | None = None) -> dict:
    """Facts about a preset: family, config, aliases and parameter count.

    The count is for ``obs_shape``/``action_dim`` when given, else for the
    family's reference space (DreamerV3: 64x64x3 image, 18 discrete actions;
    TD-MPC2: 24-dim state, 6-dim action).
    """
    family, preset = registry.resolve(name)
    space = dict(REFERENCE_SPACES.get(family.name, {}))
    if obs_shape is not None:
        space["obs_shape"] = tuple(obs_shape)
    if action_dim is not None:
        space["action_dim"] = int(action_dim)
    config = family.config_cls(**{**family.presets[preset], **space})
    shapes = jax.eval_shape(lambda: family.init_params(config, jax.random.PRNGKey(0)))
    count = int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree_util.tree_leaves(shapes)))
    full = f"{family.name}:{preset}"
    return {
        "name": full,
        "family": family.name,
        "preset": preset,
        "aliases": sorted(a for a, t in registry.aliases().items() if t == full),
        "description": family.description,
        "config": config.to_dict(),
        "num_parameters": count,
        "space": {k: (list(v) if isinstance(v, tuple) else v) for k, v in space.items()},
    }
