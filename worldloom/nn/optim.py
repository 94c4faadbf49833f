"""Optimiser transforms of the references, as optax ``GradientTransformation``s."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


def global_norm(tree) -> jax.Array:
    """The L2 norm of all of ``tree``'s leaves together, a scalar (the norm ``optax.clip_by_global_norm`` clips;
    ``optax.global_norm`` is deprecated)."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree_util.tree_leaves(tree)))


def clip_by_agc(clip: float = 0.3, pmin: float = 1e-3) -> optax.GradientTransformation:
    """Adaptive gradient clipping per parameter tensor (DreamerV3).

    An update ``u`` of parameter ``p`` is rescaled to norm ``clip * max(pmin, |p|)``
    when it is larger.
    """

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params):
        def one(u, p):
            limit = clip * jnp.maximum(pmin, jnp.linalg.norm(p.reshape(-1)))
            norm = jnp.linalg.norm(u.reshape(-1))
            return jnp.where(norm > limit, u * (limit / jnp.maximum(norm, 1e-30)), u)

        return jax.tree_util.tree_map(one, updates, params), state

    return optax.GradientTransformation(init_fn, update_fn)


class MomentumState(NamedTuple):
    count: jax.Array
    mu: optax.Updates


def scale_by_momentum(beta: float = 0.9) -> optax.GradientTransformation:
    """Bias-corrected exponential moving average of updates."""

    def init_fn(params):
        return MomentumState(jnp.zeros([], jnp.int32), jax.tree_util.tree_map(jnp.zeros_like, params))

    def update_fn(updates, state, params=None):
        del params
        count = state.count + 1
        mu = jax.tree_util.tree_map(lambda m, u: beta * m + (1 - beta) * u, state.mu, updates)
        correction = 1.0 - beta ** count.astype(jnp.float32)
        return jax.tree_util.tree_map(lambda m: m / correction, mu), MomentumState(count, mu)

    return optax.GradientTransformation(init_fn, update_fn)


def kernels(params):
    """A mask of ``params``: True at the dense and convolution kernels (leaves named ``kernel``), False at biases
    and norm scales. DreamerV3 decays these alone (``wdregex: /kernel$`` in ``dreamerv3/agent.py``)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def laprop_agc(
    learning_rate,
    *,
    agc: float = 0.3,
    pmin: float = 1e-3,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-20,
    weight_decay: float = 0.0,
    grad_clip: float | None = None,
) -> optax.GradientTransformation:
    """DreamerV3's optimiser: AGC -> RMS scaling -> momentum (LaProp) -> lr.

    ``grad_clip`` adds a global-norm clip first and ``weight_decay`` a decoupled
    decay of the kernels (:func:`kernels`), for users who set them in ``TrainingConfig``.
    """
    chain = []
    if grad_clip:
        chain.append(optax.clip_by_global_norm(grad_clip))
    chain += [
        clip_by_agc(agc, pmin),
        optax.scale_by_rms(decay=beta2, eps=eps, eps_in_sqrt=False, bias_correction=True),
        scale_by_momentum(beta1),
    ]
    if weight_decay:
        chain.append(optax.add_decayed_weights(weight_decay, mask=kernels))
    chain.append(optax.scale_by_learning_rate(learning_rate))
    return optax.chain(*chain)
