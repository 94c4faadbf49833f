"""DreamerV3: the RSSM world model (Hafner et al., 2023)."""

from worldloom.core.registry import ModelFamily, register_family
from worldloom.models.dreamerv3.config import ALIASES, PRESETS, DreamerV3Config
from worldloom.models.dreamerv3.model import DreamerV3WorldModel

register_family(
    ModelFamily(
        name="dreamerv3",
        config_cls=DreamerV3Config,
        presets=PRESETS,
        build=DreamerV3WorldModel.build,
        init_params=DreamerV3WorldModel.init_params,
        default_preset="size12m",
        description="DreamerV3 RSSM: block GRU, 32 categorical latents, two-hot reward, image/vector decoder.",
    ),
    aliases=ALIASES,
)

__all__ = ["DreamerV3Config", "DreamerV3WorldModel", "PRESETS"]
