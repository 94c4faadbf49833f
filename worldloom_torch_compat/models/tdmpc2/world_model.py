"""``TDMPC2WorldModel`` at the original library's path ``worldloom.models.tdmpc2.world_model``."""

from worldloom_torch_compat.core.config import TDMPC2Config
from worldloom_torch_compat.model import WorldModel


class TDMPC2WorldModel(WorldModel, family="tdmpc2"):
    """TD-MPC2 as a ``torch.nn.Module``: ``TDMPC2WorldModel(config, device=, seed=)``."""

    config_class = TDMPC2Config
    latent_type = "simnorm"
    source_losses = {"consistency": "loss/consistency", "reward": "reward_loss", "td": "loss/value",
                     "continue": "continue_loss"}


__all__ = ["TDMPC2Config", "TDMPC2WorldModel"]
