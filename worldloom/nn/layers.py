"""Flax Linen layers and the reference initialisers."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]

# Collections of the linear layers' taps (see :func:`worldloom.nn.scan.scan_hoisted`): each tapped layer
# sows its inputs into TAP_INPUTS and adds a zero perturbation from TAP_OUTPUTS to its output, whose
# gradient is the output's cotangent. Applied without these collections the layers do neither.
TAP_INPUTS = "tap_inputs"
TAP_OUTPUTS = "tap_outputs"

# std of a standard normal truncated to [-2, 2]; dividing by it restores unit std.
_TRUNC_STD = 0.87962566103423978


def jit_init(fn: Callable) -> Callable:
    """``jax.jit(fn)`` for a params initialiser, compiled at LLVM optimisation level 1 on the CPU.

    An initialiser is one random-bits-and-transform fusion per param leaf, and
    LLVM's full optimisation of those dominates model creation: about 3x the
    compile time of level 1 (a small DreamerV3 image model: 16 s against 5 s
    on this project's 2-core CPU). The params are the same bit for bit
    (``tests/test_nn.py``), and runs at either level take the same time.
    A level named in ``XLA_FLAGS`` (``--xla_backend_optimization_level``) is
    kept, as for every other program; other backends compile at their
    defaults. Called under a trace (``jax.eval_shape``, an enclosing ``jit``),
    it traces ``fn`` there.
    """
    if jax.default_backend() != "cpu" or "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", ""):
        return jax.jit(fn)
    fast = jax.jit(fn, compiler_options={"xla_backend_optimization_level": 1})

    def init(*args):
        if any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(args)):
            return fn(*args)  # compiler options are for top-level programs only
        return fast(*args)

    return init


def dreamer_init(scale: float = 1.0) -> Initializer:
    """DreamerV3's fan-in truncated normal: ``trunc_normal(+-2) * 1.1368 * scale / sqrt(fan_in)``.

    ``scale == 0`` gives zeros (the reference zero-initialised output layers).
    The last axis of the kernel is fan-out; every other axis counts to fan-in,
    the block axis of :class:`BlockLinear` included (as the reference computes
    fans), so a block-diagonal layer is initialised like a dense one over its
    whole input.
    """

    def init(key, shape, dtype=jnp.float32, fan_in=None):
        if scale == 0.0:
            return jnp.zeros(shape, dtype)
        if fan_in is None:
            fan_in = 1
            for d in shape[:-1]:
                fan_in *= d
        std = scale / jnp.sqrt(fan_in) / _TRUNC_STD
        return (jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32) * std).astype(dtype)

    return init


def tdmpc_init(std: float = 0.02) -> Initializer:
    """TD-MPC2's weight init (``trunc_normal_(std=0.02)``, cut at +-2 absolute)."""

    def init(key, shape, dtype=jnp.float32):
        cut = 2.0 / std
        return (jax.random.truncated_normal(key, -cut, cut, shape, jnp.float32) * std).astype(dtype)

    return init


class RMSNorm(nn.Module):
    """``x * rsqrt(mean(x^2) + eps) * scale`` over the last axis, in float32.

    ``grouped=True`` takes features split into groups, group-major
    (``[G, ..., F/G]``, :class:`BlockLinear`'s grouped layout), and normalises
    over all ``F`` of them, as over the last axis of ``[..., F]``.
    """

    eps: float = 1e-4

    @nn.compact
    def __call__(self, x: jax.Array, grouped: bool = False) -> jax.Array:
        dtype = x.dtype
        x = x.astype(jnp.float32)
        if not grouped:
            scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
            x = x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + self.eps) * scale
            return x.astype(dtype)
        groups, width = x.shape[0], x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (groups * width,), jnp.float32)
        scale = scale.reshape(groups, *([1] * (x.ndim - 2)), width)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, (0, x.ndim - 1), keepdims=True) + self.eps) * scale
        return x.astype(dtype)


class Dense(nn.Module):
    """Linear layer with DreamerV3's init and an optional compute dtype."""

    features: int
    use_bias: bool = True
    outscale: float = 1.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.Dense(
            self.features,
            use_bias=self.use_bias,
            kernel_init=dreamer_init(self.outscale),
            bias_init=nn.initializers.zeros,
            dtype=self.dtype,
            param_dtype=jnp.float32,
        )(x)
        return _tap(self, "dense", (x if self.dtype is None else x.astype(self.dtype),), y)


class BlockLinear(nn.Module):
    """Block-diagonal linear layer: ``blocks`` independent dense maps.

    Input ``[..., I]`` is split into ``blocks`` groups of ``I/blocks``, each
    mapped to ``features/blocks`` outputs; kernel ``[blocks, I/b, F/b]``, bias ``[F]``.
    The init's fan-in is the whole input ``I`` (``blocks * I/b``), the
    reference's: weights have std ``1/sqrt(I)``, not ``1/sqrt(I/b)``.

    ``shared`` ``[..., S]`` (the same leading axes as ``x``, without the
    blocks') is appended to every group's input, as if each
    group's slice were concatenated with it (DreamerV3's GRU input); the kernel
    is then ``[blocks, I/b + S, F/b]``. The shared part is one dense matmul
    rather than ``blocks`` copies of it, the same sum in fewer, wider products.

    ``grouped=True`` takes and returns the group-major layout ``[blocks, ...,
    I/b]`` -> ``[blocks, ..., F/b]``: the layout of XLA's batched matmul, so a
    chain of block layers and the elementwise work between them (the GRU's
    gates) run without a transpose between each.
    """

    features: int
    blocks: int
    outscale: float = 1.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, shared: jax.Array | None = None, grouped: bool = False) -> jax.Array:
        in_features = x.shape[-1] * (self.blocks if grouped else 1)
        extra = 0 if shared is None else shared.shape[-1]
        if grouped and x.shape[0] != self.blocks:
            raise ValueError(f"BlockLinear: grouped input must lead with {self.blocks} blocks, got {list(x.shape)}")
        if in_features % self.blocks or self.features % self.blocks:
            raise ValueError(
                f"BlockLinear: {in_features} inputs and {self.features} outputs must divide "
                f"into {self.blocks} blocks"
            )
        per_block, out_block = in_features // self.blocks, self.features // self.blocks
        kernel = self.param("kernel", dreamer_init(self.outscale), (self.blocks, per_block + extra, out_block))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        dtype = self.dtype or x.dtype
        kernel, bias = kernel.astype(dtype), bias.astype(dtype)
        if shared is not None:
            # The shared kernel as one [S, G * F/G] matrix, transposed here in the open: in a scan body
            # over constant params XLA hoists this out of the loop, where a transposed operand of the
            # dot would be copied at every step.
            wide = jnp.moveaxis(kernel[:, per_block:], 0, 1).reshape(extra, self.features)
            shared_out = (shared.astype(dtype) @ wide).reshape(*shared.shape[:-1], self.blocks, out_block)
        if grouped:
            lead = x.shape[1:-1]
            out = jnp.einsum("g...i,gio->g...o", x.astype(dtype), kernel[:, :per_block])
            if shared is not None:
                out = out + jnp.moveaxis(shared_out, -2, 0)
            out = out + bias.reshape(self.blocks, *([1] * len(lead)), out_block)
        else:
            lead = x.shape[:-1]
            out = jnp.einsum("...gi,gio->...go", x.reshape(*lead, self.blocks, per_block).astype(dtype),
                             kernel[:, :per_block])
            if shared is not None:
                out = out + shared_out
            out = out.reshape(*lead, self.features) + bias
        inputs = (x.astype(dtype),) if shared is None else (x.astype(dtype), shared.astype(dtype))
        return _tap(self, "block_grouped" if grouped else "block", inputs, out)


def simnorm(x: jax.Array, group: int = 8) -> jax.Array:
    """Simplicial normalisation: softmax over consecutive groups of ``group``."""
    shape = x.shape
    grouped = x.reshape(*shape[:-1], shape[-1] // group, group)
    return jax.nn.softmax(grouped.astype(jnp.float32), -1).reshape(shape).astype(x.dtype)


class SimNorm(nn.Module):
    """Module form of :func:`simnorm`."""

    group: int = 8

    def __call__(self, x: jax.Array) -> jax.Array:
        return simnorm(x, self.group)


# ---------------------------------------------------------------- taps


def _only_once(previous, inputs):
    if previous is not None:
        raise ValueError("a tapped layer ran twice in one step; its weight gradients would be wrong")
    return inputs


def _tap(module: nn.Module, kind: str, inputs: tuple, out: jax.Array) -> jax.Array:
    """Sow a linear layer's ``inputs`` and perturb its ``out`` when the tap collections are in use.

    ``init`` makes every collection mutable; the taps are not variables of a model, so it skips them.
    """
    if module.is_initializing():
        return out
    module.sow(TAP_INPUTS, kind, inputs, init_fn=lambda: None, reduce_fn=_only_once)
    return module.perturb(kind, out, collection=TAP_OUTPUTS)
