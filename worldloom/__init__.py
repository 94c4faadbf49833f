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
    LatentState,
    ShapeError,
    Trajectory,
    UnknownModelError,
    WorldloomError,
)
from worldloom.models import (
    OptimizerSettings,
    UpdateFunctions,
    WorldModel,
    create_world_model,
    get_model_info,
    list_models,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DeviceError",
    "LatentState",
    "OptimizerSettings",
    "ShapeError",
    "Trajectory",
    "UnknownModelError",
    "UpdateFunctions",
    "WorldModel",
    "WorldloomError",
    "__version__",
    "create_world_model",
    "get_model_info",
    "list_models",
]
