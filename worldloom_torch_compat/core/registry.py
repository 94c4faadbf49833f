"""The original's registry names at ``worldloom.core.registry``, torch face.

``WorldModelRegistry``, ``AutoWorldModel`` and ``AutoConfig`` are lookups over
worldloom's one registry (:mod:`worldloom.core.registry`). A user's own torch
model class joins them with ``@WorldModelRegistry.register("mymodel",
MyConfig)``, as in the original: ``create_world_model("mymodel:small")`` then
builds ``MyModel(MyConfig.from_size("small", ...))``. ``TYPE_ALIASES`` maps
the original's type names to its canonical ones (``"dreamerv3"`` and
``"dreamer"`` -> ``"dreamer"``).

Example:
    >>> from worldloom_torch_compat.core.registry import WorldModelRegistry
    >>> sorted(WorldModelRegistry.list_models())
    ['dreamer', 'tdmpc2']
"""

from __future__ import annotations

import os
from typing import Any

from worldloom.core import registry
from worldloom.core.errors import ConfigError
from worldloom_torch_compat.info import AutoConfig, AutoWorldModel

TYPE_ALIASES = {"dreamerv3": "dreamer", "dreamer": "dreamer", "tdmpc2": "tdmpc2", "tdmpc": "tdmpc2"}
"""The original's model type names -> its canonical type (``config.model_type``)."""

_FAMILIES = {"dreamer": "dreamerv3", "tdmpc2": "tdmpc2"}  # canonical type -> worldloom family


def registered_type(name) -> str | None:
    """The user-registered model type that ``name`` (``"mymodel:small"`` or ``"mymodel"``) names, else None."""
    if not isinstance(name, str):
        return None
    key = name.strip().lower().partition(":")[0]
    return key if key not in _FAMILIES and key in WorldModelRegistry._model_registry else None


def registered_config(name: str, **fields: Any):
    """The config of ``"type:size"`` (or ``"type"``) of a user-registered type: its config class's
    ``from_size(size, **fields)``, or ``config_class(**fields)``."""
    key = registered_type(name)
    config_class = WorldModelRegistry._config_registry.get(key)
    if config_class is None:
        raise ConfigError(f"Model type {key!r} was registered without a config class: register it with "
                          f"WorldModelRegistry.register({key!r}, config_class=...) to build it from {name!r}.")
    size = name.strip().partition(":")[2]
    if size and hasattr(config_class, "from_size"):
        return config_class.from_size(size, **fields)
    if size and "model_name" in getattr(config_class, "__dataclass_fields__", {}):
        fields = {"model_name": size, **fields}  # as the source: config_class(model_name=size, ...)
    return config_class(**fields)


def build_registered(name: str, obs_shape=None, action_dim=None, device=None, **fields: Any):
    """``model_class(config)`` for a name of a user-registered type (see :meth:`WorldModelRegistry.register`),
    on ``device``."""
    import torch

    if obs_shape is not None:
        fields["obs_shape"] = tuple(obs_shape)
    if action_dim is not None:
        fields["action_dim"] = action_dim
    model = WorldModelRegistry._model_registry[registered_type(name)](registered_config(name, **fields))
    if device is not None and str(device) != "auto" and hasattr(model, "to"):
        model = model.to(torch.device(device))
    return model


class _TypeTable(dict):
    """``{canonical type: class}``, filled from the torch face's family classes when read."""

    def __init__(self, attribute: str | None):
        super().__init__()
        self._attribute = attribute
        self._filled = False

    def _fill(self) -> None:
        if not self._filled:
            from worldloom_torch_compat.model import WorldModel

            self._filled = True
            for model_type, family in _FAMILIES.items():
                cls = WorldModel.family_classes[family]
                dict.__setitem__(self, model_type, getattr(cls, self._attribute) if self._attribute else cls)

    def get(self, key, default=None):
        self._fill()
        return super().get(key, default)

    def __getitem__(self, key):
        self._fill()
        return super().__getitem__(key)

    def __contains__(self, key) -> bool:
        self._fill()
        return super().__contains__(key)

    def __iter__(self):
        self._fill()
        return super().__iter__()

    def __len__(self) -> int:
        self._fill()
        return super().__len__()

    def keys(self):
        self._fill()
        return super().keys()

    def items(self):
        self._fill()
        return super().items()

    def values(self):
        self._fill()
        return super().values()


class WorldModelRegistry:
    """The original's registry class: ``register``, ``from_pretrained``, ``list_models``, ``get_config``.

    ``_model_registry`` and ``_config_registry`` map the original's canonical
    types (``"dreamer"``, ``"tdmpc2"``, and those a user registers) to their
    torch classes.
    """

    _model_registry: dict[str, type] = _TypeTable(None)
    _config_registry: dict[str, type] = _TypeTable("config_class")

    @classmethod
    def register(cls, model_type: str, config_class: type | None = None):
        """Decorator: register a user's own ``torch.nn.Module`` world model under ``model_type``.

        ``create_world_model(f"{model_type}:{size}", obs_shape=..., ...)`` and
        :meth:`from_pretrained` then build ``model_class(config)`` with
        ``config = config_class.from_size(size, **fields)`` (for a class
        without ``from_size``, ``config_class(model_name=size, **fields)`` when
        it has a ``model_name`` field, else ``config_class(**fields)``), and
        move it to ``device``. Such a model runs in torch: train it with a torch
        optimiser over its own loss (``Trainer`` trains worldloom's families).

        Example::

            @WorldModelRegistry.register("mymodel", MyConfig)
            class MyModel(torch.nn.Module): ...

        Raises:
            ConfigError: ``model_type`` is not a non-empty name without ``:``, or names one of worldloom's
                families or the original's type names (a registration cannot replace them).
        """
        if not isinstance(model_type, str) or not model_type.strip() or ":" in model_type:
            raise ConfigError(f"WorldModelRegistry.register: expected a model type name such as 'mymodel' "
                              f"(no ':'), got {model_type!r}.")
        key = model_type.strip().lower()
        builtin = set(TYPE_ALIASES) | set(registry.families()) | set(registry.aliases())
        if key in builtin:
            raise ConfigError(f"WorldModelRegistry.register: {model_type!r} is one of worldloom's model types "
                              f"({', '.join(sorted(builtin))}); register your model under another name.")

        def decorator(model_class: type) -> type:
            if not isinstance(model_class, type):
                raise ConfigError(f"WorldModelRegistry.register({model_type!r}): expected a model class, got "
                                  f"{type(model_class).__name__}.")
            dict.__setitem__(cls._model_registry, key, model_class)
            if config_class is not None:
                dict.__setitem__(cls._config_registry, key, config_class)
            return model_class

        return decorator

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any):
        """A model from a preset, an alias, a registered type's ``"type:size"`` or a saved directory (see
        :func:`create_world_model`)."""
        return AutoWorldModel.from_pretrained(name_or_path, **kwargs)

    @classmethod
    def get_config(cls, name_or_path: str | os.PathLike, **fields: Any):
        """The config of a preset, an alias or a saved directory (see :func:`get_config`)."""
        return AutoConfig.from_pretrained(name_or_path, **fields)

    @classmethod
    def list_models(cls) -> dict[str, type]:
        """``{canonical type: model class}``, e.g. ``{"dreamer": DreamerV3WorldModel, ...}``."""
        return dict(cls._model_registry.items())


__all__ = ["TYPE_ALIASES", "AutoConfig", "AutoWorldModel", "WorldModelRegistry"]
