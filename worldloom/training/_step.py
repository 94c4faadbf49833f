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

With the non-finite guard on (``nonfinite`` ``"skip"`` or ``"stop"``, see
``guard``), each update's result is checked on the device and a non-finite
one is not applied (``metrics["skipped"]`` is 1 there); under ``"stop"`` the
slots after it are skipped too, so the returned state is the one before it.

Variants (:meth:`StepProgram.runner`) share that scan: one jitted with
shardings over a device mesh (data parallel), and one that samples its
batches on the device from a replay table instead of taking them as input.

On a mesh, an update whose model splits it into ``gradients`` and
``apply_gradients`` (see ``UpdateFunctions``) runs the gradients under
``shard_map``: each device takes the loss and gradients of its shard of the
batch, one ``pmean`` averages them (a single all-reduce per update), and
every device applies the same averaged gradients. Left to XLA's partitioner,
the gradients of weights used inside the time scan are all-reduced at every
time step instead. Other updates (those that need statistics of the whole
batch) run as one program that XLA partitions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from worldloom.core.sharing import shared
from worldloom.models.base import OptimizerSettings, UpdateFunctions, WorldModel, step_from_gradients
from worldloom.training._device_replay import sample_windows
from worldloom.training.guard import SKIPPED, guarded_step


@dataclasses.dataclass
class StepProgram:
    """A model's update functions and the jitted K-update programs built from them.

    Attributes:
        update: The model's pure ``init``/``step``/``params``.
        run: ``run(state, batches [K, B, T, ...], base_key, start, count) -> (state, metrics [K])``
            on one device (``runner()``).
        steps_per_dispatch: ``K``.
        nonfinite: The guard: ``"stop"``, ``"skip"`` or ``"ignore"`` (unchecked updates).
        traces: How many times a program was traced.
    """

    update: UpdateFunctions
    run: Callable = None
    steps_per_dispatch: int = 1
    nonfinite: str = "ignore"
    traces: int = 0
    runners: dict = dataclasses.field(default_factory=dict)

    def runner(self, mesh: Mesh | None = None, window: tuple[int, int] | None = None) -> Callable:
        """The jitted program for a placement and a batch source (built once, then cached).

        Args:
            mesh: ``None``: one device, placement taken from the inputs. A
                ``Mesh`` with a ``"batch"`` axis: the state, keys and replay
                table replicated, host batches sharded on their batch axis
                (``P(None, "batch")``); XLA inserts the gradient all-reduce.
            window: ``None``: the program takes host batches ``[K, B, T, ...]``.
                ``(B, T)``: it samples them itself from a device replay table
                (see ``_device_replay``) and its signature is
                ``run(state, table, base_key, sample_key, start, count)``.
        """
        key = (mesh, window)
        if key not in self.runners:
            self.runners[key] = _build(self, mesh, window)
        return self.runners[key]

    def compiles(self) -> int:
        """Executables compiled for all of this program's runners (one per placement and shape)."""
        total = 0
        for run in self.runners.values():
            size = getattr(run, "_cache_size", None)
            total += int(size()) if callable(size) else 0
        return total


def _multi_update(update: UpdateFunctions, steps: int, state, xs, batch_at: Callable, base_key, start, count,
                  nonfinite: str = "ignore"):
    """``lax.scan`` of ``update.step`` over ``steps`` slots; slot ``i`` runs when ``i < count``.

    ``batch_at(i, x)`` is the batch of slot ``i`` given its scanned input ``x``.
    ``nonfinite`` other than ``"ignore"`` guards each update (``guarded_step``);
    ``"stop"`` also halts the scan at the first non-finite update.
    """
    # Jitted so that its one trace serves both the shape query below and the scan body (the same avals).
    update_step = jax.jit(update.step if nonfinite == "ignore" else guarded_step(update.step))
    halts = nonfinite == "stop"
    first = jax.tree_util.tree_map(lambda x: x[0], xs)
    shapes = jax.eval_shape(lambda s, x: update_step(s, batch_at(0, x), base_key), state, first)
    return _scan_updates(update_step, steps, state, xs, batch_at, base_key, start, count, halts, shapes[1:])


def _scan_updates(update_step: Callable, steps: int, state, xs, batch_at: Callable, base_key, start, count,
                  halts: bool, output_shapes: tuple):
    """The scan of :func:`_multi_update`: ``(state, metrics [K], *outputs [K])``, the outputs beyond the metrics
    (an agent's posteriors) stacked beside them; a skipped slot gives zeros."""

    def zeros(shapes):
        return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def skip(carry, x, key, index):
        del x, key, index
        return carry, zeros(output_shapes)

    def step(carry, x, key, index):
        new, *outputs = update_step(carry, batch_at(index, x), key)
        return new, tuple(outputs)

    def body(carry, inputs):
        index, x = inputs
        key = jax.random.fold_in(base_key, start + index)
        if not halts:
            return jax.lax.cond(index < count, step, skip, carry, x, key, index)
        carry, halted = carry
        carry, outputs = jax.lax.cond((index < count) & ~halted, step, skip, carry, x, key, index)
        return (carry, halted | (outputs[0][SKIPPED] > 0)), outputs

    indices = (jnp.arange(steps, dtype=jnp.int32), xs)
    if not halts:
        state, outputs = jax.lax.scan(body, state, indices)
    else:
        (state, _), outputs = jax.lax.scan(body, (state, jnp.asarray(False)), indices)
    return (state, *outputs)


def _shard_map(function, mesh: Mesh, in_specs, out_specs):
    if hasattr(jax, "shard_map"):
        return jax.shard_map(function, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    from jax.experimental.shard_map import shard_map

    return shard_map(function, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


def sharded_update(update: UpdateFunctions, mesh: Mesh) -> UpdateFunctions:
    """``update`` with its gradients taken per batch shard and averaged by one ``pmean`` over the mesh.

    ``update`` must have ``gradients``/``apply_gradients``. Example ``i`` of the
    global batch draws from ``fold_in(key, i)`` on whichever device holds it,
    so the result equals the one-device ``update.step`` up to the order of the
    sums.
    """
    axis = mesh.axis_names[0]

    def shard_gradients(state, batch, keys):
        grads, metrics = update.gradients(state, batch, keys)
        return jax.lax.pmean((grads, metrics), axis)

    gradients = _shard_map(shard_gradients, mesh, (P(), P(axis), P(axis)), (P(), P()))
    return dataclasses.replace(update, step=step_from_gradients(gradients, update.apply_gradients))


def _build(program: StepProgram, mesh: Mesh | None, window: tuple[int, int] | None) -> Callable:
    update, steps, nonfinite = program.update, program.steps_per_dispatch, program.nonfinite
    if mesh is not None and update.gradients is not None:
        update = sharded_update(update, mesh)
    replicated = None if mesh is None else NamedSharding(mesh, P())

    def run(state, batches, base_key, start, count):
        program.traces += 1
        return _multi_update(update, steps, state, batches, lambda index, batch: batch, base_key, start, count,
                             nonfinite)

    def run_replay(state, table, base_key, sample_key, start, count):
        program.traces += 1
        batch_size, seq_len = window

        def batch_at(index, _):
            batch = sample_windows(table, jax.random.fold_in(sample_key, start + index), batch_size, seq_len)
            if mesh is None:
                return batch
            return jax.lax.with_sharding_constraint(batch, NamedSharding(mesh, P("batch")))

        return _multi_update(update, steps, state, jnp.zeros((steps,), jnp.int32), batch_at, base_key, start,
                             count, nonfinite)

    if window is not None:
        if mesh is None:
            return jax.jit(run_replay, donate_argnums=(0,))
        return jax.jit(run_replay, donate_argnums=(0,), in_shardings=(replicated,) * 6,
                       out_shardings=(replicated, replicated))
    if mesh is None:
        return jax.jit(run, donate_argnums=(0,))
    chunks = NamedSharding(mesh, P(None, "batch"))
    return jax.jit(run, donate_argnums=(0,), in_shardings=(replicated, chunks, replicated, replicated, replicated),
                   out_shardings=(replicated, replicated))


@shared(key=lambda model, settings, steps_per_dispatch, nonfinite="ignore": (
    type(model), model.config, settings, int(steps_per_dispatch), nonfinite))
def step_program(model: WorldModel, settings: OptimizerSettings, steps_per_dispatch: int,
                 nonfinite: str = "ignore") -> StepProgram:
    """The K-update program of ``model`` under ``settings``, guarded as ``nonfinite`` says; the same one for
    models of the same class and config (:func:`worldloom.core.sharing.shared`)."""
    program = StepProgram(model.make_update(settings), steps_per_dispatch=int(steps_per_dispatch),
                          nonfinite=nonfinite)
    program.run = program.runner()
    return program
