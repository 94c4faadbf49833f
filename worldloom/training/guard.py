"""The non-finite guard: an update whose losses, gradients or new state hold NaN/inf is not applied.

On the device, :func:`guarded_step` wraps a model's ``step(state, batch, key)``:
it checks every metric (the loss terms and ``grad_norm``) and every float leaf
of the updated state, keeps the previous state when one is not finite
(one ``lax.cond`` over the whole state, inside the jitted program) and adds the
metric ``"skipped"`` (1.0 for an update that was not applied, else 0.0).

On the host, :class:`NonFiniteGuard` reads those flags once per dispatch,
from the metrics it fetches anyway, counts the skipped updates and decides:

- ``"stop"``: the first non-finite update raises :class:`TrainingError`
  naming its step and the non-finite terms;
- ``"skip"``: skipped updates are counted; more than ``max_consecutive``
  in a row raise :class:`TrainingError`;
- ``"ignore"``: no check at all (the unguarded program).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from worldloom.models.base import UpdateFunctions

NONFINITE_MODES = ("stop", "skip", "ignore")
SKIPPED = "skipped"


def all_finite(tree) -> jax.Array:
    """A bool scalar: every floating-point leaf of ``tree`` is free of NaN and inf."""
    checks = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
    return jnp.stack(checks).all() if checks else jnp.asarray(True)


def guarded_step(step: Callable) -> Callable:
    """``step(state, batch, key) -> (state, metrics, *outputs)`` that keeps ``state`` when the update is not finite.

    The returned metrics hold ``"skipped"``: 1.0 when any metric or any float
    leaf of the new state was NaN/inf (the old state is returned), else 0.0.
    Further outputs of ``step`` (an agent's posteriors for its replay) pass
    through unchanged; a caller drops them where ``"skipped"`` is 1.
    """

    def guarded(state, batch, key):
        new_state, metrics, *outputs = step(state, batch, key)
        finite = all_finite((metrics, new_state))
        # One conditional over the whole state (a jnp.where per leaf compiles markedly slower).
        kept = jax.lax.cond(finite, lambda new, old: new, lambda new, old: old, new_state, state)
        return (kept, dict(metrics, **{SKIPPED: (~finite).astype(jnp.float32)}), *outputs)

    return guarded


def applied_before(start: int, skipped, skipped_before: int) -> np.ndarray:
    """The optimiser's count before each update ``start + 1 .. start + len(skipped)`` of a dispatch: the updates
    before it less those not applied (``skipped_before`` earlier ones, then the dispatch's ``skipped`` flags), the
    count a learning-rate schedule reads."""
    skipped = np.asarray(skipped, bool).reshape(-1)
    return start - skipped_before + np.arange(len(skipped)) - (np.cumsum(skipped) - skipped)


def guard_update(update: UpdateFunctions) -> UpdateFunctions:
    """``update`` with its ``step`` wrapped by :func:`guarded_step`."""
    return dataclasses.replace(update, step=guarded_step(update.step))


def nonfinite_terms(metrics: Mapping[str, float]) -> str:
    """The non-finite metrics of one update as ``"loss=nan, loss/rec=inf"``, or what else was non-finite."""
    bad = [f"{name}={value}" for name, value in metrics.items()
           if name != SKIPPED and not math.isfinite(value)]
    if bad:
        return ", ".join(bad)
    return "the updated params or optimiser state (every loss term and the gradient norm were finite)"


class NonFiniteGuard:
    """Host side of the guard: one look per dispatch at its ``"skipped"`` flags.

    Args:
        mode: ``"stop"``, ``"skip"`` or ``"ignore"``.
        max_consecutive: With ``"skip"``, more consecutive skipped updates than this stop the run.
        setting: How the user names the setting in messages (e.g. ``"TrainingConfig.on_nonfinite"``).
        label: ``label(n)``: how messages name update ``n`` (counted from 1), e.g. ``"step 5"``.

    Attributes:
        skipped: Skipped updates so far.
        consecutive: Skipped updates in a row, up to the latest one inspected.
    """

    def __init__(self, mode: str, max_consecutive: int, setting: str = "on_nonfinite",
                 label: Callable[[int], str] = lambda step: f"step {step}"):
        if mode not in NONFINITE_MODES:
            raise ValueError(f"mode must be one of {NONFINITE_MODES}, got {mode!r}.")
        self.mode, self.max_consecutive, self.setting, self.label = mode, int(max_consecutive), setting, label
        self.skipped = 0
        self.consecutive = 0

    @property
    def active(self) -> bool:
        return self.mode != "ignore"

    def inspect(self, start: int, flags, row: Callable[[int], Mapping[str, float]]) -> tuple[int, str | None]:
        """Look at the updates ``start + 1 .. start + len(flags)`` of one dispatch.

        Args:
            start: Updates done before the dispatch.
            flags: Its ``"skipped"`` values, one per update.
            row: ``row(i)``: the metrics of its update ``i`` (read only to word a message).

        Returns:
            ``(reportable, problem)``: ``problem`` is ``None`` when the run goes
            on (every update is reportable), else the message of the
            :class:`TrainingError` to raise once the first ``reportable``
            updates (those before the failing one) are reported.
        """
        flags = np.asarray(flags).reshape(-1) > 0
        if not self.active:
            return len(flags), None
        if self.mode == "stop":
            if not flags.any():
                return len(flags), None
            index = int(np.argmax(flags))
            self.skipped += 1
            return index, self._stopped(start + index + 1, row(index))
        for index, skipped in enumerate(flags):
            if not skipped:
                self.consecutive = 0
                continue
            self.skipped += 1
            self.consecutive += 1
            if self.consecutive > self.max_consecutive:
                return index, self._too_many(start + index + 1, row(index))
        return len(flags), None

    def _stopped(self, step: int, row: Mapping[str, float]) -> str:
        name = self.label(step)
        return (f"{name[:1].upper()}{name[1:]} is not finite: {nonfinite_terms(row)}. Training stopped "
                f"({self.setting}='stop') before applying it; no checkpoint of a non-finite state was written. "
                f"Lower learning_rate, check the data for extreme values, or set {self.setting}='skip' to drop "
                "such updates.")

    def _too_many(self, step: int, row: Mapping[str, float]) -> str:
        first = step - self.consecutive + 1
        return (f"{self.consecutive} consecutive updates were not finite and were skipped ({self.label(first)} "
                f"to {self.label(step)}), more than max_consecutive_skips={self.max_consecutive}; the last "
                f"one: {nonfinite_terms(row)}. Training stopped; none of them was applied and no checkpoint of a "
                "non-finite state was written. Lower learning_rate or check the data for extreme values.")
