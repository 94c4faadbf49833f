"""TD-MPC2: implicit world model with MPPI planning (Hansen et al., 2024)."""

from worldloom.core.registry import ModelFamily, register_family
from worldloom.models.tdmpc2.config import ALIASES, PRESETS, TDMPC2Config, heuristic_discount
from worldloom.models.tdmpc2.model import TDMPC2WorldModel
from worldloom.models.tdmpc2.planner import MPPISettings, mppi

register_family(
    ModelFamily(
        name="tdmpc2",
        config_cls=TDMPC2Config,
        presets=PRESETS,
        build=TDMPC2WorldModel.build,
        init_params=TDMPC2WorldModel.init_params,
        default_preset="5m",
        description="TD-MPC2: SimNorm latent dynamics, two-hot reward and Q ensemble, policy prior, MPPI planning.",
    ),
    aliases=ALIASES,
)

__all__ = ["MPPISettings", "PRESETS", "TDMPC2Config", "TDMPC2WorldModel", "heuristic_discount", "mppi"]
