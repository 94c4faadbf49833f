"""K-update programs for a caller that samples its own batches (the online agents' learner).

``update_program(update, K, nonfinite)`` is the Trainer's multi-update program
(:mod:`worldloom.training._step`) over any ``UpdateFunctions``: one jitted
call runs ``K`` updates as a ``lax.scan`` over stacked batches::

    run(state, batches [K, B, T, ...], base_key, start, count) -> (state, metrics [K], *outputs [K])

Update ``i`` runs when ``i < count`` with the key ``fold_in(base_key, start + i)``,
the key a one-update call at update number ``start + i`` would use; ``outputs``
are the step's results beyond its metrics (DreamerV3's posteriors). With
``nonfinite`` ``"skip"`` or ``"stop"`` each update is guarded
(:mod:`worldloom.training.guard`; give the unguarded update), ``"stop"`` also
skipping the slots after a non-finite one. The train state is donated.
"""

from __future__ import annotations

from collections.abc import Callable

from worldloom.models.base import UpdateFunctions
from worldloom.training._step import StepProgram


def update_program(update: UpdateFunctions, steps: int, nonfinite: str = "ignore") -> Callable:
    """The jitted ``K = steps`` update program of ``update`` on one device (see the module docstring)."""
    return StepProgram(update, steps_per_dispatch=int(steps), nonfinite=nonfinite).runner()


__all__ = ["update_program"]
