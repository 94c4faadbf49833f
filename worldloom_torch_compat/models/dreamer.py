"""DreamerV3 at the original library's import path, torch face (``worldloom.models.dreamer``).

Example:
    >>> from worldloom_torch_compat.models.dreamer import DreamerV3Config, DreamerV3WorldModel
    >>> config = DreamerV3Config.from_size("size1m", obs_shape=(3, 64, 64), action_dim=18)
    >>> model = DreamerV3WorldModel(config)          # a torch.nn.Module
"""

from worldloom.models import dreamerv3
from worldloom.models.dreamerv3 import PRESETS
from worldloom_torch_compat.model import WorldModel
from worldloom_torch_compat.models._channels import ChannelsFirst


class DreamerV3Config(ChannelsFirst, dreamerv3.DreamerV3Config):
    """:class:`worldloom.models.dreamerv3.DreamerV3Config` with image ``obs_shape`` channels first."""


class DreamerV3WorldModel(WorldModel, family="dreamerv3"):
    """DreamerV3 as a ``torch.nn.Module``: ``DreamerV3WorldModel(config, device=, seed=)``."""

    config_class = DreamerV3Config


__all__ = ["PRESETS", "DreamerV3Config", "DreamerV3WorldModel"]
