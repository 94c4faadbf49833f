"""``Trainer`` and ``train`` for torch modules: worldloom's jitted JAX training, weights copied back.

At the original library's path ``worldloom.training.trainer``.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import torch

import worldloom
from worldloom.core.errors import ConfigError, DeviceError
from worldloom.training import Trainer as JaxTrainer
from worldloom.training import train as jax_train
from worldloom.training.callbacks import Callback
from worldloom.training.callbacks import CheckpointCallback as JaxCheckpointCallback
from worldloom.training.checkpoints import list_checkpoints
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
    ``last_losses``, ``eval_history``, ``save_checkpoint``, ... are the JAX
    trainer's), except that ``model`` is the torch module and ``state`` the
    source's view (:class:`TrainingState`).

    Example:
        >>> trainer = Trainer(model, TrainingConfig(total_steps=1_000))
        >>> trained_model = trainer.train(buffer)  # the same module, trained
    """

    def __init__(self, model: Any, config: TrainingConfig | None = None, callbacks=(), *, resume_from=None):
        self.model = _as_module(model)
        self._source_state = TrainingState(self)
        self._finished: tuple[str | None, int] | None = None  # (run id, step) where the last train() ended
        self.jax_trainer = JaxTrainer(self.model.jax_model, config, (), resume_from=resume_from)
        for callback in callbacks:
            self.add_callback(callback)

    @classmethod
    def _around(cls, module: WorldModel) -> Trainer:
        """The torch Trainer that source-style callbacks of :func:`train` get: its JAX trainer comes
        with their ``on_train_begin``."""
        trainer = cls.__new__(cls)
        trainer.model, trainer.jax_trainer, trainer._finished = module, None, None
        trainer._source_state = TrainingState(trainer)
        return trainer

    @property
    def callbacks(self) -> list:
        """The callbacks added, as they were given (a source-style one is run through an adapter)."""
        added = self.jax_trainer.callbacks if self.jax_trainer is not None else ()
        return [c.callback if isinstance(c, _SourceCallback) else c for c in added]

    def add_callback(self, callback) -> None:
        """Add a callback (an instance of :class:`~worldloom.training.callbacks.Callback`).

        A callback written as the original source's, ``on_step_end(self, trainer)`` or only
        ``on_train_begin``/``on_train_end``, gets this Trainer in its hooks (see :func:`source_style`).
        """
        self.jax_trainer.add_callback(_adapted(callback, self))

    def train(self, buffer: Any, num_steps: int | None = None, resume_from=None, *,
              resume: bool = False) -> WorldModel:
        """Run ``config.total_steps`` updates on ``buffer`` and return the model, trained in place.

        The torch Parameters' current values are the starting point; the
        trained values are copied back into them when training ends (during
        it, only for callbacks written as the source's: :func:`source_style`). Every
        call starts at step 0 with a fresh optimiser state unless it resumes
        from a checkpoint; a second call says so with a warning. A second call
        whose checkpoint directory holds the checkpoint the first ended with
        goes on from it instead (its step, optimiser state and weights) to
        ``total_steps`` (or ``num_steps``), as the source's Trainer went on
        from its step count.

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
        self._source_state._begin()
        goes_on = False
        if resume_from is not None:
            trainer.resume_from = resume_from
        elif not resume and trainer.resume_from is None and self._finished is not None:
            resume = goes_on = self._saved_last()
            if not goes_on:
                warnings.warn(f"Trainer.train runs from step 0 again, from the model's current weights with a "
                              f"fresh optimiser state ({trainer.step} updates ran before); WorldLoom's Trainer went "
                              "on from its step count. Pass num_steps= for the updates this call should run.",
                              RuntimeWarning, stacklevel=2)
        self.model.sync_to_jax(copy=True)
        config = trainer.config
        if num_steps is not None:
            trainer.config = config.replace(total_steps=int(num_steps))
        try:
            with warnings.catch_warnings():
                if goes_on:  # the same run going on, on whatever buffer this call gives it
                    warnings.filterwarnings("ignore", r"Resuming from .* buffer", RuntimeWarning)
                trainer.train(unwrap_buffer(buffer), resume=resume)
        finally:
            trainer.config = config
        # Done with: a later call goes on from where this one ended, not from resume_from again.
        trainer.resume_from, self._finished = None, (trainer.run_id, trainer.step)
        return _after_training(self.model)

    def _saved_last(self) -> bool:
        """Whether a checkpoint directory of the run (``config.checkpoint_dir``, a ``CheckpointCallback``'s)
        holds the checkpoint the last run ended with: its run's, at its step."""
        trainer, (run_id, step) = self.jax_trainer, self._finished
        directories = [c.save_dir for c in trainer.callbacks if isinstance(c, JaxCheckpointCallback)]
        directories += [trainer.config.checkpoint_dir] if trainer.config.checkpoint_dir else []
        ends = [list_checkpoints(directory, run_id)[-1:] for directory in directories]
        return run_id is not None and any(end and end[0][0] == step for end in ends)

    def load_checkpoint(self, path) -> None:
        """Load the checkpoint ``path`` names (a directory written by :meth:`save_checkpoint` or a
        ``CheckpointCallback``: its newest; or one ``step_<N>``), as the source does.

        The module takes its weights and ``state.global_step`` its step at once; :meth:`train` next resumes
        from it, with its optimiser state.

        Raises:
            CheckpointError: no loadable checkpoint there, or one of another model.
        """
        step, params = self.jax_trainer.checkpoint_params(path)
        self.model.sync_from_jax(params)
        self.model.sync_to_jax(copy=True)
        self.jax_trainer.resume_from = path
        self._source_state._step = step

    @property
    def state(self) -> TrainingState:
        """The run's state, there from the start as in the source: ``global_step`` (0 before training),
        ``metrics``, ``should_stop``, ... and, once training has run, the JAX train state's fields."""
        return self._source_state

    # ------------------------------------------------------------ source-style callbacks

    def _begin(self, jax_trainer: JaxTrainer) -> None:
        self.jax_trainer = jax_trainer
        self._source_state._begin()
        self._pull_weights()

    def _reached(self, step: int, losses: dict[str, float], pull: bool = True) -> None:
        """``step``'s losses into ``state``; with ``pull``, the newest weights into the module."""
        state = self._source_state
        if step != state._step:  # once per update, however many callbacks are told
            state._reached(step, self.model.with_source_names(losses))
        if pull:
            self._pull_weights()

    def _end(self) -> None:
        self._source_state._step = None
        self._pull_weights()

    def _pull_weights(self) -> None:
        """The module's Parameters take the newest train state's weights (once per dispatch)."""
        trainer = self.jax_trainer
        if trainer.state is not None and self._source_state._pulled != trainer.step:
            self.model.sync_from_jax(trainer.current_params())
            self._source_state._pulled = trainer.step

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
    """The source's view of a run; other attributes are the JAX train state's (``trainer.jax_trainer.state``).

    Attributes:
        global_step: Updates done: inside ``on_step_end``, those up to the update being reported.
        metrics: That update's losses (Python floats, worldloom's names and the source's).
        should_stop: Set to True to stop the run, after the dispatch running (``steps_per_dispatch`` updates).
        best_loss: Free for callbacks to keep (the source's ``CheckpointCallback`` sets it); ``inf`` at first.
        total_loss, num_batches: The sum of the reported ``loss`` values and their count.
        epoch: 0 (the source counts no epochs).
    """

    def __init__(self, trainer: Trainer):
        self._trainer = trainer
        self._step: int | None = None
        self._pulled: int | None = None
        self.metrics: dict[str, float] = {}
        self.best_loss = float("inf")
        self.total_loss, self.num_batches, self.epoch = 0.0, 0, 0

    @property
    def global_step(self) -> int:
        if self._step is not None:
            return self._step
        trainer = self._trainer.jax_trainer
        return 0 if trainer is None else int(trainer.step)

    @property
    def should_stop(self) -> bool:
        trainer = self._trainer.jax_trainer
        return trainer is not None and bool(trainer.stop_training)

    @should_stop.setter
    def should_stop(self, value: bool) -> None:
        self._trainer.jax_trainer.stop_training = bool(value)

    def reset_epoch(self) -> None:
        """The source's: clear ``total_loss``, ``num_batches`` and ``metrics``."""
        self.total_loss, self.num_batches, self.metrics = 0.0, 0, {}

    def _begin(self) -> None:
        self._step, self._pulled = None, None

    def _reached(self, step: int, metrics: dict[str, float]) -> None:
        self._step, self.metrics = step, metrics
        self.total_loss += metrics.get("loss", 0.0)
        self.num_batches += 1

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        trainer = self._trainer.jax_trainer
        if trainer is None or trainer.state is None:
            raise AttributeError(f"TrainingState has no {name!r}: expected the source's global_step, metrics, "
                                 "should_stop, best_loss, total_loss, num_batches or epoch, or a field of the JAX "
                                 "train state, which exists once training has run (train() has not run yet).")
        state = trainer.state
        if isinstance(state, dict):  # the JAX train state is a dict of its fields
            if name in state:
                return state[name]
            raise AttributeError(f"TrainingState has no {name!r}: expected the source's fields or one of the "
                                 f"JAX train state's, {', '.join(sorted(state))}.")
        return getattr(state, name)


def source_style(callback: Any) -> bool:
    """Whether ``callback`` is written as the original source's: ``on_step_end(self, trainer)``, or only
    ``on_train_begin``/``on_train_end`` (a class of the user's, not worldloom's, that overrides none of
    ``on_step_end``, ``on_eval_end`` and ``sync_interval``: e.g. a wandb ``init``/``finish``, or a
    ``trainer.model.save_pretrained(...)`` at the end).

    Such a callback gets the torch :class:`Trainer` in ``on_train_begin``,
    ``on_step_end`` and ``on_train_end``, as in WorldLoom: ``trainer.state``
    has ``global_step``, ``metrics`` and a settable ``should_stop``, and
    ``trainer.model`` is the module, holding the newest weights at each hook
    (copied once per dispatch, so up to ``steps_per_dispatch`` x
    (``max_in_flight`` + 1) - 1 updates past ``global_step``; exactly those of
    ``global_step`` at the multiples of the callback's ``sync_interval()``).
    Callbacks written as worldloom documents, ``on_step_end(self, step, losses)``,
    and worldloom's own classes get worldloom's trainer.
    """
    if isinstance(callback, Callback) and not _overrides_step_hooks(callback):
        return type(callback).__module__.split(".")[0] not in ("worldloom", "worldloom_torch_compat")
    try:
        parameters = inspect.signature(callback.on_step_end).parameters.values()
    except (AttributeError, TypeError, ValueError):
        return False
    kinds = [parameter.kind for parameter in parameters]
    positional = sum(kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                     for kind in kinds)
    return positional == 1 and inspect.Parameter.VAR_POSITIONAL not in kinds


def _overrides_step_hooks(callback: Callback) -> bool:
    """Whether ``callback``'s class defines its own ``on_step_end``, ``on_eval_end`` or ``sync_interval``."""
    return any(getattr(type(callback), name) is not getattr(Callback, name)
               for name in ("on_step_end", "on_eval_end", "sync_interval"))


class _SourceCallback(Callback):
    """A source-style callback (:func:`source_style`) run by worldloom's trainer, given the torch Trainer."""

    def __init__(self, callback: Callback, trainer: Trainer):
        self.callback, self.torch_trainer = callback, trainer
        self.steps = type(callback).on_step_end is not Callback.on_step_end  # else: begin/end hooks only

    def sync_interval(self) -> int | None:
        return self.callback.sync_interval()

    def on_train_begin(self, trainer: JaxTrainer) -> None:
        super().on_train_begin(trainer)
        self.torch_trainer._begin(trainer)
        self.callback.on_train_begin(self.torch_trainer)

    def on_step_end(self, step: int, losses: dict[str, float]) -> None:
        self.torch_trainer._reached(step, losses, pull=self.steps)
        if self.steps:
            self.callback.on_step_end(self.torch_trainer)

    def on_eval_end(self, step: int, metrics: dict[str, float]) -> None:
        self.callback.on_eval_end(step, metrics)

    def on_train_end(self, trainer: JaxTrainer) -> None:
        self.torch_trainer._end()
        self.callback.on_train_end(self.torch_trainer)


def _adapted(callback: Any, trainer: Trainer) -> Any:
    """``callback`` as worldloom's trainer runs it: source-style ones adapted, others as they are."""
    if isinstance(callback, Callback) and source_style(callback):
        return _SourceCallback(callback, trainer)
    return callback


def train(model: Any, buffer: Any, total_steps: int = 50_000, batch_size: int = 16, sequence_length: int = 50,
          learning_rate: float = 3e-4, *, callbacks=(), progress: bool = True, **more: Any) -> WorldModel:
    """Train ``model`` on ``buffer`` in one call (arguments as :func:`worldloom.training.train`).

    Returns:
        The same module (a ``torch.nn.Module``), holding the trained weights.
    """
    module = _as_module(model)
    _check_trainable(module, "train")
    module.sync_to_jax(copy=True)
    torch_trainer = Trainer._around(module)
    jax_train(module.jax_model, unwrap_buffer(buffer), total_steps, batch_size, sequence_length, learning_rate,
              callbacks=[_adapted(callback, torch_trainer) for callback in callbacks], progress=progress, **more)
    return _after_training(module)
