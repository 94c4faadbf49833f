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

from worldloom.nn.layers import TAP_INPUTS, TAP_OUTPUTS

# ---------------------------------------------------------------- the tapped layers' weight gradients


def _outer(x: jax.Array, d: jax.Array, spec: str) -> jax.Array:
    """A weight gradient ``einsum(spec, x, d)`` at ``d``'s precision, accumulated in float32."""
    return jnp.einsum(spec, x.astype(d.dtype), d, preferred_element_type=jnp.float32)


def _dense_grads(params, inputs, d_out):
    (x,) = inputs
    x, d = x.reshape(-1, x.shape[-1]), d_out.reshape(-1, d_out.shape[-1])
    grads = {"kernel": _outer(x, d, "ni,no->io")}
    if "bias" in params["Dense_0"]:
        grads["bias"] = d.astype(jnp.float32).sum(0)
    return {"Dense_0": grads}


def _block_grads(params, inputs, d_out, grouped: bool):
    blocks, _, out_block = params["kernel"].shape
    x = inputs[0]
    if grouped:  # [T, G, ..., I/G]: one leading scan axis before the blocks
        x = jnp.moveaxis(x, 1, 0).reshape(blocks, -1, x.shape[-1])
        d = jnp.moveaxis(d_out, 1, 0).reshape(blocks, -1, out_block)
    else:
        x = x.reshape(-1, blocks, x.shape[-1] // blocks).swapaxes(0, 1)
        d = d_out.reshape(-1, blocks, out_block).swapaxes(0, 1)
    kernel = [_outer(x, d, "gni,gno->gio")]
    if len(inputs) == 2:
        shared = inputs[1]
        kernel.append(_outer(shared.reshape(-1, shared.shape[-1]), d, "ni,gno->gio"))
    return {"kernel": jnp.concatenate(kernel, 1), "bias": d.astype(jnp.float32).sum(1).reshape(-1)}


_TAP_GRADS = {
    "dense": _dense_grads,
    "block": lambda params, inputs, d_out: _block_grads(params, inputs, d_out, grouped=False),
    "block_grouped": lambda params, inputs, d_out: _block_grads(params, inputs, d_out, grouped=True),
}


def _is_tap(value) -> bool:
    """A layer's sown inputs (a tuple of arrays, under its kind), as against a submodule's collection (a dict)."""
    return isinstance(value, tuple)


def tap_weight_grads(params, inputs, d_out):
    """Weight gradients of the tapped layers from their stacked inputs and output cotangents.

    Args:
        params: The params tree, or a tree of the same structure and shapes (their gradients).
        inputs: The ``TAP_INPUTS`` collection, each layer's inputs stacked over a leading scan axis ``[T, ...]``.
        d_out: The gradient of the ``TAP_OUTPUTS`` perturbations ``[T, ...]``, the layers' output cotangents.

    Returns:
        A tree of the tapped layers' params (kernels and biases), each the sum over all steps and rows:
        one product over ``T * rows`` per kernel.
    """
    grads = {}
    for name, value in inputs.items():
        if _is_tap(value):
            grads.update(_TAP_GRADS[name](params, value, d_out[name]))
        else:
            grads[name] = tap_weight_grads(params[name], value, d_out[name])
    return grads


def stop_tapped(params, inputs):
    """``params`` with the tapped layers' params (those ``inputs`` names) under ``stop_gradient``."""
    if any(_is_tap(value) for value in inputs.values()):
        return jax.lax.stop_gradient(params)
    return {**params, **{name: stop_tapped(params[name], value) for name, value in inputs.items()}}


def _add(tree, extra):
    """``tree`` with ``extra`` (a subtree of the same keys) added where it has leaves, in ``tree``'s dtypes."""
    if not isinstance(extra, dict):
        return (tree + extra).astype(tree.dtype)
    return {**tree, **{name: _add(tree[name], value) for name, value in extra.items()}}


def apply_tapped(module, params, taps, *args, method=None):
    """``module.apply`` with its linear layers tapped, for a :func:`scan_hoisted` step.

    Args:
        module: A Flax module whose :class:`~worldloom.nn.layers.Dense` and
            :class:`~worldloom.nn.layers.BlockLinear` layers are to be tapped.
        params: Its params.
        taps: The step's output perturbations (each layer's output shape), or None.
        *args: The inputs of ``method``, for one step.
        method: The module's method to apply (its ``__call__`` when None).

    Returns:
        ``(out, inputs, taps)``: the tapped layers' inputs and the
        :data:`~worldloom.nn.layers.TAP_OUTPUTS` perturbations (zeros, created
        here, when ``taps`` is None).
    """
    if taps is None:
        out, state = module.apply({"params": params}, *args, method=method, mutable=[TAP_INPUTS, TAP_OUTPUTS])
        return out, state.get(TAP_INPUTS, {}), state.get(TAP_OUTPUTS, {})
    out, state = module.apply({"params": params, TAP_OUTPUTS: taps}, *args, method=method, mutable=[TAP_INPUTS])
    return out, state.get(TAP_INPUTS, {}), taps


def scan_hoisted(step: Callable, params, consts, carry, xs, hoist: bool = True):
    """``lax.scan`` over ``xs`` whose tapped layers' weight gradients are summed outside the loop.

    The values and every gradient equal those of the plain scan
    ``lax.scan(lambda c, x: step(params, consts, c, x, None)[:2], carry, xs)``
    (``hoist=False``); only the order of the weight gradients' sums differs.
    With a bfloat16 compute dtype the plain scan rounds each step's weight
    gradient to bfloat16 and this sums all steps in one float32 product, so
    the two differ by bfloat16 rounding.

    It is a ``jax.custom_vjp``: reverse mode only (no ``jax.jvp``,
    ``jax.linearize`` or ``jacfwd`` through it), and ``step`` must take every
    differentiated array through ``params``, ``consts``, ``carry`` or ``xs``,
    not close over one.

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
