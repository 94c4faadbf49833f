"""The original library's exception names (``worldloom.core.exceptions``), as aliases of worldloom's own.

Each name is the same class as in :mod:`worldloom.core.errors`, so ``except
ConfigurationError`` catches a :class:`~worldloom.core.errors.ConfigError`:

| original | worldloom |
|---|---|
| ``WorldLoomError`` | ``WorldloomError`` |
| ``ConfigurationError`` | ``ConfigError`` |
| ``ShapeMismatchError``, ``StateError`` | ``ShapeError`` |
| ``ModelNotFoundError`` | ``UnknownModelError`` |
| ``CheckpointError`` | ``CheckpointError`` |
| ``BufferError`` | ``DataError`` |
| ``TrainingError`` | ``TrainingError`` |
"""

from worldloom.core.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DeviceError,
    ShapeError,
    TrainingError,
    UnknownModelError,
    WorldloomError,
)

WorldLoomError = WorldloomError
ConfigurationError = ConfigError
ShapeMismatchError = ShapeError
StateError = ShapeError
ModelNotFoundError = UnknownModelError
BufferError = DataError  # noqa: A001 - the original's name

__all__ = [
    "BufferError",
    "CheckpointError",
    "ConfigurationError",
    "DeviceError",
    "ModelNotFoundError",
    "ShapeMismatchError",
    "StateError",
    "TrainingError",
    "WorldLoomError",
]
