"""The running Q scale ``S`` of the policy loss, as an optax-style ``init``/``update`` pair.

``S`` tracks the spread of Q values, ``max(1, P95 - P5)``, with a Polyak
average of rate ``tau``; the policy loss divides Q by it so that its gradient
has a scale independent of the reward scale (the reference's ``RunningScale``).

Example:
    >>> scale = running_scale(tau=0.01)
    >>> state = scale.init()
    >>> state = scale.update(state, jnp.arange(100.0))
    >>> float(state.value)  # 0.99 * 1 + 0.01 * (94.05 - 4.95)
    1.881
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp


class ScaleState(NamedTuple):
    """State of the running scale: its current ``value`` (f32 scalar)."""

    value: jax.Array


class RunningScale(NamedTuple):
    """``init() -> ScaleState`` and ``update(state, x) -> ScaleState``."""

    init: Callable[[], ScaleState]
    update: Callable[[ScaleState, jax.Array], ScaleState]


def percentile_spread(x: jax.Array, low: float = 5.0, high: float = 95.0) -> jax.Array:
    """``P_high - P_low`` of all entries of ``x`` (linear interpolation, as ``torch``/the reference)."""
    flat = x.reshape(-1).astype(jnp.float32)
    lo, hi = jnp.percentile(flat, jnp.array([low, high], jnp.float32), method="linear")
    return hi - lo


def running_scale(tau: float = 0.01) -> RunningScale:
    """The running trimmed scale: ``value <- lerp(value, max(1, P95 - P5), tau)``, starting at 1."""

    def init() -> ScaleState:
        return ScaleState(jnp.ones((), jnp.float32))

    def update(state: ScaleState, x: jax.Array) -> ScaleState:
        target = jnp.maximum(percentile_spread(jax.lax.stop_gradient(x)), 1.0)
        return ScaleState(state.value + tau * (target - state.value))

    return RunningScale(init, update)
