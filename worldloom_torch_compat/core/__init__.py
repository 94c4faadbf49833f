"""The original library's ``core`` names and paths, torch face.

``core.state`` (``LatentState``), ``core.trajectory``, ``core.config`` (configs
and the ``LatentType``/``DynamicsType`` enums), ``core.registry``,
``core.latent_space``, ``core.protocol`` and ``core.exceptions``: re-exports
of the torch face's classes and worldloom's exceptions.
"""

from worldloom_torch_compat.core import exceptions, state
from worldloom_torch_compat.core.config import (
    DreamerV3Config,
    DynamicsType,
    LatentType,
    TDMPC2Config,
    WorldModelConfig,
)
from worldloom_torch_compat.core.exceptions import (
    BufferError,  # noqa: A004 - the original's name
    CheckpointError,
    ConfigurationError,
    ModelNotFoundError,
    ShapeMismatchError,
    StateError,
    TrainingError,
    WorldLoomError,
)
from worldloom_torch_compat.core.latent_space import (
    CategoricalLatentSpace,
    GaussianLatentSpace,
    LatentSpace,
    SimNormLatentSpace,
)
from worldloom_torch_compat.core.protocol import WorldModel
from worldloom_torch_compat.core.registry import AutoConfig, AutoWorldModel, WorldModelRegistry
from worldloom_torch_compat.types import LatentState, Trajectory

__all__ = [
    "AutoConfig",
    "AutoWorldModel",
    "BufferError",
    "CategoricalLatentSpace",
    "CheckpointError",
    "ConfigurationError",
    "DreamerV3Config",
    "DynamicsType",
    "GaussianLatentSpace",
    "LatentSpace",
    "LatentState",
    "LatentType",
    "ModelNotFoundError",
    "SimNormLatentSpace",
    "ShapeMismatchError",
    "StateError",
    "TDMPC2Config",
    "TrainingError",
    "Trajectory",
    "WorldLoomError",
    "WorldModel",
    "WorldModelConfig",
    "WorldModelRegistry",
    "exceptions",
    "state",
]
