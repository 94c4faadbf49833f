"""The package's exception types.

Every error a user can cause raises one of these, with a message that says
what was expected and what was got. Each also derives from the matching
built-in type so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class WorldloomError(Exception):
    """Base class of every error raised by worldloom."""


class ConfigError(WorldloomError, ValueError):
    """An invalid configuration value or an unknown config field."""


class UnknownModelError(ConfigError, KeyError):
    """A model name that is neither a preset, an alias nor a saved directory."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ShapeError(WorldloomError, ValueError):
    """An array whose shape does not match what the model or buffer expects."""


class DataError(WorldloomError, ValueError):
    """Invalid data: NaN/inf values, wrong dtype, inconsistent lengths."""


class CheckpointError(WorldloomError, OSError):
    """A missing, incomplete or corrupt saved model, buffer or checkpoint."""


class DeviceError(WorldloomError, RuntimeError):
    """A requested device that is not available."""


class TrainingError(WorldloomError, RuntimeError):
    """A training run that cannot go on: a non-finite loss, gradient or parameter."""


class DistributedError(WorldloomError, RuntimeError):
    """A multi-process run that cannot go on: a process was lost or the processes could not join."""
