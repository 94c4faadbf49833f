"""Callbacks: hooks into a :class:`~worldloom.training.Trainer` run.

Hooks, in order: ``on_train_begin(trainer)``; ``on_step_end(step, losses)``
after every update (``step`` counts updates done, from 1; ``losses`` maps
names such as ``"loss"``, ``"loss/rec"``, ``"lr"`` to Python floats);
``on_eval_end(step, metrics)`` after each evaluation on held-out windows
(``"eval/loss"``, ...); ``on_train_end(trainer)``.

Updates run ``steps_per_dispatch`` at a time, so ``on_step_end`` is called for
each update of a dispatch once the dispatch is done; ``trainer.step`` is the
step of the train state (the end of the dispatch). A callback that needs the
state at exact steps (a checkpoint) returns that period from
:meth:`Callback.sync_interval`; the trainer then ends a dispatch there.
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
import sys
import time
import warnings
from pathlib import Path

from worldloom.core.config import flag, require
from worldloom.core.errors import CheckpointError, ConfigError
from worldloom.core.files import WriterLock
from worldloom.distributed import is_primary
from worldloom.models.checkpoint import is_saved_model, record_info
from worldloom.training._checkpoint import BEST_DIR, list_checkpoints, open_directory, run_id_of
from worldloom.training._episode import integer
from worldloom.training.guard import SKIPPED


class Callback:
    """Base class: override the hooks you need.

    Example:
        >>> class PrintLoss(Callback):
        ...     def on_step_end(self, step, losses):
        ...         if step % 1000 == 0:
        ...             print(f"Step {step}: loss={losses['loss']:.4f}")
    """

    trainer = None

    def sync_interval(self) -> int | None:
        """Steps at whose multiples this callback needs the train state (None: never)."""
        return None

    def on_train_begin(self, trainer) -> None:
        self.trainer = trainer

    def on_step_end(self, step: int, losses: dict[str, float]) -> None:
        pass

    def on_eval_end(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def on_train_end(self, trainer) -> None:
        pass


class ProgressCallback(Callback):
    """A progress bar with the latest losses and updates per second.

    On a terminal it is a tqdm bar; redirected to a file it writes a plain
    line every ``interval`` seconds instead of redrawing at every step. The
    rate and ETA leave out the first dispatch, which includes compilation.

    Args:
        refresh_every: Steps between postfix updates.
        keys: Loss names shown besides ``loss`` (those present).
        file: Where to write (default ``sys.stderr``).
        interval: Seconds between lines when ``file`` is not a terminal.
        desc: The bar's label.
    """

    def __init__(self, refresh_every: int = 10, keys: tuple = ("loss/rec", "loss/rew", "loss/consistency"),
                 file=None, interval: float = 30.0, desc: str = "train"):
        self.refresh_every = integer("refresh_every", refresh_every)
        require(not isinstance(keys, str) and all(isinstance(key, str) for key in keys),
                f"keys: expected loss names, got {keys!r}.")
        self.keys = tuple(keys)
        self.file, self.interval = file, _amount("interval", interval)
        require(isinstance(desc, str), f"desc: expected a label, got {type(desc).__name__} {desc!r}.")
        self.desc = desc
        self.bar = None
        self._eval = None

    def on_train_begin(self, trainer) -> None:
        from worldloom.core.progress import progress

        super().on_train_begin(trainer)
        if not is_primary():  # several processes: process 0 shows the run
            self.bar = None
            return
        total = trainer.config.total_steps
        # No rate or ETA until the first dispatch, which carries the compilation, is done
        self.bar = progress(total, initial=min(trainer.step, total), desc=self.desc, file=self.file or sys.stderr,
                            interval=self.interval, measured=False)
        self._rate = UpdateRate(trainer)
        self._compiled = False
        self._shown: dict[str, str] = {}
        if getattr(trainer, "compile_count", None) == 0:
            self.bar.note("compiling the update program; the first dispatch waits for it")

    def on_step_end(self, step: int, losses: dict[str, float]) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if not self._compiled:  # the first step's dispatch carried the compilation
            self._compiled = True
            self.bar.restart_clock()
        self._rate.add()  # not counted for the first dispatch
        if step % self.refresh_every == 0:
            rate = self._rate.reset()
            shown = {"loss": f"{losses['loss']:.4f}"}
            shown.update({key.split("/")[-1]: f"{losses[key]:.3f}" for key in self.keys if key in losses})
            if self._eval is not None:
                shown["eval"] = f"{self._eval:.4f}"
            if rate is not None:  # none while only the first dispatch (the compilation's) is done
                shown["upd/s"] = f"{rate:.1f}"
            self._shown = shown
            self.bar.set_postfix(shown, refresh=False)

    def on_eval_end(self, step: int, metrics: dict[str, float]) -> None:
        self._eval = metrics.get("eval/loss")
        if self.bar is not None and self._eval is not None:
            losses = getattr(self.trainer, "last_losses", None) or {}
            shown = self._shown or ({"loss": f"{losses['loss']:.4f}"} if "loss" in losses else {})
            self._shown = {**shown, "eval": f"{self._eval:.4f}"}
            self.bar.set_postfix(self._shown, refresh=False)  # shown with the next line (the final one too)

    def on_train_end(self, trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class LoggingCallback(Callback):
    """TensorBoard scalars (tensorboardX) and/or console lines.

    Every ``log_interval`` steps it writes the mean of each training metric
    over the interval as ``train/<name>`` (``train/loss``, ``train/loss/rec``,
    ``train/lr``, ...) plus ``train/updates_per_sec``; evaluations are written
    as they come (``eval/loss``, ...). A write that fails (a full disk, a
    read-only directory) warns once and logging stops; training goes on.

    Args:
        log_dir: Directory of the TensorBoard event files (``None``: ``./logs``).
        log_to_console: Also print one line per log step.
        log_interval: Steps between writes; ``None`` uses ``TrainingConfig.log_interval``
            (0 there: only at the end).
        log_to_tensorboard: Write TensorBoard events; ``None``: when ``log_dir``
            is given, or when nothing goes to the console.
        metrics_file: Also write every logged value there, one JSON line per
            logged step keyed by the TensorBoard tags (``worldloom train``:
            ``RUN/metrics.jsonl``); ``None``: no such file.
        logger: ``"wandb"`` also logs to Weights & Biases (the ``wandb`` extra;
            ``WANDB_MODE=offline`` keeps the run in ``wandb/`` beside
            ``metrics_file``, else beside ``log_dir``).

    Raises:
        ConfigError: both outputs off, a ``log_dir`` that cannot be a directory,
            or an unknown ``logger`` (or ``"wandb"`` without its package).
    """

    def __init__(self, log_dir: str | os.PathLike | None = None, log_to_console: bool = False,
                 log_interval: int | None = None, log_to_tensorboard: bool | None = None,
                 metrics_file: str | os.PathLike | None = None, logger: str = "tensorboard"):
        log_interval = _every("log_interval", log_interval)
        self.log_to_console = flag("log_to_console", log_to_console)
        if log_to_tensorboard is None:
            log_to_tensorboard = log_dir is not None or not self.log_to_console
        self.log_to_tensorboard = flag("log_to_tensorboard", log_to_tensorboard)
        require(self.log_to_tensorboard or self.log_to_console or metrics_file is not None or logger == "wandb",
                "LoggingCallback logs nothing with log_to_console=False and log_to_tensorboard=False: expected "
                "at least one of them True (or a metrics_file, or logger='wandb').")
        self.log_dir = Path("./logs" if log_dir is None else _path("log_dir", log_dir))
        if self.log_to_tensorboard:
            _check_directory(self.log_dir, "log_dir")
        self.log_interval = log_interval
        from worldloom.training.logs import check_logger

        self.metrics_file = None if metrics_file is None else Path(_path("metrics_file", metrics_file))
        self.logger = check_logger(logger)
        self.writer = None

    def on_train_begin(self, trainer) -> None:
        super().on_train_begin(trainer)
        self._interval = self.log_interval or trainer.config.log_interval or math.inf
        self._active = is_primary()  # several processes: process 0 logs the run
        if self._active and (self.log_to_tensorboard or self.metrics_file is not None or self.logger == "wandb"):
            from worldloom.training.logs import JsonlWriter, LogSink, LogSinks, WandbWriter, tensorboard_sink

            # Each sink fails on its own: a failing disk or service warns once; training goes on.
            sinks = [tensorboard_sink(self.log_dir)] if self.log_to_tensorboard else []
            if self.metrics_file is not None:
                sinks.append(LogSink(lambda: JsonlWriter(self.metrics_file), self.metrics_file))
            if self.logger == "wandb":
                where = self.log_dir if self.metrics_file is None else self.metrics_file.parent
                sinks.append(LogSink(lambda: WandbWriter(where, trainer.config.to_dict()), "W&B"))
            self.writer = LogSinks(sinks)
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._rate = UpdateRate(trainer)

    def on_step_end(self, step: int, losses: dict[str, float]) -> None:
        if not self._active:
            return
        for name, value in (losses.items() if applied(losses) else [(SKIPPED, losses[SKIPPED])]):
            self._sums[name] = self._sums.get(name, 0.0) + value
            self._counts[name] = self._counts.get(name, 0) + 1
        self._rate.add()
        if step % self._interval == 0:
            self._flush(step)

    def _flush(self, step: int) -> None:
        if not getattr(self, "_counts", None):  # no update since the last flush
            return
        means = {name: total / self._counts[name] for name, total in self._sums.items()}
        rate = self._rate.reset()
        if rate is not None:  # none for updates of the first dispatch alone (its time is the compilation's)
            means["updates_per_sec"] = rate
        if self.writer is not None:
            for name, value in means.items():
                self.writer.add_scalar(f"train/{name}", value, step)
            self.writer.flush()
        if self.log_to_console:
            self._print(step, "train", means)
        self._sums, self._counts = {}, {}

    def on_eval_end(self, step: int, metrics: dict[str, float]) -> None:
        if not self._active:
            return
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(name, value, step)
            self.writer.flush()
        if self.log_to_console:
            self._print(step, "eval", {k.removeprefix("eval/"): v for k, v in metrics.items()})

    @staticmethod
    def _print(step: int, kind: str, values: dict[str, float]) -> None:
        from tqdm.auto import tqdm

        text = " | ".join(f"{name} {value:.4g}" for name, value in sorted(values.items()))
        tqdm.write(f"[{kind}] step {step} | {text}")

    def on_train_end(self, trainer) -> None:
        self._flush(trainer.step)
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class CheckpointCallback(Callback):
    """Saves the full train state every ``save_every`` steps and at the end, and the best model so far.

    A checkpoint (``save_dir/step_<N>/``) holds the params, the optimiser and
    other training state, the RNG key and the sampler position, so
    ``Trainer(model, config, resume_from=save_dir)`` (or
    ``trainer.train(buffer, resume=True)``) continues exactly where it
    stopped. Written atomically with orbax; only the newest ``keep_last`` of
    this run are kept. A run stopped by Ctrl-C saves here before it returns.
    While a run trains, it holds the directory's writer lock.

    With ``save_best``, ``save_dir/best/`` is a saved model
    (``create_world_model(save_dir + "/best")``) of the state with the best
    ``monitor`` value so far; its ``worldloom.json["info"]`` holds the step,
    metric and value. The metric is the held-out ``eval/<monitor>`` at each
    evaluation when the run evaluates, else the training ``monitor``
    averaged over the updates since the previous checkpoint, at each
    checkpoint. ``keep_last`` never deletes it.

    Args:
        save_dir: Directory of the checkpoints (created when missing).
        save_every: Steps between checkpoints (``None``: only at the end).
        keep_last: How many checkpoints of this run to keep (``None``: all).
        save_best: Keep ``save_dir/best`` (see above).
        monitor: The metric ``save_best`` follows (``"loss"``, ``"loss/rec"``,
            ``"eval/loss"``, ...).
        mode: ``"min"`` (lower is better) or ``"max"``.

    Raises:
        ConfigError: invalid values, or a ``save_dir`` that cannot be a
            directory (an existing file, a file among its parents).
    """

    def __init__(self, save_dir: str | os.PathLike = "./checkpoints", save_every: int | None = 10_000,
                 keep_last: int | None = 3, save_best: bool = True, monitor: str = "loss", mode: str = "min"):
        require(mode in ("min", "max"), f"mode must be 'min' or 'max', got {mode!r}.")
        require(isinstance(monitor, str) and monitor, f"monitor must be a metric name, got {monitor!r}.")
        self.save_dir = _check_directory(save_dir, "save_dir")
        self.save_every = _every("save_every", save_every)
        self.keep_last = _every("keep_last", keep_last)
        self.save_best, self.monitor, self.mode = flag("save_best", save_best), monitor, mode
        self.saved: list[Path] = []
        self.best: dict | None = None
        self._lock = None

    def sync_interval(self) -> int | None:
        return self.save_every

    def acquire(self) -> None:
        """Take ``save_dir``'s writer lock and clean up leftovers there (the trainer does this before a run).

        Raises:
            CheckpointError: another process is writing ``save_dir``.
        """
        if not is_primary():  # several processes: process 0 writes the checkpoints
            return
        if self._lock is None:
            self._lock = WriterLock(self.save_dir)
        self._lock.acquire()
        open_directory(self.save_dir)

    def release(self) -> None:
        """Give ``save_dir``'s writer lock back."""
        if self._lock is not None:
            self._lock.release()

    def on_train_begin(self, trainer) -> None:
        super().on_train_begin(trainer)
        self._last_step = trainer.step
        self._sum, self._count, self._checked = 0.0, 0, False
        self.best, self._on_eval = None, self.monitor.startswith("eval/")
        best = self.save_dir / BEST_DIR
        if self.save_best and os.path.lexists(best) and not is_saved_model(best) and (
                not best.is_dir() or any(best.iterdir())):
            raise CheckpointError(f"{str(best)!r} holds files that are not a saved worldloom model: "
                                  "CheckpointCallback(save_best=True) writes the best model there. Expected no "
                                  f"{BEST_DIR}/ or one it wrote; move those files, or pass save_best=False.")
        if self.save_best and run_id_of(best) == trainer.run_id and trainer.run_id is not None:
            info = _best_info(best)
            if info.get("mode") == self.mode and info.get("monitor") == self.monitor:
                self.best = info  # a resumed run keeps its best so far
                self._on_eval = self._on_eval or info["metric"].startswith("eval/")

    def on_step_end(self, step: int, losses: dict[str, float]) -> None:
        if self.save_best:
            if not self._checked:
                self._checked = True
                warn_if_missing(self, self.monitor, losses, self.trainer)
            if self.monitor in losses and applied(losses):
                self._sum, self._count = self._sum + losses[self.monitor], self._count + 1
        if self.save_every and step % self.save_every == 0 and step == self.trainer.step:
            self._save()

    def on_eval_end(self, step: int, metrics: dict[str, float]) -> None:
        metric = self.monitor if self.monitor.startswith("eval/") else f"eval/{self.monitor}"
        if self.save_best and metric in metrics and step == self.trainer.step:
            if not self._on_eval:
                self.best, self._on_eval = None, True  # held-out metrics supersede the training one
            self._consider(step, metric, metrics[metric])

    def _save(self) -> None:
        path = self.trainer.save_checkpoint(self.save_dir, keep_last=self.keep_last)
        self.saved.append(path)
        self._last_step = self.trainer.step
        if self.save_best and self._count and not self._on_eval:
            self._consider(self.trainer.step, self.monitor, self._sum / self._count)
        self._sum, self._count = 0.0, 0

    def _consider(self, step: int, metric: str, value: float) -> None:
        """Save ``save_dir/best`` when ``value`` improves on the best so far."""
        if not math.isfinite(value):
            return
        if self.best is not None and not (value < self.best["value"] if self.mode == "min"
                                          else value > self.best["value"]):
            return
        from worldloom.models.checkpoint import save_model

        trainer = self.trainer
        info = {"step": int(step), "metric": metric, "value": float(value), "monitor": self.monitor,
                "mode": self.mode, "run_id": trainer.run_id}
        if is_primary():
            params = trainer.placement.fetch(trainer.program.update.params(trainer.state))
            save_model(trainer.model, self.save_dir / BEST_DIR, params=params, info=info)
        self.best = info

    def on_train_end(self, trainer) -> None:
        try:
            if trainer.state is not None and trainer.step > self._last_step:
                self._save()
        finally:
            self.release()
        if trainer.interrupted and self.saved:
            print(f"Checkpoint of step {trainer.step} saved to {self.saved[-1]}", file=sys.stderr)

    def checkpoints(self) -> list[Path]:
        """The checkpoints now in ``save_dir``, oldest first."""
        return [path for _, path in list_checkpoints(self.save_dir)]


def _best_info(best: Path) -> dict:
    info = record_info(best)
    return info if isinstance(info, dict) and isinstance(info.get("value"), (int, float)) else {}


def _path(name: str, value):
    """``value`` if it is a path (a string or ``os.PathLike``); ConfigError otherwise."""
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ConfigError(f"{name}: expected a path, got {type(value).__name__} {value!r}.")
    return value


def _amount(name: str, value, minimum: float = 0.0) -> float:
    """``value`` as a float if it is a finite real number >= ``minimum``; ConfigError otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{name}: expected a finite number >= {minimum:g}, got {type(value).__name__} {value!r}.")
    return float(value)


def _every(name: str, value) -> int | None:
    """An interval in steps: an integer >= 1, or None."""
    return None if value is None else integer(name, value)


def _check_directory(path: Path, name: str) -> Path:
    """``path`` when it is, or can be created as, a directory; ConfigError naming what is in the way."""
    path = Path(_path(name, path))
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{name}={str(path)!r}: expected a directory (or a path to create one), got an existing "
                          "file.")
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise ConfigError(f"{name}={str(path)!r}: expected a path where a directory can be created, got the file "
                          f"{str(ancestor)!r} in the way.")
    if not path.exists() and ancestor.exists() and not os.access(ancestor, os.W_OK | os.X_OK):
        raise ConfigError(f"{name}={str(path)!r}: expected a writable location, got {str(ancestor)!r} not writable.")
    return path


class UpdateRate:
    """Updates per second over the updates counted since the last :meth:`reset`.

    Each update counts the trainer's ``step_seconds``: its dispatch's time
    shared among the dispatch's updates, so a rate taken inside a dispatch
    (an interval shorter than ``steps_per_dispatch``) is that of the
    dispatch, not of the instant the metrics were handed over. Without
    ``step_seconds`` (a trainer of another kind), the wall time since the last reset.
    The updates of a run's first dispatch are not counted: it carries the
    compilation of the update program.
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self.count, self.seconds, self.started = 0, 0.0, time.perf_counter()

    def add(self) -> None:
        if getattr(self.trainer, "reports", None) == 1:  # the first dispatch: the clock starts after it
            self.started = time.perf_counter()
            return
        seconds = getattr(self.trainer, "step_seconds", None)
        self.count += 1
        self.seconds = None if seconds is None or self.seconds is None else self.seconds + seconds

    def reset(self) -> float | None:
        """The rate since the last reset (None when no update was counted), and start counting anew."""
        now = time.perf_counter()
        seconds = now - self.started if self.seconds is None else self.seconds
        rate = self.count / max(seconds, 1e-9) if self.count else None
        self.count, self.seconds, self.started = 0, 0.0, now
        return rate


def applied(losses: dict[str, float]) -> bool:
    """Whether the update of ``losses`` was applied: not one ``on_nonfinite="skip"`` dropped (its non-finite
    losses are reported, flagged ``skipped``, and left out of the callbacks' means and comparisons)."""
    return not losses.get(SKIPPED, 0.0)


def warn_if_missing(owner: Callback, monitor: str, losses: dict[str, float], trainer) -> None:
    """Warn (at the first step) when ``monitor`` will never be reported, naming close matches."""
    name = monitor.removeprefix("eval/")
    config = getattr(trainer, "config", None)
    interval = getattr(config, "eval_interval", 0)
    evaluates = getattr(trainer, "evaluates", interval > 0)
    if name in losses and (name == monitor or evaluates):
        return
    known = sorted(losses) + [f"eval/{key}" for key in sorted(losses) if evaluates]
    close = difflib.get_close_matches(monitor, known, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else f" Reported: {known}."
    if name not in losses:
        why = "no update reports it"
    elif interval <= 0:
        why = "the run does not evaluate (eval_interval=0)"
    else:
        why = (f"the run does not evaluate (eval_fraction={getattr(config, 'eval_fraction', None)!r} holds no "
               "transitions out of this buffer)")
    warnings.warn(f"{type(owner).__name__}(monitor={monitor!r}) will never see its metric: {why}.{hint}",
                  RuntimeWarning, stacklevel=2)


class EarlyStoppingCallback(Callback):
    """Stops training when a metric has not improved for ``patience`` steps.

    Args:
        monitor: A training loss name (``"loss"``, ``"loss/rec"``, ...) seen every
            step, or an evaluation metric (``"eval/loss"``) seen at each evaluation.
        patience: Steps without an improvement of more than ``min_delta``
            after which training stops (at the end of the current dispatch).
        min_delta: Smallest decrease that counts as an improvement.
        mode: ``"min"`` (lower is better) or ``"max"``.

    Attributes:
        best, best_step: The best value of ``monitor`` seen, and its step.
        stopped_step: The step at which it stopped training (None while it has not);
            it says so on stderr, with the best value.
    """

    def __init__(self, monitor: str = "loss", patience: int = 5000, min_delta: float = 1e-4, mode: str = "min"):
        require(isinstance(monitor, str) and monitor, f"monitor must be a metric name, got {monitor!r}.")
        require(mode in ("min", "max"), f"mode must be 'min' or 'max', got {mode!r}.")
        self.monitor, self.mode = monitor, mode
        self.patience, self.min_delta = integer("patience", patience), _amount("min_delta", min_delta)
        self.best: float | None = None
        self.best_step = 0
        self.stopped_step: int | None = None

    def on_train_begin(self, trainer) -> None:
        super().on_train_begin(trainer)
        self.best, self.best_step, self.stopped_step = None, trainer.step, None
        self._checked = False

    def _observe(self, step: int, values: dict[str, float]) -> None:
        if self.monitor not in values:
            return
        value, sign = values[self.monitor], (1.0 if self.mode == "min" else -1.0)
        if self.best is None or sign * value < sign * self.best - self.min_delta:
            self.best, self.best_step = value, step
        elif step - self.best_step >= self.patience and self.stopped_step is None:
            self.stopped_step = step
            self.trainer.stop_training = True
            if is_primary():
                from tqdm.auto import tqdm

                tqdm.write(f"Early stopping at step {step}: {self.monitor} has not improved by more than "
                           f"{self.min_delta:g} in {step - self.best_step} steps (patience {self.patience}); best "
                           f"{self.best:.6g} at step {self.best_step}.", file=sys.stderr)

    def on_step_end(self, step: int, losses: dict[str, float]) -> None:
        if not getattr(self, "_checked", True):
            self._checked = True
            warn_if_missing(self, self.monitor, losses, self.trainer)
        if applied(losses):
            self._observe(step, losses)

    def on_eval_end(self, step: int, metrics: dict[str, float]) -> None:
        self._observe(step, metrics)


__all__ = ["Callback", "CheckpointCallback", "EarlyStoppingCallback", "LoggingCallback", "ProgressCallback"]
