"""The parts every run loop is made of: a learner, an evaluator and a checkpointer.

``Trainer.train`` (offline, a fixed schedule of updates over one buffer) and
``worldloom.agents.run_agent`` (online, a train ratio over the steps of the
environments) are each a short composition of these parts; log sinks come
from :mod:`worldloom.training.logs` and placement from
:mod:`worldloom.training.parallel`.

- :class:`Learner` turns updates owed into K-update programs: it samples the
  batches of the next dispatches on a host thread while the current program
  runs, keeps at most ``max_in_flight`` dispatches queued, reads the
  non-finite guard's flags of each finished one, and reports its metrics.
  :func:`owed_plan` is the online side's schedule (updates owed by the train
  ratio, ``K`` at a time where that many are owed);
  :func:`~worldloom.training._sampling.chunk_plan` the offline one.
- :class:`Evaluator` runs an evaluation every ``every`` steps and at the end.
- :class:`Checkpointer` holds the things a checkpoint saves
  (``cp.agent = agent; cp.replay = replay``) and writes them on process 0,
  every process waiting until the write is complete.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np

from worldloom import distributed
from worldloom.core.errors import TrainingError
from worldloom.training._sampling import Prefetcher
from worldloom.training.guard import SKIPPED, NonFiniteGuard
from worldloom.training.parallel import DispatchQueue

__all__ = ["Checkpointer", "Evaluator", "Learner", "owed_plan"]


def owed_plan(start: int, owed: int, steps: int | None) -> list[tuple[int, int]]:
    """``(first update, count)`` of the dispatches that run ``owed`` updates from update ``start`` on.

    With ``steps`` (``K``, a K-update program at hand), whole runs of ``K``
    updates go to one dispatch each and the rest to one-update dispatches;
    without, every update is a dispatch of its own.
    """
    plan, update, left = [], int(start), int(owed)
    while left > 0:
        count = int(steps) if steps and left >= steps else 1
        plan.append((update, count))
        update, left = update + count, left - count
    return plan


class _Inline:
    """The batches of ``plan`` made one at a time on the calling thread (the :class:`Prefetcher`'s interface)."""

    def __init__(self, plan: Iterable, make: Callable):
        self._plan, self._make = plan, make

    def __iter__(self) -> Iterator:
        for item in self._plan:
            yield item, self._make(*item)

    def close(self) -> None:
        pass


class Learner:
    """Runs dispatches of K-update programs with the non-finite guard; holds the train state.

    ``dispatch(state, batches, start, count) -> (state, metrics, *outputs)``
    runs updates ``start + 1 .. start + count`` on ``batches`` (metrics hold
    one value per update, ``[K]``, or a scalar for a single update).

    Args:
        dispatch: The program call; settable later (``learner.dispatch = ...``).
        guard: The host side of the non-finite guard (default: off).
        fetch: How finished metrics come to the host (e.g. ``Placement.fetch``).
        max_in_flight: Dispatches queued before the oldest is finished; ``None``: all of a run's.

    Attributes:
        state: The train state (``None`` after a stop with later dispatches queued behind the failing one).
        step: Updates done.
    """

    def __init__(self, dispatch: Callable | None = None, guard: NonFiniteGuard | None = None,
                 fetch: Callable = jax.device_get, max_in_flight: int | None = None):
        self.dispatch, self.fetch, self.max_in_flight = dispatch, fetch, max_in_flight
        self.guard = guard if guard is not None else NonFiniteGuard("ignore", 1)
        self.state: Any = None
        self.step = 0

    def run(self, plan: Iterable[tuple[int, int]], sample: Callable, report: Callable, *, prefetch: int = 2,
            sync: Callable[[int], bool] | None = None, after: Callable[[int], bool] | None = None) -> int:
        """Dispatch every ``(start, count)`` of ``plan``; returns the updates dispatched.

        Args:
            plan: The dispatches, in order (a list, or a generator read on the prefetch thread).
            sample: ``sample(start, count) -> (batches, note)``; ``note`` is handed to ``report``.
            report: ``report(start, count, metrics, outputs, note)`` with host metrics, once per finished
                dispatch, for its first ``count`` updates (those before a non-finite one that stops the run).
            prefetch: Dispatches sampled ahead on a host thread; 0 samples each one just before it runs.
            sync: ``sync(step)``: whether every queued dispatch is finished after the one ending at ``step``
                (where a checkpoint or an evaluation needs that state).
            after: ``after(step) -> stop``: called after each dispatch; ``True`` ends the run there.

        Raises:
            TrainingError: the guard stops the run (after reporting the updates before the failing one).
        """
        source = (Prefetcher if prefetch else _Inline)(plan, sample, *([prefetch] if prefetch else []))
        queue, first = DispatchQueue(self.max_in_flight or 1 << 30), self.step
        try:
            for (start, count), (batches, note) in source:
                self.state, metrics, *outputs = self.dispatch(self.state, batches, start, count)
                self.step = start + count
                done = queue.push((start, count, metrics, outputs, note))
                if sync is not None and sync(self.step):
                    done += queue.drain()
                self._finish(done, report)
                if after is not None and after(self.step):
                    break
            self._finish(queue.drain(), report)
        finally:
            source.close()
        return self.step - first

    def _finish(self, done: list, report: Callable) -> None:
        """Fetch finished dispatches' metrics (one transfer), apply the guard, report them."""
        if not done:
            return
        fetched = self.fetch([metrics for _, _, metrics, _, _ in done])
        for (start, count, _, outputs, note), metrics in zip(done, fetched):
            columns = {name: np.asarray(values).reshape(-1) for name, values in metrics.items()}
            flags = columns[SKIPPED][:count] if SKIPPED in columns else np.zeros(count)
            reportable, problem = self.guard.inspect(
                start, flags, lambda index, columns=columns: {name: float(values[index])
                                                              for name, values in columns.items()})
            if problem is not None and self.guard.mode == "stop":
                if start + count != self.step:  # dispatches queued behind this one ran from its state
                    self.state = None
                self.step = start + reportable  # the halted dispatch returned the state before the failing update
            if reportable:
                report(start, reportable, columns, outputs, note)
            if problem is not None:
                raise TrainingError(problem)


class Evaluator:
    """An evaluation every ``every`` steps and at the run's end.

    Args:
        every: Steps between evaluations (0: only at the end).
        evaluate: ``evaluate(step) -> stop``: runs one; a true result asks the run to stop.
        done: Steps done before this run (a resumed run's first evaluation is at the next multiple).
    """

    def __init__(self, every: int, evaluate: Callable[[int], bool | None], done: int = 0):
        self.every, self.evaluate, self.last = int(every), evaluate, None
        self.next = (int(done) // self.every + 1) * self.every if self.every else None

    def __call__(self, step: int, final: bool = False) -> bool:
        """Evaluate at ``step`` when one is due (or ``final`` and none ran at ``step``); returns whether to stop."""
        due = self.next is not None and step >= self.next
        if not due and not (final and self.last != step):
            return False
        if due:
            self.next += self.every
        self.last = step
        return bool(self.evaluate(step))


class Checkpointer:
    """The things a checkpoint holds, saved together: ``cp.agent = agent; cp.replay = replay; cp.save(label)``.

    Args:
        write: ``write(**things)``: writes one checkpoint of the things set on this object; returns where.
        primary: Whether this process writes (``None``: process 0 of the run).
        everyone_writes: Every process calls ``write`` (each holds a part of its own, e.g. its replay).
    """

    def __init__(self, write: Callable[..., Any], primary: bool | None = None, everyone_writes: bool = False):
        vars(self)["_write"], vars(self)["_things"] = write, {}
        vars(self)["_primary"] = distributed.is_primary() if primary is None else bool(primary)
        vars(self)["_everyone"] = bool(everyone_writes)

    def __setattr__(self, name: str, value) -> None:
        self._things[name] = value

    def __getattr__(self, name: str):
        try:
            return vars(self)["_things"][name]
        except KeyError:
            raise AttributeError(name) from None

    def save(self, label) -> Any:
        """Write the checkpoint (process 0, or each process), then wait for every process; returns ``write``'s
        result (``None`` on a process that does not write)."""
        where = self._write(**self._things) if self._primary or self._everyone else None
        if distributed.process_count() > 1:
            distributed.barrier(f"worldloom-checkpoint-{label}")
        return where
