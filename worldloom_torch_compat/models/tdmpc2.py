"""TD-MPC2 at the original library's import path, torch face (``worldloom.models.tdmpc2``).

Example:
    >>> from worldloom_torch_compat.models.tdmpc2 import TDMPC2Config, TDMPC2WorldModel
    >>> model = TDMPC2WorldModel(TDMPC2Config.from_size("1m", obs_shape=(39,), action_dim=6))
"""

from worldloom.models import tdmpc2
from worldloom.models.tdmpc2 import PRESETS, heuristic_discount
from worldloom_torch_compat.model import WorldModel
from worldloom_torch_compat.models._channels import ChannelsFirst


class TDMPC2Config(ChannelsFirst, tdmpc2.TDMPC2Config):
    """:class:`worldloom.models.tdmpc2.TDMPC2Config` with image ``obs_shape`` channels first."""


class TDMPC2WorldModel(WorldModel, family="tdmpc2"):
    """TD-MPC2 as a ``torch.nn.Module``: ``TDMPC2WorldModel(config, device=, seed=)``."""

    config_class = TDMPC2Config


__all__ = ["PRESETS", "TDMPC2Config", "TDMPC2WorldModel", "heuristic_discount"]
