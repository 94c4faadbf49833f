"""DreamerV3: the RSSM world model (Hafner et al., 2023)."""

from worldloom.core.registry import ModelFamily, register_family
from worldloom.models.dreamerv3.config import ALIASES, PRESETS, DreamerV3Config
from worldloom.models.dreamerv3.model import DreamerV3WorldModel


def _build(config, *, params=None, seed=0, device=None, preset=None):
    import jax

    if params is None:
        params = DreamerV3WorldModel.init_params(config, jax.random.PRNGKey(seed))
    return DreamerV3WorldModel(config, params, seed=seed, device=device, preset=preset)


register_family(
    ModelFamily(
        name="dreamerv3",
        config_cls=DreamerV3Config,
        presets=PRESETS,
        build=_build,
        init_params=DreamerV3WorldModel.init_params,
        default_preset="size12m",
        description="DreamerV3 RSSM: block GRU, 32 categorical latents, two-hot reward, image/vector decoder.",
    ),
    aliases=ALIASES,
)

__all__ = ["DreamerV3Config", "DreamerV3WorldModel", "PRESETS"]
