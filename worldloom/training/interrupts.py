"""Ctrl-C and SIGTERM as requests to stop: the run saves, says how to resume, and exits 130 or 143.

Inside :func:`stop_requests` the first SIGINT (Ctrl-C) or SIGTERM (what a
cluster scheduler sends) only sets :attr:`StopRequest.signal`; the run checks
it between dispatches, saves its checkpoint and stops. A second Ctrl-C aborts
at once (``KeyboardInterrupt``). Outside the main thread nothing is installed.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
"""The shell's exit status of a process ended by each signal (128 + its number)."""


class StopRequest:
    """Whether a stop was asked for, and by which signal (``None`` until one arrives)."""

    def __init__(self):
        self.signal: int | None = None
        self.aborted = False  # a second Ctrl-C raised KeyboardInterrupt

    @property
    def stop(self) -> bool:
        return self.signal is not None


class Interrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM after saving; ``str()`` is the one line that says how to resume.

    Attributes:
        signal: ``signal.SIGINT`` or ``signal.SIGTERM``.
        exit_code: 130 or 143.
        message: What was saved and the command that resumes it.
    """

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signal, self.message = signum, message
        self.exit_code = EXIT_CODES.get(signum, 130)

    def __str__(self) -> str:
        return self.message


def signal_name(signum: int) -> str:
    return {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}.get(signum, f"signal {signum}")


@contextlib.contextmanager
def stop_requests(announce: str = "stopping after the current step and saving"):
    """Turn the first SIGINT/SIGTERM into a :class:`StopRequest`; a second Ctrl-C raises ``KeyboardInterrupt``."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {signum: signal.getsignal(signum) for signum in EXIT_CODES}

    def handler(signum, frame):
        if request.stop and signum == signal.SIGINT:
            request.aborted = True
            raise KeyboardInterrupt
        if not request.stop:
            request.signal = signum
            print(f"\n{signal_name(signum)}: {announce}; press Ctrl-C again to abort.", file=sys.stderr, flush=True)

    for signum in EXIT_CODES:
        signal.signal(signum, handler)
    try:
        yield request
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


__all__ = ["EXIT_CODES", "Interrupted", "StopRequest", "signal_name", "stop_requests"]
