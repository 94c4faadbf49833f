"""DreamerV3 actor and critic networks (3 x ``Dense -> RMSNorm -> SiLU`` MLPs)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from worldloom.models.dreamerv3.networks import NormAct
from worldloom.nn.layers import Dense


class Actor(nn.Module):
    """Policy over features ``[N, F]``.

    Discrete: logits ``[N, A]`` of a plain categorical (the reference's policy
    mixes in no uniform share; the latents' 1% unimix is the world model's).
    Continuous: ``[N, 2A]`` raw mean and std inputs of a bounded normal.
    """

    action_dim: int
    discrete: bool
    units: int
    layers: int = 3
    outscale: float = 0.01

    @nn.compact
    def __call__(self, features):
        x = features
        for _ in range(self.layers):
            x = NormAct(self.units)(x)
        size = self.action_dim if self.discrete else 2 * self.action_dim
        return Dense(size, outscale=self.outscale)(x).astype(jnp.float32)


class Critic(nn.Module):
    """Two-hot value logits ``[N, bins]`` over features ``[N, F]``; zero-initialised output."""

    units: int
    bins: int = 255
    layers: int = 3

    @nn.compact
    def __call__(self, features):
        x = features
        for _ in range(self.layers):
            x = NormAct(self.units)(x)
        return Dense(self.bins, outscale=0.0)(x).astype(jnp.float32)


# ---------------------------------------------------------------- action distributions

MIN_STD, MAX_STD = 0.1, 1.0


def policy_sample(raw, key, discrete: bool, greedy: bool = False):
    """Sample actions ``[N, A]`` (one-hot when discrete) from actor output."""
    if discrete:
        index = jnp.argmax(raw, -1) if greedy else jax.random.categorical(key, raw, -1)
        return jax.nn.one_hot(index, raw.shape[-1], dtype=jnp.float32)
    mean, std = _normal_params(raw)
    if greedy:
        return mean
    return mean + std * jax.random.normal(key, mean.shape)


def policy_log_prob(raw, action, discrete: bool):
    """Log-probability ``[N]`` of ``action`` under the policy."""
    if discrete:
        return jnp.sum(action * jax.nn.log_softmax(raw, -1), -1)
    mean, std = _normal_params(raw)
    z = (action - mean) / std
    return jnp.sum(-0.5 * z * z - jnp.log(std) - 0.5 * jnp.log(2 * jnp.pi), -1)


def policy_entropy(raw, discrete: bool):
    """Entropy ``[N]`` of the policy."""
    if discrete:
        log_probs = jax.nn.log_softmax(raw, -1)
        return -jnp.sum(jnp.exp(log_probs) * log_probs, -1)
    _, std = _normal_params(raw)
    return jnp.sum(0.5 * jnp.log(2 * jnp.pi * jnp.e) + jnp.log(std), -1)


def _normal_params(raw):
    mean_raw, std_raw = jnp.split(raw, 2, -1)
    mean = jnp.tanh(mean_raw)
    std = (MAX_STD - MIN_STD) * jax.nn.sigmoid(std_raw + 2.0) + MIN_STD
    return mean, std
