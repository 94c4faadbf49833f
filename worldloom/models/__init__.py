"""Model families and the factory."""

from worldloom.models.base import OptimizerSettings, UpdateFunctions, WorldModel
from worldloom.models.factory import create_world_model, get_model_info, list_models

__all__ = [
    "OptimizerSettings",
    "UpdateFunctions",
    "WorldModel",
    "create_world_model",
    "get_model_info",
    "list_models",
]
