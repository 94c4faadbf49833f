"""Log sinks: where a run's metrics go (TensorBoard, ``metrics.jsonl``, W&B), none of which can stop the run.

Logs are not worth a run. :class:`LogSink` forwards ``add_scalar``/``add_video``/
``flush``/``close`` to a writer; the first error (a full disk, a read-only or
vanished directory, a W&B service that fails) is reported once as a
``RuntimeWarning`` naming the destination and the cause, and every later call
is dropped, so training goes on. :class:`LogSinks` sends each call to several
sinks, each failing on its own.

Writers:

- :class:`TensorBoardWriter`: the event file, written synchronously
  (tensorboardX's ``SummaryWriter`` writes from a background thread, where a
  failing write kills the thread with a traceback and later writes block on
  its full queue). Videos are animated GIFs in an image summary, as
  tensorboardX's ``add_video`` writes them (TensorBoard's Images tab plays them).
- :class:`JsonlWriter`: ``metrics.jsonl``, one JSON line per logged step:
  ``{"step": N, "<tag>": value, ...}`` with the TensorBoard tags as keys (a
  video's value is its file's path relative to the run directory). Read it
  with ``pandas.read_json(path, lines=True)``.
- :class:`WandbWriter`: a Weights & Biases run (the ``wandb`` extra);
  ``WANDB_MODE=offline`` keeps it on disk, in ``<run>/wandb``.

:func:`run_sinks` gives a run directory's sinks: ``logs/`` (TensorBoard) and
``metrics.jsonl`` always, W&B with ``logger="wandb"``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

from worldloom.core.errors import ConfigError

LOGGERS = ("tensorboard", "wandb")
"""Values of ``--logger``: TensorBoard and ``metrics.jsonl`` (always written), or W&B besides them."""
METRICS_FILE = "metrics.jsonl"


class _NoTorchForTensorboardX:
    """A ``sys.meta_path`` finder that refuses ``torch`` to imports made from tensorboardX's own modules.

    Other imports, on any thread, find torch as usual: only a stack that runs
    tensorboardX's module code is refused.
    """

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] != "torch":
            return None
        frame = sys._getframe(1)
        while frame is not None:
            if frame.f_globals.get("__name__", "").partition(".")[0] == "tensorboardX":
                raise ImportError("torch is not imported for tensorboardX's event files")
            frame = frame.f_back
        return None


def _import_tensorboardx() -> None:
    """Imports tensorboardX without importing torch, unless torch is loaded already.

    tensorboardX imports torch at import time where it is installed (``try:
    import torch`` in its ``writer`` module, for a type alias of its
    ``SummaryWriter``); the event file writer and protos used here never use
    it. In a JAX process that import is most of tensorboardX's (1.7 s -> 0.3 s
    on a 2-core CPU, with torch 2.13 installed).
    """
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        return
    finder = _NoTorchForTensorboardX()
    sys.meta_path.insert(0, finder)
    try:
        import tensorboardX  # noqa: F401
    finally:
        sys.meta_path.remove(finder)


_WRITERS = itertools.count()


class TensorBoardWriter:
    """TensorBoard scalars and videos in ``log_dir/events.out.tfevents.*``, written as they come.

    Args:
        log_dir: The directory (created when missing).
        flush_secs: Seconds between flushes to disk (and at :meth:`flush`/:meth:`close`).
    """

    def __init__(self, log_dir: str | os.PathLike, flush_secs: float = 30.0):
        _import_tensorboardx()
        from tensorboardX.event_file_writer import EventsWriter

        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # tensorboardX names the file by the second and the host: the process and a count keep two writers of
        # one directory (a callback's own beside the run's) from truncating each other's file.
        self._events = EventsWriter(str(self.log_dir / "events"), f".{os.getpid()}.{next(_WRITERS)}")
        self.flush_secs, self._flushed = float(flush_secs), time.monotonic()

    def _write(self, summary, step: int) -> None:
        from tensorboardX.proto import event_pb2

        self._events.write_event(event_pb2.Event(summary=summary, wall_time=time.time(), step=int(step)))
        if time.monotonic() - self._flushed > self.flush_secs:
            self.flush()

    def add_scalar(self, tag: str, value, step: int) -> None:
        from tensorboardX.summary import scalar

        self._write(scalar(tag, float(value)), step)

    def add_video(self, tag: str, frames, step: int, fps: float = 25.0, file: str | None = None) -> None:
        """``frames`` ``[T, H, W, 3]`` uint8 as an animated GIF in an image summary (``file`` is not used here)."""
        from tensorboardX.proto.summary_pb2 import Summary

        from worldloom.training.videos import encode_gif

        height, width = int(frames.shape[1]), int(frames.shape[2])
        image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=encode_gif(frames, fps))
        self._write(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def flush(self) -> None:
        self._events.flush()
        self._flushed = time.monotonic()

    def close(self) -> None:
        self._events.close()


class JsonlWriter:
    """``metrics.jsonl``: one JSON line per logged step, its keys the TensorBoard tags.

    Values logged at the same step gather into one line, written when the step
    changes, when a tag comes again at the same step (so no value is lost), or
    at :meth:`close` (:meth:`flush` writes the finished lines to disk; the
    latest step's line waits for its step to end). Non-finite values are
    written as ``null`` (strict JSON). A resumed run appends to the file.

    Args:
        path: The file (its directory is created when missing).
        flush_secs: Seconds between flushes of the open file.
    """

    def __init__(self, path: str | os.PathLike, flush_secs: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the run
        self._row: dict = {}
        self._step: int | None = None
        self.flush_secs, self._flushed = float(flush_secs), time.monotonic()

    def _put(self, tag: str, value, step: int) -> None:
        step = int(step)
        if self._row and (step != self._step or tag in self._row):
            self._write_row()
        self._step = step
        self._row[tag] = value

    def _write_row(self) -> None:
        if self._row:
            self._file.write(json.dumps({"step": self._step, **self._row}) + "\n")
            self._row = {}
        if time.monotonic() - self._flushed > self.flush_secs:
            self._flush_file()

    def _flush_file(self) -> None:
        self._file.flush()
        self._flushed = time.monotonic()

    def add_scalar(self, tag: str, value, step: int) -> None:
        value = float(value)
        self._put(tag, value if math.isfinite(value) else None, step)

    def add_video(self, tag: str, frames, step: int, fps: float = 25.0, file: str | None = None) -> None:
        """Records ``file`` (the video's path) under ``tag``; the frames themselves are not written here."""
        if file is not None:
            self._put(tag, str(file), step)

    def flush(self) -> None:
        self._flush_file()

    def close(self) -> None:
        try:
            self._write_row()
            self._flush_file()
        finally:
            self._file.close()


class WandbWriter:
    """A Weights & Biases run in ``run_dir/wandb`` (``WANDB_MODE=offline``: on disk only, synced later).

    Args:
        run_dir: The run directory (W&B writes ``run_dir/wandb``).
        config: The run's settings, recorded by W&B.
        name: The W&B run's name (default: the directory's name).

    The project is ``WANDB_PROJECT`` when set, else ``"worldloom"``.
    """

    def __init__(self, run_dir: str | os.PathLike, config: dict | None = None, name: str | None = None):
        import wandb

        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._wandb = wandb
        self.run = wandb.init(dir=str(self.run_dir), project=os.environ.get("WANDB_PROJECT", "worldloom"),
                              name=name or self.run_dir.name, config=config or {})
        self._row: dict = {}
        self._step: int | None = None

    def _put(self, tag: str, value, step: int) -> None:
        step = int(step)
        if self._row and step != self._step:
            self.flush()
        self._step = step
        self._row[tag] = value

    def add_scalar(self, tag: str, value, step: int) -> None:
        self._put(tag, float(value), step)

    def add_video(self, tag: str, frames, step: int, fps: float = 25.0, file: str | None = None) -> None:
        if file is not None:
            self._put(tag, self._wandb.Video(str(self.run_dir / file), format=Path(file).suffix[1:]), step)

    def flush(self) -> None:
        if self._row:
            self.run.log(self._row, step=self._step)
            self._row = {}

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.run.finish()


class NullWriter:
    """A writer that writes nothing (processes other than process 0, or logging turned off)."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def add_video(self, *args, **kwargs) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class LogSink:
    """``make()``'s writer, fault-tolerant: the first error warns once and logging there stops; the run goes on.

    Args:
        make: Builds the writer (called here; an error from it is handled the same way).
        where: The destination, named in the warning.
    """

    def __init__(self, make, where: str | os.PathLike):
        self.where, self.failed = str(where), None
        self._writer = self._call(make) or NullWriter()

    def _call(self, function, *args, **kwargs):
        if self.failed is not None:
            return None
        try:
            return function(*args, **kwargs)
        except Exception as err:  # a log is not worth a run: whatever a writer raises stops only that writer
            self.failed = err
            self._writer = NullWriter()
            reason = (err.strerror if isinstance(err, OSError) else None) or str(err)
            warnings.warn(f"Logging to {self.where} stopped: {reason} ({type(err).__name__}). Training goes on "
                          "without these logs.", RuntimeWarning, stacklevel=3)
            return None

    def add_scalar(self, tag: str, value, step: int) -> None:
        self._call(self._writer.add_scalar, tag, value, step)

    def add_video(self, tag: str, frames, step: int, fps: float = 25.0, file: str | None = None) -> None:
        self._call(self._writer.add_video, tag, frames, step, fps=fps, file=file)

    def flush(self) -> None:
        self._call(self._writer.flush)

    def close(self) -> None:
        self._call(self._writer.close)
        self._writer = NullWriter()


class LogSinks:
    """Several :class:`LogSink`\\ s behind one writer's methods; each fails on its own.

    Args:
        sinks: The sinks, in the order they are written.
    """

    def __init__(self, sinks):
        self.sinks = list(sinks)

    def add_scalar(self, tag: str, value, step: int) -> None:
        for sink in self.sinks:
            sink.add_scalar(tag, value, step)

    def add_video(self, tag: str, frames, step: int, fps: float = 25.0, file: str | None = None) -> None:
        """``frames`` ``[T, H, W, 3]`` uint8; ``file``: where the video was written, relative to the run directory."""
        for sink in self.sinks:
            sink.add_video(tag, frames, step, fps=fps, file=file)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def tensorboard_sink(log_dir: str | os.PathLike) -> LogSink:
    """A :class:`LogSink` over a :class:`TensorBoardWriter` in ``log_dir``."""
    return LogSink(lambda: TensorBoardWriter(log_dir), log_dir)


def check_logger(logger: str) -> str:
    """``logger`` when it is one of :data:`LOGGERS` and its package is installed.

    Raises:
        ConfigError: another name, or ``"wandb"`` without the wandb package.
    """
    if logger not in LOGGERS:
        raise ConfigError(f"logger: expected one of {', '.join(map(repr, LOGGERS))}, got {logger!r}.")
    if logger == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError as err:
            raise ConfigError("logger='wandb' needs the wandb package: pip install 'worldloom[wandb]' "
                              "(WANDB_MODE=offline keeps the run on disk).") from err
    return logger


def run_sinks(run_dir: str | os.PathLike, logger: str = "tensorboard", config: dict | None = None,
              log_dir: str | os.PathLike | None = None, jsonl: bool = True, tensorboard: bool = True) -> LogSinks:
    """The sinks of a run directory: ``logs/`` (TensorBoard), ``metrics.jsonl`` and, with ``logger="wandb"``, W&B.

    Args:
        run_dir: The run directory.
        logger: ``"tensorboard"`` or ``"wandb"`` (W&B besides the other two).
        config: The run's settings, for W&B.
        log_dir: The TensorBoard directory (default ``run_dir/logs``).
        jsonl: Write ``run_dir/metrics.jsonl``.
        tensorboard: Write TensorBoard events.

    Raises:
        ConfigError: an unknown ``logger``, or ``"wandb"`` without its package.
    """
    check_logger(logger)
    run_dir = Path(run_dir)
    log_dir = run_dir / "logs" if log_dir is None else Path(log_dir)
    sinks = []
    if tensorboard:
        sinks.append(tensorboard_sink(log_dir))
    if jsonl:
        sinks.append(LogSink(lambda: JsonlWriter(run_dir / METRICS_FILE), run_dir / METRICS_FILE))
    if logger == "wandb":
        sinks.append(LogSink(lambda: WandbWriter(run_dir, config), "W&B"))
    return LogSinks(sinks)


__all__ = ["LOGGERS", "METRICS_FILE", "JsonlWriter", "LogSink", "LogSinks", "NullWriter", "TensorBoardWriter",
           "WandbWriter", "check_logger", "run_sinks", "tensorboard_sink"]
