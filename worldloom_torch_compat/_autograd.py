"""Running JAX functions on torch inputs, with torch autograd flowing through them.

:func:`call_jax` applies a JAX function to pytrees whose leaves are torch
tensors. When torch records gradients and some float input requires them, the
forward pass runs under :func:`jax.vjp` inside a ``torch.autograd.Function``
and keeps the pullback, so the backward pass reuses the forward's residuals
(and hence its random draws) exactly; ``loss.backward()`` then fills ``.grad``
of those torch inputs. Otherwise the function just runs, with no graph kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import torch
from torch.autograd.function import once_differentiable

from worldloom_torch_compat._convert import to_jax, to_torch


def _wants_grad(leaf: Any) -> bool:
    return (isinstance(leaf, torch.Tensor) and leaf.requires_grad
            and (leaf.is_floating_point() or leaf.is_complex()))


def _is_float(x: jax.Array) -> bool:
    return bool(jax.numpy.issubdtype(x.dtype, jax.numpy.inexact))


class _Call:
    """One application of ``fn``: the flattened inputs and, after forward, the outputs' layout."""

    def __init__(self, fn: Callable, leaves: list, treedef, diff_index: list[int], device, held=()):
        self.fn = fn
        self.leaves = leaves
        self.held = list(held)  # the other torch inputs, which JAX may read in the backward pass too
        self.treedef = treedef
        self.diff_index = diff_index
        self.device = device
        self.out_tree = None
        self.out_avals = None

    def apply(self, diff_values) -> Any:
        leaves = list(self.leaves)
        for index, value in zip(self.diff_index, diff_values):
            leaves[index] = value
        args = jax.tree_util.tree_unflatten(self.treedef, leaves)
        return self.fn(*args)


class _JaxFunction(torch.autograd.Function):
    """``torch.autograd.Function`` over :func:`jax.vjp` (see :func:`call_jax`)."""

    @staticmethod
    def forward(ctx, call: _Call, *diff_tensors):
        primals = [to_jax(t) for t in diff_tensors]
        out, pullback = jax.vjp(lambda *values: call.apply(values), *primals)
        out_leaves, call.out_tree = jax.tree_util.tree_flatten(out)
        call.out_avals = [(x.shape, x.dtype) for x in out_leaves]
        ctx.call, ctx.pullback, ctx.num_diff = call, pullback, len(diff_tensors)
        # Saved, so torch rejects in-place edits of any input (JAX may hold views
        # of them as residuals) between this forward and its backward.
        ctx.save_for_backward(*diff_tensors, *call.held)
        outputs = tuple(to_torch(x, call.device) for x in out_leaves)
        ctx.mark_non_differentiable(*[o for o, x in zip(outputs, out_leaves) if not _is_float(x)])
        return outputs

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        inputs = ctx.saved_tensors[:ctx.num_diff]
        call = ctx.call
        cotangents = []
        for grad, (shape, dtype) in zip(grads, call.out_avals):
            if not jax.numpy.issubdtype(dtype, jax.numpy.inexact):
                cotangents.append(np.zeros(shape, jax.dtypes.float0))
            elif grad is None:
                cotangents.append(jax.numpy.zeros(shape, dtype))
            else:
                cotangents.append(to_jax(grad).astype(dtype))
        input_grads = ctx.pullback(jax.tree_util.tree_unflatten(call.out_tree, cotangents))
        out = [None]
        for tensor, grad in zip(inputs, input_grads):
            out.append(to_torch(grad, tensor.device).to(tensor.dtype))
        return tuple(out)


def call_jax(fn: Callable[..., Any], *args: Any, device: torch.device | str | None = None) -> Any:
    """Apply a JAX function to torch pytrees; torch autograd flows through it.

    Args:
        fn: ``fn(*args)`` taking and returning JAX pytrees; it must be
            traceable by :func:`jax.vjp` in its array arguments.
        *args: Pytrees (dicts, tuples, ``LatentState`` ...) whose torch tensor
            leaves become JAX arrays (zero-copy where possible); other leaves
            are passed as they are.
        device: torch device of the outputs; by default the one matching each
            output's JAX device.

    Returns:
        ``fn``'s output pytree with torch tensors at the leaves. If grad mode is
        on and any float tensor leaf of ``args`` requires grad, float outputs
        carry a ``grad_fn`` whose backward is ``fn``'s JAX pullback.
    """
    leaves, treedef = jax.tree_util.tree_flatten(args)
    diff_index = [i for i, leaf in enumerate(leaves) if _wants_grad(leaf)] if torch.is_grad_enabled() else []
    differentiable = set(diff_index)
    converted = [to_jax(leaf) if isinstance(leaf, torch.Tensor) and i not in differentiable else leaf
                 for i, leaf in enumerate(leaves)]
    held = [leaf for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor) and i not in differentiable]
    call = _Call(fn, converted, treedef, diff_index, device, held)
    if not diff_index:
        out = call.apply([])
        return jax.tree_util.tree_map(lambda x: to_torch(x, device) if isinstance(x, jax.Array) else x, out)
    outputs = _JaxFunction.apply(call, *[leaves[i] for i in diff_index])
    return jax.tree_util.tree_unflatten(call.out_tree, list(outputs))
