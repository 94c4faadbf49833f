"""Registry of model families, their presets and aliases.

Each family package under :mod:`worldloom.models` registers itself once when
it is imported: a config class, one preset table (the single source of truth
for preset sizes) and a builder. Core knows no model: importing
:mod:`worldloom` (or :mod:`worldloom.models`) imports the families.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from worldloom.core.config import close_matches
from worldloom.core.errors import UnknownModelError


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """A registered model family.

    Attributes:
        name: Family name, the part before ``:`` in a preset (``"dreamerv3"``).
        config_cls: Frozen config dataclass of the family.
        presets: Preset name -> config field values.
        build: ``build(config, *, params=None, seed=0, device=None, preset=None)
            -> WorldModel``; fresh params when ``params`` is None.
        init_params: ``init_params(config, key) -> params``.
        default_preset: Preset used when only the family name is given.
        description: One line shown by ``list_models(verbose=True)``.
    """

    name: str
    config_cls: type
    presets: Mapping[str, Mapping[str, Any]]
    build: Callable[..., Any]
    init_params: Callable[..., Any]
    default_preset: str
    description: str = ""


_FAMILIES: dict[str, ModelFamily] = {}
_ALIASES: dict[str, str] = {}


def register_family(family: ModelFamily, aliases: Mapping[str, str] = ()) -> None:
    """Register ``family`` and its aliases (alias -> ``"family:preset"``)."""
    _FAMILIES[family.name] = family
    for alias, target in dict(aliases).items():
        _ALIASES[alias] = target


def families() -> dict[str, ModelFamily]:
    return dict(_FAMILIES)


def aliases() -> dict[str, str]:
    return dict(_ALIASES)


def preset_names() -> list[str]:
    """Every ``family:preset`` name, in registration order."""
    return [f"{f.name}:{p}" for f in _FAMILIES.values() for p in f.presets]


def resolve(name: str) -> tuple[ModelFamily, str]:
    """Map a preset name or alias to ``(family, preset)``.

    Raises:
        UnknownModelError: naming the available presets and aliases.
    """
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    family_name, sep, preset = key.partition(":")
    family = _FAMILIES.get(family_name)
    if family is not None:
        preset = preset or family.default_preset
        if preset in family.presets:
            return family, preset
        what = f"Unknown model {name!r}: model type {family_name!r} has no preset {preset!r}."
    elif sep:
        what = f"Unknown model type {family_name!r} in {name!r} (types: {', '.join(_FAMILIES)})."
    else:
        what = f"Unknown model {name!r}. Invalid model identifier: not a model type, an alias or a 'type:preset' name."
    known = preset_names() + sorted(_ALIASES)
    raise UnknownModelError(
        f"{what}{close_matches(key, known)} "
        f"Available presets: {', '.join(preset_names())}; aliases: {', '.join(sorted(_ALIASES))}; "
        "or pass the path of a directory written by save_pretrained()."
    )
