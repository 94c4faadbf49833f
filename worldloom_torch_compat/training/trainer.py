"""``Trainer`` and ``train`` for torch modules: worldloom's jitted JAX training, weights copied back.

At the original library's path ``worldloom.training.trainer``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

import worldloom
from worldloom.core.errors import ConfigError, DeviceError
from worldloom.training import Trainer as JaxTrainer
from worldloom.training import train as jax_train
from worldloom_torch_compat._convert import jax_device, torch_device
from worldloom_torch_compat.model import WorldModel, wrap
from worldloom_torch_compat.training._buffer import ReplayBuffer, unwrap_buffer
from worldloom_torch_compat.training.config import TrainingConfig


def _as_module(model: Any) -> WorldModel:
    if isinstance(model, WorldModel):
        return model
    if isinstance(model, worldloom.WorldModel):
        return wrap(model)  # as its family class
    raise ConfigError(f"model must be a WorldModel from create_world_model, got {type(model).__name__}.")


def _check_trainable(module: WorldModel, who: str) -> None:
    """ConfigError when a Parameter is frozen: worldloom's trainer updates every one of them."""
    frozen = [name for name, parameter in module.named_parameters() if not parameter.requires_grad]
    if frozen:
        shown = ", ".join(frozen[:3]) + (f" and {len(frozen) - 3} more" if len(frozen) > 3 else "")
        raise ConfigError(f"{who} trains every parameter of the model; expected all of them trainable, got "
                          f"{len(frozen)} with requires_grad=False ({shown}). To keep some fixed, train with a "
                          "torch optimizer over the trainable ones (model.compute_loss(batch)['loss'].backward()), "
                          "or call model.requires_grad_(True) first.")


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

    def train(self, buffer: Any, num_steps: int | None = None, resume_from=None, *,
              resume: bool = False) -> WorldModel:
        """Run ``config.total_steps`` updates on ``buffer`` and return the model, trained in place.

        The torch Parameters' current values are the starting point; the
        trained values are copied back into them when training ends (during
        it, the module keeps the values it started from: callbacks see
        worldloom's trainer, whose ``state`` holds the current ones). Every
        call starts at step 0 with a fresh optimiser state unless it resumes
        from a checkpoint; a second call says so with a warning.

        Args:
            buffer: The replay buffer (torch face or worldloom's).
            num_steps: The source's argument: run this many updates instead of
                ``config.total_steps`` (the config itself is unchanged).
            resume_from: The source's argument: a checkpoint (directory) to resume from.
            resume: Resume from the configured checkpoint directory.

        Raises:
            ConfigError: a Parameter with ``requires_grad=False`` (every one is trained).
        """
        _check_trainable(self.model, "Trainer.train")
        trainer = self.jax_trainer
        if resume_from is not None:
            trainer.resume_from = resume_from
        elif not resume and trainer.resume_from is None and trainer.state is not None:
            warnings.warn(f"Trainer.train runs from step 0 again, from the model's current weights with a fresh "
                          f"optimiser state ({trainer.step} updates ran before); WorldLoom's Trainer went on from "
                          "its step count. Pass num_steps= for the updates this call should run.", RuntimeWarning,
                          stacklevel=2)
        self.model.sync_to_jax(copy=True)
        config = trainer.config
        if num_steps is not None:
            trainer.config = config.replace(total_steps=int(num_steps))
        try:
            trainer.train(unwrap_buffer(buffer), resume=resume)
        finally:
            trainer.config = config
        return _after_training(self.model)

    def load_checkpoint(self, path) -> None:
        """Resume from the checkpoint directory ``path`` (written by :meth:`save_checkpoint` or a
        ``CheckpointCallback``) when :meth:`train` next runs; the step and optimiser state are restored then."""
        self.jax_trainer.resume_from = path

    @property
    def state(self) -> TrainingState | None:
        """The run's state: ``global_step`` and the JAX train state's fields (None before training)."""
        return None if self.jax_trainer.state is None else TrainingState(self.jax_trainer)

    def evaluate(self, buffer: Any, num_batches: int = 10) -> dict[str, float]:
        """Mean losses of the model on ``num_batches`` batches drawn from ``buffer``, as floats.

        Batches have the config's ``batch_size`` and ``sequence_length``; the
        model runs in eval mode without gradients (its mode is restored).
        """
        buffer = buffer if isinstance(buffer, ReplayBuffer) else ReplayBuffer.wrap(buffer)
        config, module = self.jax_trainer.config, self.model
        was_training = module.training
        module.eval()
        totals: dict[str, float] = {}
        try:
            with torch.no_grad():
                for _ in range(int(num_batches)):
                    batch = buffer.sample(config.batch_size, config.sequence_length, device=module.device)
                    for name, value in module.compute_loss(batch).items():
                        totals[name] = totals.get(name, 0.0) + float(value)
        finally:
            module.train(was_training)
        return {name: total / max(int(num_batches), 1) for name, total in totals.items()}

    def __getattr__(self, name: str) -> Any:
        if name == "jax_trainer":
            raise AttributeError(name)
        return getattr(self.jax_trainer, name)


class TrainingState:
    """The source's view of a run: ``global_step`` (updates done); other attributes are the JAX
    train state's (``trainer.jax_trainer.state``)."""

    def __init__(self, trainer: JaxTrainer):
        self._trainer = trainer

    @property
    def global_step(self) -> int:
        return int(self._trainer.step)

    def __getattr__(self, name: str) -> Any:
        if name == "_trainer":
            raise AttributeError(name)
        return getattr(self._trainer.state, name)


def train(model: Any, buffer: Any, total_steps: int = 50_000, batch_size: int = 16, sequence_length: int = 50,
          learning_rate: float = 3e-4, *, callbacks=(), progress: bool = True, **more: Any) -> WorldModel:
    """Train ``model`` on ``buffer`` in one call (arguments as :func:`worldloom.training.train`).

    Returns:
        The same module (a ``torch.nn.Module``), holding the trained weights.
    """
    module = _as_module(model)
    _check_trainable(module, "train")
    module.sync_to_jax(copy=True)
    jax_train(module.jax_model, unwrap_buffer(buffer), total_steps, batch_size, sequence_length, learning_rate,
              callbacks=callbacks, progress=progress, **more)
    return _after_training(module)
