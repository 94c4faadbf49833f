"""The original library's import path of DreamerV3 (``worldloom.models.dreamer``).

Example:
    >>> from worldloom.models.dreamer import DreamerV3Config, DreamerV3WorldModel
    >>> model = DreamerV3WorldModel(DreamerV3Config.from_size("size1m", obs_shape=(4,), action_dim=2))
"""

from worldloom.models.dreamerv3 import PRESETS, DreamerV3Config, DreamerV3WorldModel

__all__ = ["PRESETS", "DreamerV3Config", "DreamerV3WorldModel"]
