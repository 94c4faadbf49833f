"""The trainer: jitted multi-update dispatches over prefetched replay windows."""

from __future__ import annotations

import json
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from worldloom import distributed
from worldloom.core.devices import device_name, device_spec, resolve_device
from worldloom.core.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DeviceError,
    DistributedError,
    ShapeError,
    TrainingError,
)
from worldloom.models.base import WorldModel
from worldloom.training import _checkpoint, _resume
from worldloom.training._buffer import ReplayBuffer
from worldloom.training._config import TrainingConfig
from worldloom.training._device_replay import build_table, table_nbytes, use_device_replay
from worldloom.training._sampling import WindowSampler, chunk_plan, split_segments
from worldloom.training._step import StepProgram, step_program
from worldloom.training.callbacks import Callback, CheckpointCallback, ProgressCallback
from worldloom.training.guard import SKIPPED, NonFiniteGuard, applied_before
from worldloom.training.interrupts import stop_requests
from worldloom.training.parallel import Placement, data_parallel_mesh
from worldloom.training.runloop import Evaluator, Learner

_TRAIN_STREAM, _EVAL_STREAM, _DEVICE_REPLAY_STREAM = 0, 1, 2
# Fields that change what a resumed run computes.
_RUN_FIELDS = ("batch_size", "sequence_length", "learning_rate", "weight_decay", "grad_clip", "warmup_steps",
               "seed", "eval_fraction", "device_replay", "replay_sharding")


_WARNED_DEVICES: set[str] = set()


def training_device(name: str) -> jax.Device:
    """The device named ``name``, or the best present one when it is absent.

    The fallback is announced with a RuntimeWarning once per process and device name.
    """
    try:
        return resolve_device(name)
    except DeviceError as err:
        fallback = resolve_device("auto")
        if name not in _WARNED_DEVICES:
            _WARNED_DEVICES.add(name)
            warnings.warn(f"TrainingConfig.device={name!r} is not available ({err}); training on "
                          f"{device_name(fallback)} instead. Pass device='auto' (or the device you have) "
                          "to silence this.", RuntimeWarning, stacklevel=3)
        return fallback


def _check_same_layout(buffer: ReplayBuffer, train_segments, eval_segments) -> None:
    """ConfigError on every process unless all of them hold buffers with the same episode layout."""
    layout = [buffer.num_transitions, np.asarray(buffer.episode_bounds()).tolist(), train_segments.tolist(),
              None if eval_segments is None else eval_segments.tolist()]
    differing = distributed.differing_processes(json.dumps(layout))
    if differing:
        raise ConfigError(f"Processes {differing} hold buffers with another episode layout than process 0 (this "
                          f"process: {buffer.num_transitions} transitions in {buffer.num_episodes} episodes). Every "
                          "process samples the same window rows, so each must hold a buffer with the same episodes "
                          "(the same file, or the same collection seeds), or set replay_sharding='process'.")


def _check_same_fields(layout: dict | None, eval_segments, problem: Exception | None) -> None:
    """With ``replay_sharding="process"``: every process's buffer gives batches of the same fields and shapes.

    Every process takes part before any raises, so a buffer that cannot be
    sampled on one process stops all of them with a message.
    """
    text = "unusable" if problem is not None else json.dumps(
        [{key: str(dtype) for key, dtype in layout.items()}, eval_segments is None])
    differing = distributed.differing_processes(text)
    if problem is not None:
        raise problem
    if differing:
        raise ConfigError(f"Processes {differing} hold buffers that give other batches than process 0's (fields, "
                          "dtypes, or whether episodes are held out for evaluation); with replay_sharding='process' "
                          "each process holds its own episodes, but of the same kind, and enough of them to hold "
                          "out as many for evaluation.")


def _copy(tree):
    return jax.tree_util.tree_map(jnp.copy, tree)


class Trainer:
    """Trains a world model on a replay buffer.

    Each dispatch runs ``steps_per_dispatch`` updates in one jitted call
    (``lax.scan`` over batches sampled ahead on a background thread); the
    train state is donated. Callbacks see every update's losses.

    Args:
        model: The ``WorldModel`` to train; it receives the trained params.
        config: A :class:`TrainingConfig` (default: ``TrainingConfig()``).
        callbacks: Initial callbacks.
        resume_from: A checkpoint directory (or one ``step_<N>`` in it) to
            continue from.

    Attributes:
        step: Updates done (the step of ``state``).
        start_step: The step the current (or last) run started at: its checkpoint's when it resumed,
            else 0 (so ``step - start_step`` updates were run).
        state: The train state pytree (params, optimiser state, ...).
        stop_training: Set by a callback to stop after the current dispatch.
        interrupted: Whether the last run was stopped by Ctrl-C or SIGTERM.
        interrupt_signal: Which (``signal.SIGINT``/``signal.SIGTERM``), or ``None``.
        last_losses: Losses of the last update; ``eval_history``: ``[(step, metrics)]`` of the run,
            a resumed run's evaluations before its checkpoint first.
        skipped_updates: Updates of the last run dropped as non-finite (``on_nonfinite="skip"``).
        step_seconds: Wall-clock seconds of the update just reported to the callbacks: the time
            between the arrivals of its dispatch's metrics and the one before (evaluations left
            out), over the dispatch's updates. ``updates_per_sec`` and the progress bar's rate use it.
        evaluates: Whether the current (or last) run evaluates: ``eval_interval > 0`` and held-out
            transitions to evaluate on (known once :meth:`train` has split the buffer).
    """

    def __init__(self, model: WorldModel, config: TrainingConfig | None = None, callbacks=(), *,
                 resume_from=None):
        if config is None:
            config = TrainingConfig()
        if not isinstance(config, TrainingConfig):
            raise ConfigError(f"config must be a TrainingConfig, got {type(config).__name__}.")
        if not isinstance(model, WorldModel):
            raise ConfigError(f"model must be a WorldModel (from create_world_model), got {type(model).__name__}.")
        self.model, self.config = model, config
        self.callbacks: list[Callback] = []
        for callback in callbacks:
            self.add_callback(callback)
        self.resume_from = resume_from
        self.learner = Learner()  # holds the train state and the step
        self.stop_training = False
        self.start_step = 0
        self.interrupted = False
        self.interrupt_signal = None
        self.last_losses: dict[str, float] = {}
        self.eval_history: list[tuple[int, dict[str, float]]] = []
        self._restored_evals, self._restored_skipped, self._skipped_total = [], 0, 0
        self.evaluates = config.eval_interval > 0
        self.step_seconds: float | None = None
        self.reports = 0  # dispatches reported to the callbacks in this run
        self.device = None
        self.program: StepProgram | None = None
        self.placement: Placement | None = None
        self._run: dict[str, Any] = {}

    @property
    def step(self) -> int:
        return self.learner.step

    @step.setter
    def step(self, value: int) -> None:
        self.learner.step = int(value)

    @property
    def state(self):
        return self.learner.state

    @state.setter
    def state(self, value) -> None:
        self.learner.state = value

    @property
    def skipped_updates(self) -> int:
        return self.learner.guard.skipped

    def current_params(self):
        """The model's params at the newest train state (``step``), copied to this host's devices.

        During a run a dispatch may be queued behind the updates being reported to the callbacks,
        so this can be ahead of the step they are given; at the multiples of a callback's
        :meth:`~worldloom.training.callbacks.Callback.sync_interval` it is that step's.
        """
        if self.state is None or self.program is None:
            raise TrainingError("current_params: expected a train state, got none (train has not run, or a "
                                "stopped run left none).")
        return _copy(self.placement.local(self.program.update.params(self.state)))

    def add_callback(self, callback: Callback) -> None:
        """Add a callback (an instance of :class:`~worldloom.training.callbacks.Callback`)."""
        if not isinstance(callback, Callback):
            raise ConfigError(f"add_callback expects a Callback instance, got {type(callback).__name__}.")
        self.callbacks.append(callback)

    # ------------------------------------------------------------ setup

    def _check_buffer(self, buffer: ReplayBuffer) -> None:
        if not isinstance(buffer, ReplayBuffer):
            raise ConfigError(f"train() expects a ReplayBuffer, got {type(buffer).__name__}.")
        cfg = self.model.config
        obs_shape, action_dim = tuple(getattr(cfg, "obs_shape", buffer.obs_shape)), getattr(cfg, "action_dim", None)
        if tuple(buffer.obs_shape) != obs_shape:
            raise ShapeError(f"The buffer holds observations of shape {list(buffer.obs_shape)}; the model expects "
                             f"{list(obs_shape)}.")
        if action_dim is not None and buffer.action_dim != action_dim:
            raise ShapeError(f"The buffer holds actions of size {buffer.action_dim}; the model expects {action_dim}.")

    def _layout(self, buffer: ReplayBuffer, segments) -> dict[str, np.dtype]:
        """Keys and dtypes of the batches the model takes, from one checked probe batch."""
        cfg = self.config
        rows = buffer.window_rows(np.random.default_rng(0), cfg.batch_size, cfg.sequence_length, segments)
        probe = buffer.gather(rows)
        prepared = self.model.prepare_batch(probe)
        layout = {}
        for key, value in prepared.items():
            if key not in probe or tuple(value.shape) != probe[key].shape:
                raise ShapeError(f"The model's prepare_batch turns {key!r} into shape {list(value.shape)}; the "
                                 "trainer feeds replay arrays unchanged and expects the buffer's shapes.")
            layout[key] = np.dtype(value.dtype)
        return layout

    def _run_callbacks(self) -> list[Callback]:
        callbacks = list(self.callbacks)
        directory = self.config.checkpoint_dir
        if directory and not any(isinstance(c, CheckpointCallback) and c.save_dir == Path(directory)
                                 for c in callbacks):
            callbacks.append(CheckpointCallback(directory, save_every=self.config.save_interval or None,
                                                keep_last=self.config.keep_checkpoints))
        return callbacks

    def _resume_source(self, resume: bool, callbacks: list[Callback]) -> Path | None:
        """Open the run's checkpoint directories (locks, one run each); the newest checkpoint to resume from.

        With several processes only process 0 opens the directories; the
        others take its run id and its choice of checkpoint.
        """
        if distributed.is_primary():
            self._lineage = _resume.open_run(self.resume_from, resume, callbacks)
        else:
            self._lineage = _resume.Lineage(run_id=None)
        callbacks.append(_resume.LineageCallback(self._lineage))  # buffer check at the start, locks freed at the end
        source = self._lineage.candidates[0] if self._lineage.candidates else None
        self._lineage.run_id, source = distributed.broadcast([self._lineage.run_id, source and str(source)])
        return None if source is None else Path(source)

    def _restore(self, source: Path, fresh_shapes, key) -> tuple[Any, jax.Array, int, int]:
        """Train state, key, step and sampler seed of the newest loadable checkpoint from ``source`` on.

        With several processes process 0 reads the checkpoint and sends it to the others.
        """
        like = {"train_state": fresh_shapes, "key": key}
        lineage = self._lineage
        if distributed.is_primary():
            meta, tree = _resume.restore(lineage, source, like, self._check_checkpoint, self.config.total_steps)
            found = {"step": int(meta["step"]), "seed": int(meta.get("sampler", {}).get("seed", self.config.seed)),
                     "run_id": meta.get("run_id"), "source": str(lineage.source), "data": lineage.data,
                     "evals": _resume.eval_history(meta), "skipped": _resume.skipped_updates(meta)}
        else:
            tree = found = None
        if distributed.process_count() > 1:
            tree, found = distributed.broadcast_arrays(tree, like), distributed.broadcast(found)
            lineage.run_id, lineage.source, lineage.data = found["run_id"], Path(found["source"]), found["data"]
        self._restored_evals = [(int(step), dict(metrics)) for step, metrics in found["evals"]]
        self._restored_skipped = found["skipped"]
        return tree["train_state"], tree["key"], found["step"], found["seed"]

    def _device_table(self, buffer: ReplayBuffer, segments, layout) -> dict | None:
        """The replay table on the device(s) when ``config.device_replay`` asks for it, else ``None``."""
        setting = self.config.device_replay
        if not use_device_replay(setting, table_nbytes(buffer, layout), self.device):
            return None
        return self.placement.replicate(build_table(buffer, segments, self.config.sequence_length, layout))

    # ------------------------------------------------------------ checkpoints

    def save_checkpoint(self, directory, keep_last: int | None = None) -> Path:
        """Save the train state at :attr:`step` to ``directory/step_<N>`` (see ``CheckpointCallback``)."""
        if self.state is None:
            raise CheckpointError("No train state to save yet: call train() first.")
        model, run = self.model, self._run
        meta = {
            "run_id": self.run_id,
            "family": model.family, "preset": model.preset, "model_config": model.config.to_dict(),
            "training_config": self.config.to_dict(),
            "sampler": {"kind": run["sampler"], "seed": run["seed"], "next_step": self.step},
            "data": _resume.buffer_data(run),
            "eval_history": [[step, metrics] for step, metrics in self.eval_history],
            "skipped_updates": self._skipped_total,
        }
        tree = {"train_state": self.state, "key": run["key"]}
        if distributed.process_count() == 1:
            return _checkpoint.save_checkpoint(directory, self.step, tree, meta, keep_last)
        # The state is replicated: process 0 writes it; no process goes on before the checkpoint is complete.
        tree = self.placement.fetch(tree)
        if distributed.is_primary():
            path = _checkpoint.save_checkpoint(directory, self.step, tree, meta, keep_last)
        else:
            path = Path(directory) / _checkpoint.checkpoint_name(self.step)
        distributed.barrier(f"worldloom-checkpoint-{self.step}")
        return path

    @property
    def run_id(self) -> str | None:
        """The id stored in this run's checkpoints (a resumed run keeps its checkpoint's); None before train()."""
        lineage = getattr(self, "_lineage", None)
        return None if lineage is None else lineage.run_id

    def checkpoint_params(self, path) -> tuple[int, Any]:
        """The step and the model's params of the checkpoint ``path`` names (a directory's newest, or one
        ``step_<N>``; the newest that loads), as NumPy arrays; nothing of this trainer changes. With several
        processes, process 0 reads it (the path need exist there only) and the others receive it.

        Raises:
            CheckpointError: no loadable checkpoint there, or one of another model.
        """
        update = self.model.make_update(self.config.optimizer_settings())
        like = {"train_state": jax.eval_shape(update.init, self.model.params),
                "key": jax.eval_shape(jax.random.PRNGKey, 0)}
        # The newest that loads, as a resume takes it (a damaged newer one is skipped, with a warning). With
        # several processes process 0 reads it and sends it to the others, as a resume does.
        tree = step = None
        if distributed.is_primary():
            _, meta, tree = _resume.first_loadable(_checkpoint.resume_candidates(path), like,
                                                   self._check_checkpoint)
            step = int(meta["step"])
        if distributed.process_count() > 1:
            tree, step = distributed.broadcast_arrays(tree, like), distributed.broadcast(step)
        return step, update.params(tree["train_state"])

    def _check_checkpoint(self, source: Path, meta: dict) -> None:
        """CheckpointError for a checkpoint of another model; a warning for other run settings."""
        model = self.model
        if meta.get("family") != model.family or meta.get("model_config") != model.config.to_dict():
            raise CheckpointError(f"The checkpoint at {source} was written for a {meta.get('family')} model with "
                                  f"config {meta.get('model_config')}; this model is {model.family} with "
                                  f"{model.config.to_dict()}.")
        saved = meta.get("training_config", {})
        changed = [f for f in _RUN_FIELDS if f in saved and saved[f] != getattr(self.config, f)]
        if changed:
            warnings.warn(f"Resuming from {source} with different {changed} than the checkpoint's run; the "
                          "result will differ from an uninterrupted run.", RuntimeWarning, stacklevel=5)

    # ------------------------------------------------------------ training

    def train(self, buffer: ReplayBuffer, resume: bool = False) -> WorldModel:
        """Run ``config.total_steps`` updates (fewer when resuming) and return the model.

        Each call starts from the model's current params with a fresh optimiser
        state, unless it resumes from a checkpoint (``resume_from`` or
        ``resume=True`` with a checkpoint directory configured). Ctrl-C (or
        SIGTERM) stops after the current dispatch: checkpoints are saved and the model
        (trained so far) is returned, with :attr:`interrupted` set.

        Returns:
            The same model handle, holding the trained params.

        Raises:
            TrainingError: a non-finite update under ``on_nonfinite="stop"`` (then
                :attr:`step`, :attr:`state` and the model are those of the last finite
                update; ``state`` is ``None`` if later dispatches were queued), or more
                than ``max_consecutive_skips`` in a row under ``"skip"``. No checkpoint
                is written; other callbacks get ``on_train_end``.
        """
        config = self.config
        self._check_buffer(buffer)
        device = training_device(config.device)
        place = self.placement = Placement(device, data_parallel_mesh(config.data_parallel, device,
                                                                      config.batch_size))
        self.device = place.device
        model = self.model.to(self.device)
        callbacks = self._run_callbacks()
        program = self.program = step_program(model, config.optimizer_settings(), config.steps_per_dispatch,
                                              config.on_nonfinite)
        train_segments, eval_segments, layout, shard = self._split(buffer)
        self._lineage = None
        try:
            train_key, eval_key, seed = self._start(model, program, place, resume, callbacks)
            return self._train(buffer, model, program, place, callbacks, train_segments, eval_segments, layout,
                               shard, train_key, eval_key, seed)
        except BaseException:
            if self._lineage is not None:  # whatever stopped the run, its checkpoint directories are free again
                self._lineage.close()
            raise

    def _train(self, buffer: ReplayBuffer, model: WorldModel, program: StepProgram, place: Placement,
               callbacks: list[Callback], train_segments, eval_segments, layout, shard, train_key, eval_key,
               seed) -> WorldModel:
        """:meth:`train` once the train state is placed and the checkpoint directories are held."""
        config = self.config
        table = None if shard is not None else self._device_table(buffer, train_segments, layout)
        self._run = {"key": self._key, "seed": seed, "num_transitions": buffer.num_transitions,
                     "train_segments": train_segments.tolist(),
                     "eval_segments": None if eval_segments is None else eval_segments.tolist(),
                     "sampler": "per-step" if table is None else "device",
                     "buffer_digest": _resume.buffer_digest(buffer)}
        slots = config.steps_per_dispatch
        sampler = WindowSampler(buffer, config.batch_size, config.sequence_length, seed, train_segments, layout,
                                slots, place, shard)
        eval_chunks = []
        if eval_segments is not None:
            eval_sampler = WindowSampler(buffer, config.batch_size, config.sequence_length, seed, eval_segments,
                                         layout, slots, place, shard)
            eval_chunks = eval_sampler.fixed_chunks(config.eval_batches, _EVAL_STREAM)
        self.evaluates = bool(eval_chunks)
        intervals = [c.sync_interval() for c in callbacks] + [config.eval_interval if eval_chunks else 0]
        self._begin(callbacks, place)
        sample = self._dispatcher(program, place, sampler, table, train_key, seed)
        evaluator = Evaluator(config.eval_interval if eval_chunks else 0,
                              lambda step: self._evaluate(eval_chunks, eval_key, callbacks), self.step)
        if eval_chunks and self.step > 0:
            if any(step == self.step for step, _ in self.eval_history):
                evaluator.last = self.step  # restored with its checkpoint: not repeated at the end
            elif self.step % config.eval_interval == 0 and self.step < config.total_steps:
                # A periodic checkpoint is written before its step's evaluation runs: run it now, on the same
                # state and held-out batches, as the interrupted run did.
                evaluator(self.step, final=True)
        try:
            with distributed.collective(lambda: f"training after step {self.step}"):
                self._loop(chunk_plan(self.step, config.total_steps, slots, intervals), sample, evaluator,
                           config.optimizer_settings().schedule(), callbacks, [i for i in intervals if i])
        except (TrainingError, DistributedError) as err:
            self._abandon(err, model, program, place, callbacks)
            raise
        if self.interrupted:
            print(f"\nTraining interrupted at step {self.step}.", file=sys.stderr)
        elif eval_chunks and self.step > 0:
            evaluator(self.step, final=True)
        model.load_params(self.current_params())
        for callback in callbacks:
            callback.on_train_end(self)
        return model

    def _split(self, buffer: ReplayBuffer) -> tuple:
        """``(train_segments, eval_segments, layout, shard)``: the held-out split, the batch layout, and this
        process's block of the episodes under ``replay_sharding="process"`` (else ``None``)."""
        config = self.config
        eval_on = config.eval_interval > 0
        train_segments, eval_segments = split_segments(buffer, config.eval_fraction if eval_on else 0.0,
                                                       config.sequence_length)
        if eval_on and config.eval_fraction == 0:
            warnings.warn(f"Evaluation is off: eval_interval={config.eval_interval} asks for evaluations, but "
                          "eval_fraction=0 holds no transitions out for them.", RuntimeWarning, stacklevel=3)
        elif eval_on and eval_segments is None:
            warnings.warn(f"Evaluation is off: the buffer ({buffer.num_transitions} transitions in "
                          f"{buffer.num_episodes} episodes) is too small to hold out "
                          f"sequence_length={config.sequence_length} transitions and keep as many for training.",
                          RuntimeWarning, stacklevel=3)
        shard = None
        if config.replay_sharding == "process" and distributed.process_count() > 1:
            shard = (distributed.process_index(), distributed.process_count())
            try:
                layout, problem = self._layout(buffer, train_segments), None
            except (DataError, ShapeError) as err:
                layout, problem = None, err
            _check_same_fields(layout, eval_segments, problem)
        else:
            layout = self._layout(buffer, train_segments)
            if distributed.process_count() > 1:
                _check_same_layout(buffer, train_segments, eval_segments)
        return train_segments, eval_segments, layout, shard

    def _start(self, model: WorldModel, program: StepProgram, place: Placement, resume: bool,
               callbacks: list[Callback]) -> tuple:
        """The train state (fresh, or restored from a checkpoint) placed on the devices; returns
        ``(train_key, eval_key, sampling seed)`` and keeps the run's key as ``self._key``."""
        key, seed = jax.random.PRNGKey(self.config.seed), self.config.seed
        self._restored_evals, self._restored_skipped = [], 0
        source = self._resume_source(resume, callbacks)
        if source is not None:
            shapes = jax.eval_shape(program.update.init, model.params)
            state, key, self.step, seed = self._restore(source, shapes, key)
        else:
            state, self.step = program.update.init(model.params), 0  # init owns copies of the params
        self.start_step = self.step
        # Committed on the device (replicated on a mesh), so every dispatch hits the same executable.
        self.state, self._key = place.replicate((state, key))
        train_key, eval_key = jax.random.split(self._key)
        return train_key, eval_key, seed

    def _begin(self, callbacks: list[Callback], place: Placement) -> None:
        """Reset the run's flags and counters (the learner's guard, fetch and queue) and start the callbacks."""
        config = self.config
        self.stop_training = self.interrupted = False
        self.interrupt_signal = None
        self.eval_history = list(self._restored_evals)  # a resumed run's earlier evaluations first (_start)
        self._skipped_total = self._restored_skipped  # updates not applied before the next one reported
        learner = self.learner
        learner.guard = NonFiniteGuard(config.on_nonfinite, config.max_consecutive_skips,
                                       "TrainingConfig.on_nonfinite")
        learner.fetch, learner.max_in_flight = place.fetch, config.max_in_flight
        for callback in callbacks:
            callback.on_train_begin(self)
        self.step_seconds, self._reported_at, self.reports = None, time.perf_counter(), 0

    def _dispatcher(self, program: StepProgram, place: Placement, sampler: WindowSampler, table, train_key,
                    seed: int):
        """Sets the learner's call of one K-update program; returns how the batches of a dispatch are made
        (``sample(start, count) -> (batches, None)``, sampled ahead; nothing with a device table)."""
        config = self.config
        if table is None:
            run = program.runner(place.mesh)

            def dispatch(state, batches, start, count):
                return run(state, batches, train_key, place.scalar(np.int32(start)), place.scalar(np.int32(count)))

            self.learner.dispatch = dispatch
            return lambda start, count: (sampler.chunk(start, count), None)
        run = program.runner(place.mesh, (config.batch_size, config.sequence_length))
        sample_key = place.replicate(jax.random.fold_in(jax.random.PRNGKey(seed), _DEVICE_REPLAY_STREAM))

        def dispatch_table(state, batches, start, count):
            return run(state, table, train_key, sample_key, place.scalar(np.int32(start)),
                       place.scalar(np.int32(count)))

        self.learner.dispatch = dispatch_table
        return lambda start, count: (None, None)

    def _abandon(self, err: Exception, model: WorldModel, program: StepProgram, place: Placement,
                 callbacks: list[Callback]) -> None:
        """After a stopping error: the model keeps the last finite state; callbacks end without a checkpoint."""
        if isinstance(err, DistributedError):
            self.state = None  # its arrays span the lost process
        if self.state is not None:  # the last finite state
            model.load_params(self.current_params())
        for callback in callbacks:  # logs flushed, progress closed; no checkpoint is written
            if not isinstance(callback, CheckpointCallback):
                callback.on_train_end(self)

    def _loop(self, plan, sample, evaluator: Evaluator, schedule, callbacks: list[Callback],
              sync_intervals: list[int]) -> None:
        """The learner's run over ``plan`` until done, stopped or interrupted.

        Up to ``config.max_in_flight`` dispatches are queued before the oldest
        one's metrics are waited for and reported; the queue is drained at
        every step a callback or evaluation needs the state of (``sync_intervals``).
        """

        def report(start, count, metrics, outputs, note):
            self._report(start, count, metrics, schedule, callbacks)

        with stop_requests("stopping after the current dispatch (a checkpoint is saved if one is configured)") \
                as request:

            def after(step: int) -> bool:
                evaluator(step)
                self.interrupted, self.interrupt_signal = request.stop, request.signal
                return self.stop_training or self.interrupted

            try:
                self.learner.run(plan, sample, report, prefetch=self.config.prefetch,
                                 sync=lambda step: any(step % i == 0 for i in sync_intervals), after=after)
            except KeyboardInterrupt:
                # A second Ctrl-C aborts; so does one that left the donated state unusable.
                if request.aborted or any(leaf.is_deleted() for leaf in jax.tree_util.tree_leaves(self.state)):
                    raise
                self.interrupted = True
                self.interrupt_signal = signal.SIGINT

    def _report(self, start: int, count: int, metrics: dict, schedule, callbacks: list[Callback]) -> None:
        """Hand each update's losses (Python floats, plus ``lr``) to the callbacks.

        ``lr`` is the rate the update ran with: the schedule at the optimiser's count, which a skipped
        update (``on_nonfinite="skip"``) does not advance.
        """
        columns = {name: np.asarray(values, np.float64)[:count].tolist() for name, values in metrics.items()}
        skipped = np.asarray(columns.get(SKIPPED, [0.0] * count)) > 0
        lr = np.broadcast_to(np.asarray(schedule(applied_before(start, skipped, self._skipped_total)), np.float64),
                             (count,))
        self._skipped_total += int(skipped.sum())
        now = time.perf_counter()
        self.step_seconds, self._reported_at = (now - self._reported_at) / max(count, 1), now
        self.reports += 1
        for index in range(count):
            losses = {name: values[index] for name, values in columns.items()}
            losses["lr"] = float(lr[index])
            self.last_losses = losses
            for callback in callbacks:
                callback.on_step_end(start + index + 1, losses)

    def _evaluate(self, eval_chunks: list, eval_key, callbacks: list[Callback]) -> None:
        """Mean metrics of the update on each held-out batch, computed on a copy of the state (discarded)."""
        totals: dict[str, float] = {}
        place = self.placement
        run = self.program.runner(place.mesh)
        for index, chunk in enumerate(eval_chunks):
            _, metrics = run(_copy(self.state), chunk, eval_key, place.scalar(np.int32(index)),
                             place.scalar(np.int32(1)))
            for name, values in place.fetch(metrics).items():
                if name == SKIPPED:
                    continue
                totals[name] = totals.get(name, 0.0) + float(values[0])
        result = {f"eval/{name}": total / len(eval_chunks) for name, total in totals.items()}
        self.eval_history.append((self.step, result))
        for callback in callbacks:
            callback.on_eval_end(self.step, result)
        self._reported_at = time.perf_counter()  # the next updates' time leaves the evaluation out

    @property
    def compile_count(self) -> int:
        """How many executables of the multi-update program exist (one per compile) so far."""
        return 0 if self.program is None else self.program.compiles()


def train(model: WorldModel, buffer: ReplayBuffer, total_steps: int = 50_000, batch_size: int = 16,
          sequence_length: int = 50, learning_rate: float = 3e-4, *, callbacks=(), progress: bool = True,
          **more: Any) -> WorldModel:
    """Train ``model`` on ``buffer`` in one call, on the model's device unless ``device`` is given.

    Args:
        model: A ``WorldModel`` from ``create_world_model``.
        buffer: The :class:`ReplayBuffer` to sample windows from.
        total_steps, batch_size, sequence_length, learning_rate: As in :class:`TrainingConfig`.
        callbacks: Callbacks to add.
        progress: Show a progress bar (a line every 30 seconds where stderr is not a terminal), unless
            ``callbacks`` holds a ``ProgressCallback`` of its own.
        **more: Any other :class:`TrainingConfig` field (``device``, ``seed``, ...). ``device``
            defaults to the model's (``TrainingConfig``'s own default is ``"cuda"``).

    Returns:
        The same model, holding the trained params.
    """
    if "device" not in more and isinstance(model, WorldModel):
        more["device"] = device_spec(model.device)
    config = TrainingConfig().replace(total_steps=total_steps, batch_size=batch_size,
                                      sequence_length=sequence_length, learning_rate=learning_rate, **more)
    trainer = Trainer(model, config, callbacks)
    if progress and not any(isinstance(callback, ProgressCallback) for callback in trainer.callbacks):
        trainer.add_callback(ProgressCallback())
    return trainer.train(buffer)
