"""worldloom: latent world models (DreamerV3, TD-MPC2) in JAX.

Example:
    >>> from worldloom import create_world_model
    >>> model = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2)
"""

from worldloom.core import (
    CheckpointError,
    ConfigError,
    DataError,
    DeviceError,
    DistributedError,
    LatentState,
    ShapeError,
    TrainingError,
    Trajectory,
    UnknownModelError,
    WorldloomError,
)
from worldloom.models import (
    MODEL_ALIASES,
    MODEL_CATALOG,
    AutoConfig,
    AutoWorldModel,
    OptimizerSettings,
    UpdateFunctions,
    WorldModel,
    create_world_model,
    get_config,
    get_model_info,
    list_models,
)
from worldloom.models.dreamerv3 import DreamerV3Config, DreamerV3WorldModel
from worldloom.models.tdmpc2 import TDMPC2Config, TDMPC2WorldModel

__version__ = "0.1.0"

__all__ = [
    "MODEL_ALIASES",
    "MODEL_CATALOG",
    "AutoConfig",
    "AutoWorldModel",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DeviceError",
    "DistributedError",
    "DreamerV3Config",
    "DreamerV3WorldModel",
    "LatentState",
    "OptimizerSettings",
    "ShapeError",
    "TDMPC2Config",
    "TDMPC2WorldModel",
    "TrainingError",
    "Trajectory",
    "UnknownModelError",
    "UpdateFunctions",
    "WorldModel",
    "WorldloomError",
    "__version__",
    "create_world_model",
    "get_config",
    "get_model_info",
    "list_models",
]
