"""``Trainer`` and ``train`` for torch modules: worldloom's jitted JAX training, weights copied back."""

from __future__ import annotations

from typing import Any

import worldloom
from worldloom.core.errors import ConfigError, DeviceError
from worldloom.training import Trainer as JaxTrainer
from worldloom.training import TrainingConfig
from worldloom.training import train as jax_train
from worldloom_torch_compat._convert import jax_device, torch_device
from worldloom_torch_compat.model import WorldModel
from worldloom_torch_compat.training._buffer import unwrap_buffer


def _as_module(model: Any) -> WorldModel:
    if isinstance(model, WorldModel):
        return model
    if isinstance(model, worldloom.WorldModel):
        return WorldModel(model)
    raise ConfigError(f"model must be a WorldModel from create_world_model, got {type(model).__name__}.")


def _after_training(module: WorldModel) -> WorldModel:
    """Copy the trained JAX params into the Parameters; the module follows the training device."""
    handle = module.jax_model
    try:
        device = torch_device(handle.device)
    except DeviceError:
        device = module.device  # torch cannot go there: JAX comes back to the Parameters' device
    if device != module.device:
        module.to(device)
    elif handle.device != jax_device(device):
        handle.to(jax_device(device))
    return module.sync_from_jax()


class Trainer:
    """Trains a torch-facing world model with worldloom's JAX trainer.

    Args and attributes as :class:`worldloom.training.Trainer` (``step``,
    ``state``, ``last_losses``, ``eval_history``, ``save_checkpoint``, ...
    are the JAX trainer's), except that ``model`` is the torch module.

    Example:
        >>> trainer = Trainer(model, TrainingConfig(total_steps=1_000))
        >>> trained_model = trainer.train(buffer)  # the same module, trained
    """

    def __init__(self, model: Any, config: TrainingConfig | None = None, callbacks=(), *, resume_from=None):
        self.model = _as_module(model)
        self.jax_trainer = JaxTrainer(self.model.jax_model, config, callbacks, resume_from=resume_from)

    def add_callback(self, callback) -> None:
        """Add a callback (an instance of :class:`~worldloom.training.callbacks.Callback`)."""
        self.jax_trainer.add_callback(callback)

    def train(self, buffer: Any, resume: bool = False) -> WorldModel:
        """Run ``config.total_steps`` updates on ``buffer`` and return the model, trained in place.

        The torch Parameters' current values are the starting point; the
        trained values are copied back into them.
        """
        self.model.sync_to_jax(copy=True)
        self.jax_trainer.train(unwrap_buffer(buffer), resume=resume)
        return _after_training(self.model)

    def __getattr__(self, name: str) -> Any:
        if name == "jax_trainer":
            raise AttributeError(name)
        return getattr(self.jax_trainer, name)


def train(model: Any, buffer: Any, total_steps: int = 50_000, batch_size: int = 16, sequence_length: int = 50,
          learning_rate: float = 3e-4, *, callbacks=(), progress: bool = False, **more: Any) -> WorldModel:
    """Train ``model`` on ``buffer`` in one call (arguments as :func:`worldloom.training.train`).

    Returns:
        The same module (a ``torch.nn.Module``), holding the trained weights.
    """
    module = _as_module(model)
    module.sync_to_jax(copy=True)
    jax_train(module.jax_model, unwrap_buffer(buffer), total_steps, batch_size, sequence_length, learning_rate,
              callbacks=callbacks, progress=progress, **more)
    return _after_training(module)
