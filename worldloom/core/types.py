"""Pytrees shared by every model family.

Shapes: a single state is ``[B, ...]``; an observed sequence is ``[B, T, ...]``
(batch first, as the replay buffer samples); an imagined trajectory is
``[T, B, ...]`` (time first, as ``lax.scan`` produces it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class LatentState:
    """A model's latent state.

    Attributes:
        deterministic: Recurrent state ``[..., deter]`` (DreamerV3's GRU state;
            ``None`` for TD-MPC2, whose latent has no recurrent part).
        stochastic: The latent sample ``[..., stoch]``: DreamerV3's flattened
            one-hot codes (32 x classes) or TD-MPC2's SimNorm latent ``z``.
        logits: DreamerV3's categorical logits ``[..., 32, classes]``; ``None``
            for TD-MPC2.
        features: What the heads read, ``[..., feature_dim]``: concat(deter,
            stoch) for DreamerV3, ``z`` for TD-MPC2.
    """

    deterministic: jax.Array | None
    stochastic: jax.Array
    logits: jax.Array | None
    features: jax.Array

    @property
    def batch_shape(self) -> tuple:
        return self.features.shape[:-1]

    def __getitem__(self, index) -> LatentState:
        """Index the leading (batch or time) axes of every field."""
        return jax.tree_util.tree_map(lambda x: x[index], self)


@struct.dataclass
class Trajectory:
    """An imagined rollout, time first.

    Attributes:
        states: Latent states ``[H, B, ...]`` reached after each action.
        actions: The actions taken ``[H, B, action_dim]``.
        rewards: Predicted reward of each action, real units, ``[H, B]``.
        continues: Predicted probability that the episode goes on after each
            action, ``[H, B]``.
    """

    states: LatentState
    actions: jax.Array
    rewards: jax.Array
    continues: jax.Array

    @property
    def features(self) -> jax.Array:
        """Features of the imagined states, ``[H, B, feature_dim]``."""
        return self.states.features

    @property
    def horizon(self) -> int:
        return int(self.rewards.shape[0])

    def discounted_return(self, discount: float) -> jax.Array:
        """Sum of discounted predicted rewards, weighted by continues, ``[B]``."""
        alive = jnp.cumprod(
            jnp.concatenate([jnp.ones_like(self.continues[:1]), self.continues[:-1]], 0), 0
        )
        powers = discount ** jnp.arange(self.rewards.shape[0], dtype=self.rewards.dtype)
        return jnp.sum(powers[:, None] * alive * self.rewards, axis=0)
