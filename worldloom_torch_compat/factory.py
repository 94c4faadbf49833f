"""The original library's ``worldloom.factory`` path, torch face: the factory functions and tables."""

from worldloom_torch_compat.info import MODEL_ALIASES, MODEL_CATALOG, get_config, get_model_info, list_models
from worldloom_torch_compat.model import create_world_model

__all__ = ["MODEL_ALIASES", "MODEL_CATALOG", "create_world_model", "get_config", "get_model_info", "list_models"]
