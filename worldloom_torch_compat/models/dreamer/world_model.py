"""``DreamerV3WorldModel`` at the original library's path ``worldloom.models.dreamer.world_model``."""

from worldloom_torch_compat.core.config import DreamerV3Config
from worldloom_torch_compat.model import WorldModel


class DreamerV3WorldModel(WorldModel, family="dreamerv3"):
    """DreamerV3 as a ``torch.nn.Module``: ``DreamerV3WorldModel(config, device=, seed=)``."""

    config_class = DreamerV3Config
    latent_type = "categorical"
    source_losses = {"kl": "kl_loss", "reconstruction": "reconstruction_loss", "reward": "reward_loss",
                     "continue": "continue_loss"}


__all__ = ["DreamerV3Config", "DreamerV3WorldModel"]
