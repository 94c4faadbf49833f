"""The original source's model names: family prefixes, the ``ci`` size and default shapes.

Imports nothing of this package, so every module of it may use these.
"""

from __future__ import annotations

import os

SOURCE_FAMILY_NAMES = {"dreamer": "dreamerv3", "tdmpc": "tdmpc2"}
"""The original source's family prefixes (``"dreamer:size12m"``) -> worldloom's family names."""

DEFAULT_OBS_SHAPE = (3, 64, 64)
"""The original's ``obs_shape`` when ``create_world_model`` gets none: a 64x64 RGB image."""
DEFAULT_ACTION_DIM = 6
"""The original's ``action_dim`` when ``create_world_model`` gets none."""


def is_saved_path(name: str) -> bool:
    """Whether ``name`` names a saved model rather than a preset or alias: worldloom's rule
    (:func:`worldloom.models.factory.names_saved_model`), the source's preset names counting as presets."""
    from worldloom.models.factory import names_saved_model

    return names_saved_model(name) and names_saved_model(_source_preset(name))


def preset_name(name: str | os.PathLike) -> str:
    """``name`` with the original source's family prefixes (``dreamer:``, ``tdmpc:``) as worldloom's;
    paths pass through."""
    name = os.fspath(name)
    return name if is_saved_path(name) else _source_preset(name)


def _source_preset(name: str) -> str:
    family, sep, preset = name.strip().partition(":")
    if not sep:
        return name
    family = SOURCE_FAMILY_NAMES.get(family.lower(), family.lower())
    return f"{family}:{source_size(family, preset)}"


CI_PRESETS = {"dreamerv3": "size1m", "tdmpc2": "1m"}
"""The source's ``ci`` size of each family: here its smallest reference-shaped preset."""


def source_size(family: str, size: str) -> str:
    """``size`` with the source's ``ci`` as the family's smallest preset; other sizes pass through."""
    return CI_PRESETS.get(family, size) if str(size).strip().lower() == "ci" else size
