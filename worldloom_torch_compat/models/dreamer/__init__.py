"""DreamerV3 at the original library's import path, torch face (``worldloom.models.dreamer``).

Example:
    >>> from worldloom_torch_compat.models.dreamer import DreamerV3Config, DreamerV3WorldModel
    >>> config = DreamerV3Config.from_size("size1m", obs_shape=(3, 64, 64), action_dim=18)
    >>> model = DreamerV3WorldModel(config)          # a torch.nn.Module
"""

from worldloom.models.dreamerv3 import PRESETS
from worldloom_torch_compat.models.dreamer.heads import symexp, symlog
from worldloom_torch_compat.models.dreamer.world_model import DreamerV3Config, DreamerV3WorldModel

__all__ = ["PRESETS", "DreamerV3Config", "DreamerV3WorldModel", "symexp", "symlog"]
