"""The factory's lookups with image shapes channels first: ``list_models``, ``get_model_info``,
``get_config``, ``AutoConfig``, ``AutoWorldModel``, ``MODEL_CATALOG`` and ``MODEL_ALIASES``."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import worldloom
from worldloom.core import registry
from worldloom.models.factory import MODEL_ALIASES
from worldloom_torch_compat._names import preset_name
from worldloom_torch_compat.model import (
    WorldModel,
    channels_first,
    channels_last,
    create_world_model,
    from_config,
)


def get_model_info(name: str, obs_shape: Sequence[int] | None = None, action_dim: int | None = None) -> dict:
    """As :func:`worldloom.get_model_info`; ``obs_shape`` in and ``space["obs_shape"]`` out are ``(C, H, W)``
    for images (``config`` stays the JAX model's, channels last). Also the original's ``"model_id"``
    (the preset's full name), ``"default_obs"`` and, when ``name`` is an alias, ``"alias"``."""
    info = worldloom.get_model_info(preset_name(name), channels_last(obs_shape), action_dim)
    info = _source_keys(info)
    if str(name).strip().lower() in MODEL_ALIASES:
        info["alias"] = str(name).strip().lower()
    return info


def _source_keys(info: dict) -> dict:
    """``info`` with channels-first spaces and the original's ``model_id`` and ``default_obs`` keys."""
    space = dict(info.get("space", {}))
    if "obs_shape" in space:
        space["obs_shape"] = list(channels_first(space["obs_shape"]))
    return {**info, "space": space, "model_id": info["name"], "default_obs": tuple(space.get("obs_shape", ()))}


class _Catalog(Mapping):
    """``MODEL_CATALOG`` with channels-first spaces."""

    def __getitem__(self, name: str) -> dict:
        return _source_keys(worldloom.MODEL_CATALOG[name])

    def __iter__(self) -> Iterator[str]:
        return iter(worldloom.MODEL_CATALOG)

    def __len__(self) -> int:
        return len(worldloom.MODEL_CATALOG)


MODEL_CATALOG: Mapping[str, dict] = _Catalog()


def list_models(verbose: bool = False) -> list[str] | dict[str, dict]:
    """As :func:`worldloom.list_models`; verbose entries have channels-first spaces."""
    names = worldloom.list_models()
    return {name: MODEL_CATALOG[name] for name in names} if verbose else names


def get_config(model: str | os.PathLike, **fields: Any):
    """The torch-face config (images channels first) of a preset, an alias or a saved model directory,
    with ``fields`` (any of the config's names, ``obs_shape`` channels first) set on top; for
    ``"type:size"`` of a registered model type, its config class's ``from_size(size, **fields)``."""
    from worldloom_torch_compat._names import is_saved_path
    from worldloom_torch_compat.core.registry import registered_config, registered_type

    if registered_type(model) is not None and not is_saved_path(model):  # a saved directory of that name wins
        return registered_config(model, **fields)
    config = worldloom.get_config(preset_name(model))
    family = next(f for f in registry.families().values() if isinstance(config, f.config_cls))
    torch_cls = WorldModel.family_classes[family.name].config_class
    config = torch_cls(**{**config.to_dict(), "obs_shape": channels_first(config.obs_shape)})
    return config.replace(**fields) if fields else config


class AutoConfig(worldloom.AutoConfig):
    """The original's ``AutoConfig`` (torch face): configs with image shapes channels first."""

    _get_config = staticmethod(get_config)


class AutoWorldModel(worldloom.AutoWorldModel):
    """The original's ``AutoWorldModel`` (torch face): ``torch.nn.Module`` world models."""

    _create = staticmethod(create_world_model)
    _from_config = staticmethod(from_config)


__all__ = ["MODEL_ALIASES", "MODEL_CATALOG", "AutoConfig", "AutoWorldModel", "get_config", "get_model_info",
           "list_models"]
