"""TD-MPC2 at the original library's import path, torch face (``worldloom.models.tdmpc2``).

Example:
    >>> from worldloom_torch_compat.models.tdmpc2 import TDMPC2Config, TDMPC2WorldModel
    >>> model = TDMPC2WorldModel(TDMPC2Config.from_size("1m", obs_shape=(39,), action_dim=6))
"""

from worldloom.models.tdmpc2 import PRESETS, heuristic_discount
from worldloom_torch_compat.models.tdmpc2.world_model import TDMPC2Config, TDMPC2WorldModel

__all__ = ["PRESETS", "TDMPC2Config", "TDMPC2WorldModel", "heuristic_discount"]
