"""Stateful training pieces as optax-style ``(init, update)`` pairs over pytrees.

Easy to jit, scan and checkpoint: the state is a plain pytree.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class PercentileState(NamedTuple):
    low: jax.Array
    high: jax.Array


class PercentileNormalizer(NamedTuple):
    """Return scale ``max(limit, EMA(P_high) - EMA(P_low))`` (DreamerV3's retnorm).

    ``update(state, x) -> (state, offset, scale)``; divide advantages by
    ``scale``.
    """

    init: callable
    update: callable


def percentile_normalizer(rate: float = 0.01, low: float = 5.0, high: float = 95.0,
                          limit: float = 1.0) -> PercentileNormalizer:
    """DreamerV3's percentile return normaliser.

    Args:
        rate: EMA rate of the percentiles (0.01).
        low, high: Percentiles (5 and 95).
        limit: Smallest scale (1.0): small returns are not blown up.
    """

    def init() -> PercentileState:
        return PercentileState(jnp.zeros([], jnp.float32), jnp.zeros([], jnp.float32))

    def update(state: PercentileState, values: jax.Array):
        values = jax.lax.stop_gradient(values.astype(jnp.float32))
        new_low = (1 - rate) * state.low + rate * jnp.percentile(values, low)
        new_high = (1 - rate) * state.high + rate * jnp.percentile(values, high)
        scale = jnp.maximum(limit, new_high - new_low)
        return PercentileState(new_low, new_high), new_low, scale

    return PercentileNormalizer(init, update)


def ema_update(target, source, rate: float):
    """Polyak average: ``target <- (1 - rate) * target + rate * source`` leafwise."""
    return jax.tree_util.tree_map(lambda t, s: (1.0 - rate) * t + rate * s, target, source)
