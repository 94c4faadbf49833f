"""Core types shared by every layer: states, errors, config base, registry."""

from worldloom.core.config import ConfigBase
from worldloom.core.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DeviceError,
    DistributedError,
    ShapeError,
    TrainingError,
    UnknownModelError,
    WorldloomError,
)
from worldloom.core.types import LatentState, Trajectory

__all__ = [
    "CheckpointError",
    "ConfigBase",
    "ConfigError",
    "DataError",
    "DeviceError",
    "DistributedError",
    "LatentState",
    "ShapeError",
    "TrainingError",
    "Trajectory",
    "UnknownModelError",
    "WorldloomError",
]
