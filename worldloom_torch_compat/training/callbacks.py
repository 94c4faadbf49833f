"""Training callbacks: worldloom's own, with the original source's argument names too.

Callbacks run inside worldloom's JAX trainer: ``on_step_end(step, losses)``
gets Python floats, and ``callback.trainer`` (set in ``on_train_begin``) is
that JAX trainer, whose ``model`` is the JAX handle (``module.jax_model``).
A callback written as the source's, ``on_step_end(self, trainer)`` or only
``on_train_begin``/``on_train_end``, gets the torch ``Trainer`` instead
(:func:`worldloom_torch_compat.training.trainer.source_style`).

``CheckpointCallback`` also takes the source's ``output_dir``, ``save_interval``
and ``max_checkpoints`` (the documented ``save_dir``, ``save_every`` and
``keep_last``), and ``LoggingCallback`` prints to the console by default, as
the source documents.
"""

from __future__ import annotations

from typing import Any

from worldloom.core.errors import ConfigError
from worldloom.training import callbacks as _jax
from worldloom.training.callbacks import Callback, EarlyStoppingCallback, ProgressCallback

_CHECKPOINT_NAMES = {"output_dir": "save_dir", "save_interval": "save_every", "max_checkpoints": "keep_last"}


class CheckpointCallback(_jax.CheckpointCallback):
    """:class:`worldloom.training.callbacks.CheckpointCallback`; the source's names are aliases:
    ``output_dir`` = ``save_dir``, ``save_interval`` = ``save_every``, ``max_checkpoints`` = ``keep_last``.

    Example:
        >>> callback = CheckpointCallback(output_dir="runs/a", save_interval=100, max_checkpoints=3)
        >>> callback.save_every, callback.save_interval
        (100, 100)
    """

    def __init__(self, *args: Any, output_dir=None, save_interval=None, max_checkpoints=None, **kwargs: Any):
        given = {"output_dir": output_dir, "save_interval": save_interval, "max_checkpoints": max_checkpoints}
        for source, name in _CHECKPOINT_NAMES.items():
            if given[source] is None:
                continue
            if name in kwargs:
                raise ConfigError(f"CheckpointCallback: {source}= and {name}= are the same setting; pass one.")
            kwargs[name] = given[source]
        super().__init__(*args, **kwargs)

    @property
    def output_dir(self):
        return self.save_dir

    @property
    def save_interval(self):
        return self.save_every

    @property
    def max_checkpoints(self):
        return self.keep_last


class LoggingCallback(_jax.LoggingCallback):
    """:class:`worldloom.training.callbacks.LoggingCallback` with the source's default ``log_to_console=True``.

    TensorBoard events are written when a ``log_dir`` is given (or ``log_to_tensorboard=True``).

    Example:
        >>> callback = LoggingCallback()
        >>> callback.log_to_console, callback.log_to_tensorboard
        (True, False)
    """

    def __init__(self, log_dir=None, log_to_console: bool = True, *args: Any, **kwargs: Any):
        super().__init__(log_dir, log_to_console, *args, **kwargs)


__all__ = ["Callback", "CheckpointCallback", "EarlyStoppingCallback", "LoggingCallback", "ProgressCallback"]
