"""Progress display for long work: a tqdm bar on a terminal, plain periodic lines elsewhere.

Redirected to a file, a redrawn bar writes a carriage-return update at every
step; :func:`progress` writes one line every ``interval`` seconds there
instead. Both leave compilation out of the rate and the ETA: call
:meth:`restart_clock` once the first (compiling) step is done; with
``measured=False`` no rate or ETA is shown until then. :meth:`note` writes a
line of its own (a phase starting or ending) without disturbing the bar.
"""

from __future__ import annotations

import sys
import time
from typing import IO


def progress(total: int, *, initial: int = 0, desc: str = "", unit: str = "step", file: IO | None = None,
             interval: float = 30.0, disable: bool = False, measured: bool = True):
    """A progress display with tqdm's ``update``/``set_postfix``/``close`` plus ``restart_clock``.

    Args:
        total: Units of work.
        initial: Units already done (a resumed run).
        file: Where to write (default ``sys.stderr``); a terminal gets a tqdm bar.
        interval: Seconds between lines when ``file`` is not a terminal.
        disable: Show nothing.
        measured: Whether the rate counts from now; False: no rate or ETA until
            :meth:`restart_clock` (call it once compilation is over).
    """
    file = sys.stderr if file is None else file
    isatty = getattr(file, "isatty", lambda: False)
    if not disable and isatty():
        return _Bar(total, initial, desc, unit, file, measured)
    return LineProgress(total, initial=initial, desc=desc, unit=unit, file=file, interval=interval, disable=disable,
                        measured=measured)


def _eta_text(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


class LineProgress:
    """Plain lines ``desc: n/total (p%) rate, ETA, postfix`` at most every ``interval`` seconds, and at the end."""

    def __init__(self, total: int, *, initial: int = 0, desc: str = "", unit: str = "step", file: IO | None = None,
                 interval: float = 30.0, disable: bool = False, clock=time.monotonic, measured: bool = True):
        self.total, self.n, self.desc, self.unit = int(total), int(initial), desc, unit
        self.file = sys.stderr if file is None else file
        self.interval, self.disable, self._clock = float(interval), disable, clock
        self._postfix = ""
        self.restart_clock()
        self._measuring = bool(measured)
        self._last_line = self._start

    def restart_clock(self) -> None:
        """Measure the rate (and ETA) from now on, e.g. after the compiling first step."""
        self._start, self._start_n, self._measuring = self._clock(), self.n, True

    def rate(self) -> float | None:
        if not self._measuring:
            return None
        elapsed = self._clock() - self._start
        done = self.n - self._start_n
        return done / elapsed if done > 0 and elapsed > 0 else None

    def line(self) -> str:
        percent = 100.0 * self.n / self.total if self.total else 100.0
        text = f"{self.desc}: {self.n}/{self.total} {self.unit}s ({percent:.0f}%)"
        rate = self.rate()
        if rate:
            text += f", {rate:.2f} {self.unit}/s, ETA {_eta_text((self.total - self.n) / rate)}"
        elif not self._measuring:
            text += ", measuring the rate"
        return text + (f", {self._postfix}" if self._postfix else "")

    def _emit(self) -> None:
        if not self.disable:
            print(self.line(), file=self.file, flush=True)
        self._last_line = self._clock()

    def update(self, count: int = 1) -> None:
        self.n += int(count)
        if self._clock() - self._last_line >= self.interval:
            self._emit()

    def set_postfix(self, values=None, refresh: bool = True, **kwargs) -> None:
        values = {**(values or {}), **kwargs}
        self._postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def note(self, text: str) -> None:
        """One line of its own (``desc: text``), at once."""
        if not self.disable:
            print(f"{self.desc}: {text}" if self.desc else text, file=self.file, flush=True)

    def close(self) -> None:
        if self.n != getattr(self, "_closed_at", None):
            self._emit()
            self._closed_at = self.n


class _Bar:
    """A tqdm bar whose rate and ETA can leave out a compiling first step."""

    def __init__(self, total: int, initial: int, desc: str, unit: str, file: IO, measured: bool = True):
        from tqdm.auto import tqdm

        # smoothing=0: the rate is the average since start_t, which restart_clock moves. Unmeasured, the bar
        # shows counts only (no rate, no ETA) until restart_clock.
        self.desc, self.file = desc, file
        self.bar = tqdm(total=total, initial=min(initial, total), unit=unit, desc=desc, dynamic_ncols=True,
                        file=file, smoothing=0,
                        bar_format=None if measured else "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}"
                                                         " [measuring the rate{postfix}]")

    @property
    def n(self) -> int:
        return self.bar.n

    def restart_clock(self) -> None:
        self.bar.bar_format = None
        self.bar.start_t = self.bar._time()
        self.bar.initial = self.bar.last_print_n = self.bar.n
        self.bar.refresh()

    def update(self, count: int = 1) -> None:
        self.bar.update(count)

    def set_postfix(self, values=None, refresh: bool = True, **kwargs) -> None:
        self.bar.set_postfix(values, refresh=refresh, **kwargs)

    def note(self, text: str) -> None:
        self.bar.write(f"{self.desc}: {text}" if self.desc else text, file=self.file)

    def close(self) -> None:
        self.bar.close()
