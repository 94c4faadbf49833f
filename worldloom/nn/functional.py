"""Pure math shared by the model families: symlog, two-hot, unimix, returns.

All functions are jittable and act on the last axis unless stated.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# ---------------------------------------------------------------- symlog


def symlog(x: jax.Array) -> jax.Array:
    """``sign(x) * log(1 + |x|)``, elementwise."""
    return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def symexp(x: jax.Array) -> jax.Array:
    """Inverse of :func:`symlog`: ``sign(x) * (exp(|x|) - 1)``."""
    return jnp.sign(x) * jnp.expm1(jnp.abs(x))


# ---------------------------------------------------------------- DreamerV3 two-hot

DREAMER_NUM_BINS = 255


def dreamer_bins(num_bins: int = DREAMER_NUM_BINS, limit: float = 20.0) -> jax.Array:
    """DreamerV3's symexp-spaced bins, symmetric around an exact zero.

    ``symexp(linspace(-limit, 0, (n+1)/2))`` mirrored, so ``bins[n//2] == 0``.

    Returns:
        ``[num_bins]`` float32 bin centres in real units.
    """
    if num_bins % 2 != 1:
        raise ValueError(f"num_bins must be odd, got {num_bins}")
    half = symexp(jnp.linspace(-limit, 0.0, (num_bins + 1) // 2, dtype=jnp.float32))
    return jnp.concatenate([half, -half[:-1][::-1]], 0)


def twohot(x: jax.Array, bins: jax.Array) -> jax.Array:
    """Two-hot encoding of ``x`` ``[...]`` over sorted, distinct ``bins`` ``[K]`` -> ``[..., K]``.

    The weight is split between the two neighbouring bins in proportion to
    the distance; values outside the range put all weight on the end bin.
    """
    x = x.astype(jnp.float32)[..., None]
    num = bins.shape[0]
    # The number of bins at or below x: the bin below is the last of them, the bin above the next
    # (the bins are sorted and distinct).
    count = jnp.sum((bins <= x).astype(jnp.int32), -1)
    below = jnp.clip(count - 1, 0, num - 1)
    above = jnp.clip(count, 0, num - 1)
    x = x[..., 0]
    equal = (below == above) & ~jnp.isnan(x)  # NaN stays NaN
    dist_below = jnp.where(equal, 1.0, jnp.abs(bins[below] - x))
    dist_above = jnp.where(equal, 1.0, jnp.abs(bins[above] - x))
    total = dist_below + dist_above
    weight_below = dist_above / total
    weight_above = dist_below / total
    return (
        jax.nn.one_hot(below, num) * weight_below[..., None]
        + jax.nn.one_hot(above, num) * weight_above[..., None]
    )


def twohot_mean(logits: jax.Array, bins: jax.Array) -> jax.Array:
    """Expected value ``sum(softmax(logits) * bins)`` ``[..., K] -> [...]``.

    ``bins`` must be symmetric around an exact zero centre (as
    :func:`dreamer_bins`). The mirrored probabilities are subtracted before
    weighting, so symmetric logits (zero logits at initialisation) predict
    exactly 0 whatever order the compiler sums in, and large bins do not cancel.
    """
    probs = jax.nn.softmax(logits.astype(jnp.float32), -1)
    mid = (bins.shape[0] - 1) // 2
    difference = probs[..., mid + 1:] - probs[..., :mid][..., ::-1]
    return jnp.sum(difference * bins[mid + 1:], -1)


def twohot_loss(logits: jax.Array, target, bins: jax.Array, scales=None) -> jax.Array:
    """Cross-entropy of ``logits`` ``[..., K]`` against the two-hot of ``target`` ``[...]``.

    ``target`` may be a tuple of targets, with ``scales`` (default: ones): the
    sum of the scaled cross-entropies, from one log-softmax of ``logits``.
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
    target = target if isinstance(target, tuple) else (target,)
    scales = (1.0,) * len(target) if scales is None else scales
    weights = sum(scale * twohot(t, bins) for t, scale in zip(target, scales, strict=True))
    return -jnp.sum(jax.lax.stop_gradient(weights) * log_probs, -1)


# ---------------------------------------------------------------- TD-MPC2 two-hot

TDMPC_NUM_BINS = 101
TDMPC_VMIN = -10.0
TDMPC_VMAX = 10.0


def tdmpc_bins(num_bins: int = TDMPC_NUM_BINS, vmin: float = TDMPC_VMIN, vmax: float = TDMPC_VMAX):
    """TD-MPC2's evenly spaced bins in symlog space, ``[num_bins]``."""
    return jnp.linspace(vmin, vmax, num_bins, dtype=jnp.float32)


def tdmpc_twohot(
    x: jax.Array, num_bins: int = TDMPC_NUM_BINS, vmin: float = TDMPC_VMIN, vmax: float = TDMPC_VMAX
) -> jax.Array:
    """TD-MPC2 two-hot of ``symlog(x)`` ``[...]`` -> ``[..., num_bins]``."""
    bin_size = (vmax - vmin) / (num_bins - 1)
    y = jnp.clip(symlog(x.astype(jnp.float32)), vmin, vmax)
    position = (y - vmin) / bin_size
    index = jnp.clip(jnp.floor(position), 0, num_bins - 1)
    offset = position - index
    index = index.astype(jnp.int32)
    upper = jnp.clip(index + 1, 0, num_bins - 1)
    return jax.nn.one_hot(index, num_bins) * (1.0 - offset)[..., None] + jax.nn.one_hot(
        upper, num_bins
    ) * offset[..., None]


def tdmpc_twohot_mean(
    logits: jax.Array, vmin: float = TDMPC_VMIN, vmax: float = TDMPC_VMAX
) -> jax.Array:
    """``symexp(sum(softmax(logits) * bins))`` ``[..., K] -> [...]``."""
    bins = tdmpc_bins(logits.shape[-1], vmin, vmax)
    return symexp(jnp.sum(jax.nn.softmax(logits.astype(jnp.float32), -1) * bins, -1))


def tdmpc_twohot_loss(
    logits: jax.Array, target: jax.Array, vmin: float = TDMPC_VMIN, vmax: float = TDMPC_VMAX
) -> jax.Array:
    """Soft cross-entropy of ``logits`` ``[..., K]`` against two-hot ``target`` ``[...]``."""
    soft = jax.lax.stop_gradient(tdmpc_twohot(target, logits.shape[-1], vmin, vmax))
    return -jnp.sum(soft * jax.nn.log_softmax(logits.astype(jnp.float32), -1), -1)


# ---------------------------------------------------------------- categorical latents


def unimix_probs(logits: jax.Array, unimix: float = 0.01) -> jax.Array:
    """``(1 - unimix) * softmax(logits) + unimix / classes`` over the last axis."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), -1)
    return (1.0 - unimix) * probs + unimix / logits.shape[-1]


def unimix_logits(logits: jax.Array, unimix: float = 0.01) -> jax.Array:
    """Log of :func:`unimix_probs`: logits of the mixed distribution."""
    return jnp.log(unimix_probs(logits, unimix))


def is_key_batch(key: jax.Array) -> bool:
    """Whether ``key`` is a batch of PRNG keys ``[B]`` (one per example) rather than one key."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key.ndim >= 1
    return key.ndim >= 2  # raw uint32 keys: [2] or [B, 2]


def example_keys(key: jax.Array, count: int, offset=0) -> jax.Array:
    """One key per example ``[count]``: example ``i`` gets ``fold_in(key, offset + i)``.

    A loss that draws from per-example keys draws the same numbers for an
    example wherever it sits: in a whole batch on one device, or in its shard
    of the batch on another (``offset`` is the shard's first example).
    """
    indices = jnp.arange(count, dtype=jnp.uint32) + jnp.asarray(offset, jnp.uint32)
    return jax.vmap(jax.random.fold_in, (None, 0))(key, indices)


def split_key(key: jax.Array, num: int) -> jax.Array:
    """``num`` keys from ``key`` ``[num]``; from a batch of keys ``[B]``, ``[num, B]`` (each example split)."""
    if not is_key_batch(key):
        return jax.random.split(key, num)
    return jnp.swapaxes(jax.vmap(lambda k: jax.random.split(k, num))(key), 0, 1)


def categorical_index(key: jax.Array, probs: jax.Array) -> jax.Array:
    """Class indices ``[...]`` drawn from probabilities ``probs`` ``[..., C]`` (last axis sums to 1).

    Inverts the CDF with one uniform per distribution: the index is the
    number of classes whose cumulative probability is at most ``u * total``.
    ``jax.random.categorical`` (Gumbel-max) draws ``C`` uniforms and takes
    three logarithms per class; this draws one uniform per distribution and
    takes none. The distribution is the same to the resolution of a float32
    uniform (steps of 2**-23 of probability); the draws for a key differ.
    Computed in float32 whatever the dtype of ``probs``.
    """
    cdf = jnp.cumsum(probs.astype(jnp.float32), -1)
    u = jax.random.uniform(key, probs.shape[:-1] + (1,), jnp.float32) * cdf[..., -1:]
    return jnp.minimum(jnp.sum(cdf <= u, -1), probs.shape[-1] - 1)


def bernoulli16(key: jax.Array, p: float, shape: tuple) -> jax.Array:
    """A boolean mask of ``shape``, each entry True with probability ``round(p * 2**16) / 2**16``.

    Draws 16 random bits per entry, two entries per 32-bit word:
    ``jax.random.bernoulli`` draws a whole word per entry, so this generates
    half the random words. ``p`` is met to within ``2**-17`` (for a dropout
    rate of 0.01: a keep probability of 0.990005 instead of 0.99).
    """
    size = math.prod(shape)
    words = jax.random.bits(key, ((size + 1) // 2,), jnp.uint32)
    halves = jnp.stack([words & 0xFFFF, words >> 16], -1).reshape(-1)[:size]
    return (halves < round(p * 65536)).reshape(shape)


def straight_through_sample(key: jax.Array, probs: jax.Array) -> jax.Array:
    """One-hot sample ``[..., C]`` whose gradient flows into ``probs``.

    ``key`` is one key, or a batch of keys ``[B]`` (see :func:`example_keys`)
    for ``probs`` ``[B, ..., C]``: example ``b`` is drawn from ``key[b]``.
    Draws with :func:`categorical_index`.
    """
    if is_key_batch(key):
        index = jax.vmap(categorical_index)(key, probs)
    else:
        index = categorical_index(key, probs)
    sample = jax.nn.one_hot(index, probs.shape[-1], dtype=probs.dtype)
    return sample + probs - jax.lax.stop_gradient(probs)


def straight_through_mode(probs: jax.Array) -> jax.Array:
    """One-hot of the most likely class, with straight-through gradients."""
    sample = jax.nn.one_hot(jnp.argmax(probs, -1), probs.shape[-1], dtype=probs.dtype)
    return sample + probs - jax.lax.stop_gradient(probs)


def categorical_kl(p_probs: jax.Array, q_probs: jax.Array) -> jax.Array:
    """``KL[p || q]`` over the last axis, ``[..., C] -> [...]``."""
    return jnp.sum(p_probs * (jnp.log(p_probs) - jnp.log(q_probs)), -1)


def categorical_entropy(probs: jax.Array) -> jax.Array:
    return -jnp.sum(probs * jnp.log(probs), -1)


# ---------------------------------------------------------------- returns


def lambda_return(
    rewards: jax.Array, values: jax.Array, continues: jax.Array, lam: float
) -> jax.Array:
    """TD(lambda) returns along a trajectory, time first.

    ``rewards[t]``, ``continues[t]`` belong to arriving at state ``t`` (the
    DreamerV3 convention); ``continues`` already include the discount.
    ``R[T-1] = v[T-1]`` and
    ``R[t] = r[t+1] + c[t+1] * ((1 - lam) * v[t+1] + lam * R[t+1])``.

    Args:
        rewards, values, continues: ``[T, ...]``.
        lam: The lambda of TD(lambda).

    Returns:
        ``[T-1, ...]`` returns of states ``0 .. T-2``.
    """

    def step(next_return, inputs):
        reward, value, cont = inputs
        ret = reward + cont * ((1.0 - lam) * value + lam * next_return)
        return ret, ret

    _, returns = jax.lax.scan(
        step, values[-1], (rewards[1:], values[1:], continues[1:]), reverse=True
    )
    return returns


# ---------------------------------------------------------------- activations


def sigmoid(x: jax.Array) -> jax.Array:
    """The logistic function as ``0.5 * tanh(x / 2) + 0.5``, the same function.

    One ``tanh`` and no division: XLA's CPU code for ``jax.nn.sigmoid``
    divides, and runs slower. Within 2e-7 of ``jax.nn.sigmoid`` in float32.
    """
    return 0.5 * jnp.tanh(0.5 * x) + 0.5


def silu(x: jax.Array) -> jax.Array:
    """``x * sigmoid(x)`` (``jax.nn.silu``) through :func:`sigmoid`."""
    return x * sigmoid(x)


@jax.custom_jvp
def mish(x: jax.Array) -> jax.Array:
    """``x * tanh(softplus(x))`` (``jax.nn.mish``'s values) from one ``exp``.

    With ``e = exp(x)`` and ``n = e * (e + 2)``, ``tanh(softplus(x)) = n / (n + 2)``
    and the derivative is ``n / (n + 2) + x * 4 e (1 + e) / (n + 2)**2``: a sum
    of terms of one sign, so no cancellation. Above ``x = 20``, where
    ``n / (n + 2)`` is 1 in f32, the exponential takes 20 and the derivative
    is 1. Against float64, the values are as accurate as ``jax.nn.mish``'s
    (which takes an ``exp``, a ``log1p`` and a ``tanh``) and the derivative
    within a few f32 ulps. Computed in float32 and returned in the dtype of
    ``x`` (``n`` overflows float16 from x = 6).
    """
    return _mish_and_slope(x)[0]


def _mish_and_slope(x):
    x32 = x.astype(jnp.float32)
    e = jnp.exp(jnp.minimum(x32, 20.0))
    n = e * (e + 2.0)
    inv = 1.0 / (n + 2.0)
    ratio = n * inv
    slope = jnp.where(x32 < 20.0, ratio + x32 * (4.0 * e * (1.0 + e) * inv * inv), 1.0)
    return (x32 * ratio).astype(x.dtype), slope.astype(x.dtype)


@mish.defjvp
def _mish_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    value, slope = _mish_and_slope(x)
    return value, slope * dx


# ---------------------------------------------------------------- convolution


def _conv_forward(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 same-padded conv: ``x [N, H, W, C]``, ``kernel [k, k, C, O]`` (odd ``k``) -> ``[N, H, W, O]``.

    ``lax.conv_general_dilated``'s values. The input gradient is the same conv
    of the output gradient with the kernel flipped and its channels swapped;
    the kernel gradient is ``k * k`` matmuls of shifted inputs against the
    output gradient (``[C, N*H*W] @ [N*H*W, O]``, one after another). XLA's own
    gradients (a conv whose window spans the whole image, and a transposed conv
    that misses the fast conv kernels inside loops) run several times slower on
    CPU.
    """
    return _conv_forward(x, kernel)


def _conv_same_fwd(x, kernel):
    return _conv_forward(x, kernel), (x, kernel)


def _conv_same_bwd(residuals, grad):
    x, kernel = residuals
    size, _, channels, features = kernel.shape
    grad_x = _conv_forward(grad, kernel[::-1, ::-1].swapaxes(2, 3))  # odd k, same padding: the flipped kernel
    n, h, w, _ = x.shape
    pad = size // 2
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    grad = grad.reshape(-1, features)

    def tap(index):  # one kernel position at a time: one shifted copy of x alive, not k * k
        window = jax.lax.dynamic_slice(padded, (0, index // size, index % size, 0), (n, h, w, channels))
        return jnp.matmul(window.reshape(-1, channels).T, grad, preferred_element_type=jnp.float32)

    grad_kernel = jax.lax.map(tap, jnp.arange(size * size)).reshape(kernel.shape).astype(kernel.dtype)
    return grad_x, grad_kernel


conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)
