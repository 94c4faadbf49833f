"""Model families and the factory.

Importing this package registers the families (:mod:`worldloom.models.dreamerv3`,
:mod:`worldloom.models.tdmpc2`) with :mod:`worldloom.core.registry`.
"""

import worldloom.models.dreamerv3  # noqa: F401 - registers the family
import worldloom.models.tdmpc2  # noqa: F401 - registers the family
from worldloom.models.base import OptimizerSettings, UpdateFunctions, WorldModel
from worldloom.models.factory import (
    MODEL_ALIASES,
    MODEL_CATALOG,
    AutoConfig,
    AutoWorldModel,
    create_world_model,
    get_config,
    get_model_info,
    list_models,
)

__all__ = [
    "MODEL_ALIASES",
    "MODEL_CATALOG",
    "AutoConfig",
    "AutoWorldModel",
    "OptimizerSettings",
    "UpdateFunctions",
    "WorldModel",
    "create_world_model",
    "get_config",
    "get_model_info",
    "list_models",
]
