"""Log sinks: TensorBoard scalars written in the caller's thread, and a sink that a failing disk cannot stop.

Logs are not worth a run. :class:`LogSink` forwards ``add_scalar``/``flush``/
``close`` to a writer; the first ``OSError`` (a full disk, a read-only or
vanished directory) is reported once as a ``RuntimeWarning`` naming the
directory and the cause, and every later call is dropped, so training goes on.

:class:`TensorBoardWriter` writes the event file synchronously (tensorboardX's
``SummaryWriter`` writes from a background thread, where a failing write
kills the thread with a traceback and later writes block on its full queue).
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path


class TensorBoardWriter:
    """TensorBoard scalars in ``log_dir/events.out.tfevents.*``, written as they come.

    Args:
        log_dir: The directory (created when missing).
        flush_secs: Seconds between flushes to disk (and at :meth:`flush`/:meth:`close`).
    """

    def __init__(self, log_dir: str | os.PathLike, flush_secs: float = 30.0):
        from tensorboardX.event_file_writer import EventsWriter

        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._events = EventsWriter(str(self.log_dir / "events"))
        self.flush_secs, self._flushed = float(flush_secs), time.monotonic()

    def add_scalar(self, tag: str, value, step: int) -> None:
        from tensorboardX.proto import event_pb2
        from tensorboardX.summary import scalar

        self._events.write_event(event_pb2.Event(summary=scalar(tag, float(value)), wall_time=time.time(),
                                                 step=int(step)))
        if time.monotonic() - self._flushed > self.flush_secs:
            self.flush()

    def flush(self) -> None:
        self._events.flush()
        self._flushed = time.monotonic()

    def close(self) -> None:
        self._events.close()


class NullWriter:
    """A writer that writes nothing (processes other than process 0, or logging turned off)."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class LogSink:
    """``make()``'s writer, fault-tolerant: the first ``OSError`` warns once and logging stops; the run goes on.

    Args:
        make: Builds the writer (called here; an ``OSError`` from it is handled the same way).
        where: The destination, named in the warning.
    """

    def __init__(self, make, where: str | os.PathLike):
        self.where, self.failed = str(where), None
        self._writer = self._call(make) or NullWriter()

    def _call(self, function, *args):
        if self.failed is not None:
            return None
        try:
            return function(*args)
        except OSError as err:
            self.failed = err
            self._writer = NullWriter()
            reason = err.strerror or str(err)
            warnings.warn(f"Logging to {self.where} stopped: {reason} ({type(err).__name__}). Training goes on "
                          "without these logs.", RuntimeWarning, stacklevel=3)
            return None

    def add_scalar(self, tag: str, value, step: int) -> None:
        self._call(self._writer.add_scalar, tag, value, step)

    def flush(self) -> None:
        self._call(self._writer.flush)

    def close(self) -> None:
        self._call(self._writer.close)
        self._writer = NullWriter()


def tensorboard_sink(log_dir: str | os.PathLike) -> LogSink:
    """A :class:`LogSink` over a :class:`TensorBoardWriter` in ``log_dir``."""
    return LogSink(lambda: TensorBoardWriter(log_dir), log_dir)


__all__ = ["LogSink", "NullWriter", "TensorBoardWriter", "tensorboard_sink"]
