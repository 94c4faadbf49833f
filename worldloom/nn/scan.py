"""A ``lax.scan`` whose linear layers' weight gradients are one product each, after the loop.

Differentiating a scan adds every step's weight gradient into the sums inside
the backward loop: per step, a product over the step's few rows and a
read-modify-write of every kernel. For a recurrence over a small batch (the
RSSM's posterior: 16 rows, 64 steps) that traffic outweighs the products.
:func:`scan_hoisted` runs the backward loop for the activations' gradients
only, stacks each tapped layer's inputs and output cotangents over the steps,
and forms each kernel's gradient in one product over all ``steps x rows``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from worldloom.nn.layers import TAP_INPUTS, TAP_OUTPUTS, stop_tapped, tap_weight_grads


def _add(tree, extra):
    """``tree`` with ``extra`` (a subtree of the same keys) added where it has leaves."""
    if not isinstance(extra, dict):
        return tree + extra
    return {**tree, **{name: _add(tree[name], value) for name, value in extra.items()}}


def apply_tapped(module, params, taps, *args, method=None):
    """``module.apply`` with its linear layers tapped, for a :func:`scan_hoisted` step.

    Returns:
        ``(out, inputs, taps)``: the tapped layers' inputs and the
        :data:`~worldloom.nn.layers.TAP_OUTPUTS` perturbations (zeros, created
        here, when ``taps`` is None).
    """
    if taps is None:
        out, state = module.apply({"params": params}, *args, method=method, mutable=[TAP_INPUTS, TAP_OUTPUTS])
        return out, state[TAP_INPUTS], state[TAP_OUTPUTS]
    out, state = module.apply({"params": params, TAP_OUTPUTS: taps}, *args, method=method, mutable=[TAP_INPUTS])
    return out, state[TAP_INPUTS], taps


def scan_hoisted(step: Callable, params, consts, carry, xs, hoist: bool = True):
    """``lax.scan`` over ``xs`` whose tapped layers' weight gradients are summed outside the loop.

    The values and every gradient equal those of the plain scan
    ``lax.scan(lambda c, x: step(params, consts, c, x, ...)[:2], carry, xs)``;
    only the order of the weight gradients' sums differs.

    Args:
        step: ``step(params, consts, carry, x, taps) -> (carry, y, inputs, taps)``, one step. It
            applies the module that ``params`` belong to with :func:`apply_tapped` and returns the
            ``inputs`` and ``taps`` that gives; that module's :class:`~worldloom.nn.layers.Dense`
            and :class:`~worldloom.nn.layers.BlockLinear` layers are the tapped ones, and each may
            run once per step. Modules applied without :func:`apply_tapped` are not tapped.
        params: The modules' params; the tapped layers' get their gradients outside the loop, all
            others (norm scales, say) inside it as usual.
        consts: Other arrays every step reads (differentiable).
        carry: The initial carry.
        xs: Per-step inputs with a leading axis ``[T, ...]``.
        hoist: False runs the plain ``lax.scan`` instead (its weight gradients summed in the loop).

    Returns:
        ``(carry, ys)`` as ``lax.scan`` returns them.
    """
    if not hoist:
        return jax.lax.scan(lambda c, x: step(params, consts, c, x, None)[:2], carry, xs)
    first = jax.tree.map(lambda a: a[0], xs)
    length = jax.tree.leaves(xs)[0].shape[0]
    _, _, shapes, tap_shapes = jax.eval_shape(lambda: step(params, consts, carry, first, None))
    taps = jax.tree.map(lambda s: jnp.zeros((length, *s.shape), s.dtype), tap_shapes)

    def run(params, consts, carry, xs, taps):
        frozen = stop_tapped(params, shapes)

        def body(carry, inputs):
            x, tap = inputs
            carry, y, layer_inputs, _ = step(frozen, consts, carry, x, tap)
            return carry, (y, layer_inputs)

        carry, (ys, layer_inputs) = jax.lax.scan(body, carry, (xs, taps))
        return (carry, ys), layer_inputs

    @jax.custom_vjp
    def scan(params, consts, carry, xs, taps):
        return run(params, consts, carry, xs, taps)[0]

    def forward(params, consts, carry, xs, taps):
        out, pullback, layer_inputs = jax.vjp(run, params, consts, carry, xs, taps, has_aux=True)
        return out, (pullback, layer_inputs)

    def backward(residuals, cotangents):
        pullback, layer_inputs = residuals
        d_params, d_consts, d_carry, d_xs, d_taps = pullback(cotangents)
        d_params = _add(d_params, tap_weight_grads(d_params, layer_inputs, d_taps))
        return d_params, d_consts, d_carry, d_xs, d_taps

    scan.defvjp(forward, backward)
    return scan(params, consts, carry, xs, taps)
