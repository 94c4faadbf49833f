"""Model classes and configs at the original library's import paths, torch face."""

from worldloom_torch_compat.models.dreamer import DreamerV3Config, DreamerV3WorldModel
from worldloom_torch_compat.models.tdmpc2 import TDMPC2Config, TDMPC2WorldModel

__all__ = ["DreamerV3Config", "DreamerV3WorldModel", "TDMPC2Config", "TDMPC2WorldModel"]
