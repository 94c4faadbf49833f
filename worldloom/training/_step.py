"""The jitted multi-update program: ``K`` updates per call, ``lax.scan`` over pre-sampled batches.

One program is built per (model class, model config, optimiser settings, K)
and cached, so several trainers of the same model compile it once. Its
signature is fixed::

    run(state, batches, base_key, start, count) -> (state, metrics)

``batches`` holds ``K`` batches ``[K, B, T, ...]``; update ``i`` runs when
``i < count`` (``lax.cond``, so skipped slots cost nothing) with the key
``fold_in(base_key, start + i)``. ``start`` and ``count`` are traced int32, so
a short chunk (the last one of a run, or one cut at a checkpoint) reuses the
same executable: one compile per batch shape for a whole run. The train
state is donated. ``metrics`` maps each name to ``[K]`` values (zeros in
skipped slots).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from worldloom.models.base import OptimizerSettings, UpdateFunctions, WorldModel

_CACHE_SIZE = 8
_CACHE: collections.OrderedDict = collections.OrderedDict()


@dataclasses.dataclass
class StepProgram:
    """A model's update functions and the jitted K-update program built from them.

    Attributes:
        update: The model's pure ``init``/``step``/``params``.
        run: ``run(state, batches [K, B, T, ...], base_key, start, count) -> (state, metrics [K])``.
        steps_per_dispatch: ``K``.
        traces: How many times ``run`` was traced (one per compile).
    """

    update: UpdateFunctions
    run: Callable = None
    steps_per_dispatch: int = 1
    traces: int = 0

    def compiles(self) -> int:
        """Executables compiled for ``run`` (a changed input placement compiles without re-tracing)."""
        size = getattr(self.run, "_cache_size", None)
        return int(size()) if callable(size) else self.traces


def _build(program: StepProgram) -> Callable:
    update, steps = program.update, program.steps_per_dispatch

    def run(state, batches, base_key, start, count):
        program.traces += 1
        first = jax.tree_util.tree_map(lambda x: x[0], batches)
        metric_shapes = jax.eval_shape(update.step, state, first, base_key)[1]

        def skip(carry, batch, key):
            del batch, key
            return carry, jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)

        def body(carry, inputs):
            index, batch = inputs
            key = jax.random.fold_in(base_key, start + index)
            return jax.lax.cond(index < count, update.step, skip, carry, batch, key)

        return jax.lax.scan(body, state, (jnp.arange(steps, dtype=jnp.int32), batches))

    return jax.jit(run, donate_argnums=(0,))


def step_program(model: WorldModel, settings: OptimizerSettings, steps_per_dispatch: int) -> StepProgram:
    """The (cached) K-update program of ``model`` under ``settings``."""
    try:
        key = (type(model), model.config, settings, int(steps_per_dispatch))
        hash(key)
    except TypeError:  # an unhashable config: no caching
        key = None
    if key is not None and key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    program = StepProgram(model.make_update(settings), steps_per_dispatch=int(steps_per_dispatch))
    program.run = _build(program)
    if key is not None:
        _CACHE[key] = program
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return program
