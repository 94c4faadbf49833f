"""The original's registry names at ``worldloom.core.registry``, torch face.

``WorldModelRegistry``, ``AutoWorldModel`` and ``AutoConfig`` are lookups over
worldloom's one registry (:mod:`worldloom.core.registry`); they hold no
models of their own. ``TYPE_ALIASES`` maps the original's type names to its
canonical ones (``"dreamerv3"`` and ``"dreamer"`` -> ``"dreamer"``).

Example:
    >>> from worldloom_torch_compat.core.registry import WorldModelRegistry
    >>> sorted(WorldModelRegistry.list_models())
    ['dreamer', 'tdmpc2']
"""

from __future__ import annotations

import os
from typing import Any

from worldloom_torch_compat.info import AutoConfig, AutoWorldModel

TYPE_ALIASES = {"dreamerv3": "dreamer", "dreamer": "dreamer", "tdmpc2": "tdmpc2", "tdmpc": "tdmpc2"}
"""The original's model type names -> its canonical type (``config.model_type``)."""

_FAMILIES = {"dreamer": "dreamerv3", "tdmpc2": "tdmpc2"}  # canonical type -> worldloom family


class _TypeTable(dict):
    """``{canonical type: class}``, filled from the torch face's family classes when read."""

    def __init__(self, attribute: str | None):
        super().__init__()
        self._attribute = attribute

    def _fill(self) -> None:
        if not dict.__len__(self):
            from worldloom_torch_compat.model import WorldModel

            for model_type, family in _FAMILIES.items():
                cls = WorldModel.family_classes[family]
                dict.__setitem__(self, model_type, getattr(cls, self._attribute) if self._attribute else cls)

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
    """The original's registry class: ``from_pretrained``, ``list_models``, ``get_config``.

    ``_model_registry`` and ``_config_registry`` map the original's canonical
    types (``"dreamer"``, ``"tdmpc2"``) to the torch face's classes.
    """

    _model_registry: dict[str, type] = _TypeTable(None)
    _config_registry: dict[str, type] = _TypeTable("config_class")

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any):
        """A model from a preset, an alias or a saved directory (see :func:`create_world_model`)."""
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
