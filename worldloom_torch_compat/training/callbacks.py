"""Training callbacks: worldloom's own, re-exported.

Callbacks run inside worldloom's JAX trainer: ``on_step_end(step, losses)``
gets Python floats, and ``callback.trainer`` (set in ``on_train_begin``) is
that JAX trainer, whose ``model`` is the JAX handle (``module.jax_model``).
"""

from worldloom.training.callbacks import (
    Callback,
    CheckpointCallback,
    EarlyStoppingCallback,
    LoggingCallback,
    ProgressCallback,
)

__all__ = ["Callback", "CheckpointCallback", "EarlyStoppingCallback", "LoggingCallback", "ProgressCallback"]
