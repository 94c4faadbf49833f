"""worldloom for PyTorch users: the documented API with torch tensors at the edges.

Code written for ``worldloom`` runs here with the import root changed:
``create_world_model`` returns a ``torch.nn.Module`` whose ``parameters()``
are torch ``nn.Parameter``s, methods take and return torch tensors (images
channels first) and gradients flow back through the JAX computation.
``worldloom_torch_compat.training`` trains with worldloom's jitted JAX path.

Example:
    >>> import torch
    >>> from worldloom_torch_compat import create_world_model
    >>> model = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, device="cpu")
    >>> sum(p.numel() for p in model.parameters()) == model.num_parameters()
    True
"""

try:
    import torch  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        'worldloom_torch_compat needs PyTorch, which is not installed: pip install "worldloom[torch]"'
    ) from err

from worldloom.core.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DeviceError,
    ShapeError,
    UnknownModelError,
    WorldloomError,
)
from worldloom.models.base import OptimizerSettings, UpdateFunctions
from worldloom_torch_compat._convert import to_jax, to_torch
from worldloom_torch_compat.core import (  # noqa: E402 - the original's top-level names
    CategoricalLatentSpace,
    DynamicsType,
    GaussianLatentSpace,
    LatentSpace,
    LatentType,
    SimNormLatentSpace,
    WorldModelConfig,
    WorldModelRegistry,
)
from worldloom_torch_compat.info import (
    MODEL_ALIASES,
    MODEL_CATALOG,
    AutoConfig,
    AutoWorldModel,
    get_config,
    get_model_info,
    list_models,
)
from worldloom_torch_compat.model import WorldModel, create_world_model
from worldloom_torch_compat.models import DreamerV3Config, DreamerV3WorldModel, TDMPC2Config, TDMPC2WorldModel
from worldloom_torch_compat.types import LatentState, Trajectory

__version__ = "0.1.0"

__all__ = [
    "CategoricalLatentSpace",
    "DynamicsType",
    "GaussianLatentSpace",
    "LatentSpace",
    "LatentType",
    "SimNormLatentSpace",
    "WorldModelConfig",
    "WorldModelRegistry",
    "MODEL_ALIASES",
    "MODEL_CATALOG",
    "AutoConfig",
    "AutoWorldModel",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DeviceError",
    "DreamerV3Config",
    "DreamerV3WorldModel",
    "LatentState",
    "OptimizerSettings",
    "ShapeError",
    "TDMPC2Config",
    "TDMPC2WorldModel",
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
    "to_jax",
    "to_torch",
]


def __dir__():
    # The public names and the subpackages; not the modules the imports above bind.
    return sorted([*__all__, "core", "models", "training"])


def __getattr__(name: str):
    # ``worldloom_torch_compat.training`` (and ``.models``, ``.core``) without importing them first.
    if name in ("training", "models", "core"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
