"""``create_world_model``, ``list_models``, ``get_model_info`` and the original's ``Auto*`` names.

``AutoWorldModel``, ``AutoConfig``, ``MODEL_ALIASES`` and ``MODEL_CATALOG``
are thin lookups over the one registry (:mod:`worldloom.core.registry`).
"""

from __future__ import annotations

import functools
import numbers
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from worldloom.core import registry
from worldloom.core.errors import CheckpointError, ConfigError, UnknownModelError
from worldloom.models.base import WorldModel
from worldloom.models.checkpoint import TRAINING_CHECKPOINT, is_training_checkpoint, load_model, read_meta

# Observation/action spaces at which presets are sized in the references.
REFERENCE_SPACES = {
    "dreamerv3": dict(obs_shape=(64, 64, 3), action_dim=18, action_type="discrete"),
    "tdmpc2": dict(obs_shape=(24,), action_dim=6),
}


def names_saved_model(model: str | os.PathLike) -> bool:
    """Whether :func:`create_world_model` reads ``model`` as the path of a saved model.

    One rule, the same in every working directory: a ``PathLike`` is a path; a
    string that names a preset or an alias is that preset, whatever the
    working directory holds; any other string is a path when it looks like
    one: it starts with ``./``, ``../``, ``/`` or ``~``, holds a path
    separator, or is an existing directory holding ``config.json``.
    Anything else is an unknown model name.
    """
    if isinstance(model, os.PathLike):
        return True
    name = str(model).strip()
    if not name or _is_preset(name):
        return False
    separators = tuple(sep for sep in (os.sep, os.altsep) if sep)
    if name.startswith(("~", ".")) and (name in (".", "..", "~") or name.lstrip(".~").startswith(separators)):
        return True
    return any(sep in name for sep in separators) or (Path(name) / "config.json").is_file()


def _is_preset(name: str) -> bool:
    try:
        registry.resolve(name)
    except UnknownModelError:
        return False
    return True


def _resolve_preset(name: str):
    """``(family, preset)`` of a preset name or alias; UnknownModelError otherwise."""
    try:
        return registry.resolve(name)
    except UnknownModelError as err:
        if is_training_checkpoint(name):
            raise UnknownModelError(f"{err} ({name!r} here {TRAINING_CHECKPOINT})") from err
        if Path(name).exists():
            raise UnknownModelError(f"{err} ({name!r} exists here but holds no config.json, so it is not read as "
                                    "a saved model.)") from err
        raise


def _model_name(model) -> str:
    """``model`` as a name or path string; ConfigError for another type or an empty name."""
    if not isinstance(model, (str, os.PathLike)):
        raise ConfigError(f"create_world_model: model must be a preset name, an alias or a path, "
                          f"got {type(model).__name__} {model!r}.")
    name = os.fspath(model)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"create_world_model: expected a preset name (e.g. 'dreamerv3:size12m'), an alias or "
                          f"the path of a saved model, got {name!r}.")
    return name


def create_world_model(
    model: str | os.PathLike,
    obs_shape: Sequence[int] | None = None,
    action_dim: int | None = None,
    device: str = "auto",
    *,
    seed: int | None = None,
    **overrides: Any,
) -> WorldModel:
    """Create a world model from a preset, an alias or a saved directory.

    Args:
        model: ``"dreamerv3:size12m"``, ``"tdmpc2:5m"``, an alias (``"dreamer"``,
            ``"tdmpc-small"``, ...) or the path of a ``save_pretrained`` directory.
            A preset or alias wins over a directory of the same name; a path
            must look like one (see :func:`names_saved_model`).
        obs_shape: Observation shape, e.g. ``(4,)`` or ``(64, 64, 3)``; required
            for a new model.
        action_dim: Action size (number of actions when discrete); required for
            a new model.
        device: ``"cpu"``, ``"cuda"``/``"gpu"``, ``"tpu"`` or ``"auto"``.
        seed: Seeds the initial params and the model's RNG (``None``: 0). For a
            saved directory it seeds the RNG alone (``None``: the saved seed).
        **overrides: Any config field, e.g. ``action_type="discrete"``, ``deter=256``.

    Raises:
        UnknownModelError: unknown preset; the message lists those available.
        ConfigError: unknown or invalid override, or missing obs_shape/action_dim.
        CheckpointError: a saved directory that is missing or corrupt.
        DeviceError: a device that is not present.
    """
    name = _model_name(model)
    if isinstance(obs_shape, numbers.Integral) and not isinstance(obs_shape, bool):
        obs_shape = (int(obs_shape),)
    elif isinstance(obs_shape, list):
        obs_shape = tuple(obs_shape)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise ConfigError(f"create_world_model: seed must be an int, got {type(seed).__name__} {seed!r}.")
    if names_saved_model(model):
        name = os.path.expanduser(name)
        extra = dict(overrides)
        if obs_shape is not None:
            extra["obs_shape"] = obs_shape
        if action_dim is not None:
            extra["action_dim"] = action_dim
        return load_model(name, device=device, seed=None if seed is None else int(seed), **extra)
    family, preset = _resolve_preset(name)
    if obs_shape is None or action_dim is None:
        raise ConfigError(
            f"create_world_model({name!r}) needs obs_shape= and action_dim= for a new model, "
            f"got obs_shape={obs_shape!r}, action_dim={action_dim!r}."
        )
    config = family.config_cls.from_size(preset, obs_shape=obs_shape, action_dim=action_dim, **overrides)
    return family.build(config, seed=0 if seed is None else int(seed), device=device, preset=preset)


def list_models(verbose: bool = False) -> list[str] | dict[str, dict]:
    """Available presets.

    Args:
        verbose: If True, return ``{name: info}`` with the original's keys
            (``"params"``, e.g. ``"8.9M"``, ``"type"``, ``"description"``) and
            everything :func:`get_model_info` gives.

    Returns:
        ``["dreamerv3:size1m", ...]``, or a dict keyed by those names.
    """
    names = registry.preset_names()
    if not verbose:
        return names
    return {name: MODEL_CATALOG[name] for name in names}


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
        "params": _short_count(count),
        "type": family.name,
        "name": full,
        "family": family.name,
        "preset": preset,
        "aliases": sorted(a for a, t in registry.aliases().items() if t == full),
        "description": family.description,
        "config": config.to_dict(),
        "num_parameters": count,
        "space": {k: (list(v) if isinstance(v, tuple) else v) for k, v in space.items()},
    }


def _short_count(count: int) -> str:
    """``8852675 -> "8.9M"``, ``571187 -> "571K"``."""
    if count >= 10**9:
        return f"{count / 10**9:.1f}B"
    if count >= 10**6:
        return f"{count / 10**6:.1f}M"
    return f"{count // 1000}K"


class _Catalog(Mapping):
    """``MODEL_CATALOG``: preset name -> :func:`get_model_info` at the reference space, computed on first use."""

    def __getitem__(self, name: str) -> dict:
        if name not in registry.preset_names():
            raise KeyError(name)
        return _info(name)

    def __iter__(self) -> Iterator[str]:
        return iter(registry.preset_names())

    def __len__(self) -> int:
        return len(registry.preset_names())


@functools.cache
def _info(name: str) -> dict:
    return get_model_info(name)


class _Aliases(Mapping):
    """``MODEL_ALIASES``: alias -> ``"family:preset"``, read from the registry."""

    def __getitem__(self, name: str) -> str:
        return registry.aliases()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(registry.aliases())

    def __len__(self) -> int:
        return len(registry.aliases())


MODEL_CATALOG: Mapping[str, dict] = _Catalog()
MODEL_ALIASES: Mapping[str, str] = _Aliases()


def get_config(model: str | os.PathLike, **fields: Any):
    """The config of a preset or alias (``fields`` on top) or of a saved model directory."""
    name = _model_name(model)
    if names_saved_model(model):
        name = os.path.expanduser(name)
        meta = read_meta(name)
        family = registry.families().get(meta["family"])
        if family is None:
            raise CheckpointError(f"{name} holds a model of unknown family {meta['family']!r}.")
        config = family.config_cls.from_dict(meta["config"])
        return config.replace(**fields) if fields else config
    family, preset = _resolve_preset(name)
    return family.config_cls.from_size(preset, **fields)


class AutoConfig:
    """The original's ``AutoConfig``: ``AutoConfig.from_pretrained("dreamerv3:size12m", obs_shape=..., ...)``."""

    _get_config = staticmethod(get_config)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **fields: Any):
        """The config of a preset, an alias or a saved model directory (see :func:`get_config`)."""
        return cls._get_config(name_or_path, **fields)


class AutoWorldModel:
    """The original's ``AutoWorldModel``: ``AutoWorldModel.from_pretrained(name_or_path, **kwargs)``."""

    _create = staticmethod(lambda name_or_path, **kwargs: create_world_model(name_or_path, **kwargs))
    _from_config = staticmethod(lambda config, **kwargs: build_from_config(config, **kwargs))

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> WorldModel:
        """Same as :func:`create_world_model`."""
        return cls._create(name_or_path, **kwargs)

    @classmethod
    def from_config(cls, config, **kwargs: Any) -> WorldModel:
        """A fresh model of ``config`` (a family config instance)."""
        return cls._from_config(config, **kwargs)


def build_from_config(config, *, seed: int = 0, device: str = "auto") -> WorldModel:
    """A fresh model for a config instance of a registered family."""
    for family in registry.families().values():
        if type(config) is family.config_cls or isinstance(config, family.config_cls):
            return family.build(config, seed=seed, device=device)
    raise ConfigError(f"build_from_config: expected a config of a registered family "
                      f"({', '.join(f.config_cls.__name__ for f in registry.families().values())}), "
                      f"got {type(config).__name__}.")
