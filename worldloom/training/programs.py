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

With a ``mesh`` (a run of several processes, each sampling its share of the
batch) the batches ``[K, B, ...]`` and the further outputs are sharded on
``B``, the state, key and counters replicated; give every input as a global
array (:meth:`worldloom.training.parallel.ProcessShare.chunk`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from worldloom.core.sharing import shared
from worldloom.models.base import UpdateFunctions
from worldloom.training._step import StepProgram, _multi_update


def update_program(update: UpdateFunctions, steps: int, nonfinite: str = "ignore", mesh: Mesh | None = None
                   ) -> Callable:
    """The jitted ``K = steps`` update program of ``update``, on one device or over ``mesh`` (see the module
    docstring).

    The same arguments give the same program while it is used and for a while
    after (:func:`worldloom.core.sharing.shared`), so a second run of an agent
    whose ``make_update`` returns the same functions traces and compiles none.
    """
    return _program(update, int(steps), nonfinite, mesh)


@shared()
def _program(update: UpdateFunctions, steps: int, nonfinite: str, mesh: Mesh | None) -> Callable:
    if mesh is None:
        return StepProgram(update, steps_per_dispatch=int(steps), nonfinite=nonfinite).runner()
    axis = mesh.axis_names[0]
    replicated, chunks = NamedSharding(mesh, P()), NamedSharding(mesh, P(None, axis))

    def run(state, batches, base_key, start, count):
        return _multi_update(update, int(steps), state, batches, lambda index, batch: batch, base_key, start, count,
                             nonfinite)

    jitted = []

    def call(state, batches, base_key, start, count):
        if not jitted:  # the outputs' structure is known once the shapes are
            _, _, *outputs = jax.eval_shape(run, state, batches, base_key, start, count)
            rows = jax.tree_util.tree_map(lambda _: chunks, outputs)
            jitted.append(jax.jit(run, donate_argnums=0, in_shardings=(replicated, chunks, *(replicated,) * 3),
                                  out_shardings=(replicated, replicated, *rows)))
        return jitted[0](state, batches, base_key, start, count)

    return call


__all__ = ["update_program"]
