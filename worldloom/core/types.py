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
    """A model's latent state (the original library's ``LatentState``).

    Attributes:
        deterministic: ``[..., deter]``: DreamerV3's GRU state (history and
            context); TD-MPC2's SimNorm latent ``z`` (its whole, deterministic
            representation).
        stochastic: ``[..., stoch]``: DreamerV3's flattened one-hot codes
            (32 latents x classes); ``None`` for TD-MPC2.
        posterior_logits: DreamerV3's posterior logits ``[..., latents, classes]``
            of a state that has seen its observation; ``None`` otherwise.
        prior_logits: DreamerV3's prior logits ``[..., latents, classes]`` at
            this state's deter; ``None`` where not computed (TD-MPC2, the
            initial state).
        codebook_indices: Discrete-code indices of VQ models; ``None`` for
            both families here.

    Shapes: ``[B, ...]`` for a state, ``[B, T, ...]`` for an observed sequence,
    ``[H, B, ...]`` for imagined states; indexing (``states[-1]``), ``len`` and
    iteration go along the leading axis, as over the original's list of states.
    """

    deterministic: jax.Array
    stochastic: jax.Array | None = None
    posterior_logits: jax.Array | None = None
    prior_logits: jax.Array | None = None
    codebook_indices: jax.Array | None = None

    @property
    def features(self) -> jax.Array:
        """What the heads read, ``[..., feature_dim]``: concat(deterministic, stochastic), or
        ``deterministic`` alone when there is no stochastic part."""
        if self.stochastic is None:
            return self.deterministic
        return jnp.concatenate([self.deterministic, self.stochastic.astype(self.deterministic.dtype)], -1)

    @property
    def batch_shape(self) -> tuple:
        """Leading shape (batch, or batch and time): ``deterministic.shape[:-1]``."""
        return tuple(self.deterministic.shape[:-1])

    def core(self) -> LatentState:
        """Only the recurrent parts (``deterministic``, ``stochastic``): what a step function carries."""
        return LatentState(self.deterministic, self.stochastic)

    def __getitem__(self, index) -> LatentState:
        """Index the leading (batch or time) axes of every field."""
        return jax.tree_util.tree_map(lambda x: x[index], self)

    def __len__(self) -> int:
        return int(self.deterministic.shape[0])

    def __iter__(self):
        return (self[i] for i in range(len(self)))


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
