"""Torch-side ``LatentState`` and ``Trajectory``.

Same field names and shape conventions as :mod:`worldloom.core.types`, with
torch tensors as fields: a single state is ``[B, ...]``, an observed sequence
``[B, T, ...]`` and an imagined trajectory ``[H, B, ...]`` (time first).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from worldloom.core import types as jax_types


def _map(fn, value):
    return None if value is None else fn(value)


@dataclasses.dataclass
class LatentState:
    """A model's latent state, as torch tensors (the original library's ``LatentState``).

    Attributes:
        deterministic: ``[..., deter]``: DreamerV3's GRU state; TD-MPC2's
            SimNorm latent ``z`` (its whole, deterministic representation).
        stochastic: ``[..., stoch]``: DreamerV3's flattened one-hot codes;
            ``None`` for TD-MPC2.
        posterior_logits: DreamerV3's posterior logits ``[..., latents, classes]``, or ``None``.
        prior_logits: DreamerV3's prior logits ``[..., latents, classes]``, or ``None``.
        codebook_indices: Discrete-code indices of VQ models; ``None`` here.

    Indexing (``states[-1]``), ``len`` and iteration go along the leading axis.
    """

    deterministic: torch.Tensor
    stochastic: torch.Tensor | None = None
    posterior_logits: torch.Tensor | None = None
    prior_logits: torch.Tensor | None = None
    codebook_indices: torch.Tensor | None = None

    @property
    def features(self) -> torch.Tensor:
        """Combined features for downstream heads: ``cat([deterministic, stochastic], -1)``."""
        if self.stochastic is not None:
            return torch.cat([self.deterministic, self.stochastic.to(self.deterministic.dtype)], dim=-1)
        return self.deterministic

    @property
    def batch_shape(self) -> torch.Size:
        """Leading (batch, or batch and time) shape: ``deterministic.shape[:-1]``."""
        return self.deterministic.shape[:-1]

    def map(self, fn) -> LatentState:
        """Apply ``fn`` to every tensor field (``None`` fields stay ``None``)."""
        return LatentState(*(_map(fn, getattr(self, f.name)) for f in dataclasses.fields(self)))

    def __getitem__(self, index) -> LatentState:
        """Index the leading (batch or time) axes of every field, e.g. ``states[:, -1]``."""
        return self.map(lambda x: x[index])

    def __len__(self) -> int:
        return int(self.deterministic.shape[0])

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def to(self, *args, **kwargs) -> LatentState:
        """``Tensor.to`` on every field."""
        return self.map(lambda x: x.to(*args, **kwargs))

    def detach(self) -> LatentState:
        """A copy cut from the autograd graph."""
        return self.map(torch.Tensor.detach)


@dataclasses.dataclass
class Trajectory:
    """An imagined rollout, time first, as torch tensors.

    Attributes:
        states: Latent states ``[H, B, ...]`` reached after each action.
        actions: The actions taken ``[H, B, action_dim]``.
        rewards: Predicted reward of each action, real units, ``[H, B]``.
        continues: Predicted probability that the episode goes on after each
            action, ``[H, B]``.
    """

    states: LatentState
    actions: torch.Tensor
    rewards: torch.Tensor
    continues: torch.Tensor

    @property
    def features(self) -> torch.Tensor:
        """Features of the imagined states, ``[H, B, feature_dim]``."""
        return self.states.features

    @property
    def horizon(self) -> int:
        return int(self.rewards.shape[0])

    def discounted_return(self, discount: float) -> torch.Tensor:
        """Sum of discounted predicted rewards, weighted by continues, ``[B]``.

        Computed by :meth:`worldloom.Trajectory.discounted_return`; gradients
        flow back to ``rewards`` and ``continues``.
        """
        from worldloom_torch_compat._autograd import call_jax

        return call_jax(lambda traj: traj.discounted_return(discount), to_jax_types(self),
                        device=self.rewards.device)

    def to(self, *args, **kwargs) -> Trajectory:
        """``Tensor.to`` on every field."""
        return Trajectory(self.states.to(*args, **kwargs), *(getattr(self, n).to(*args, **kwargs)
                                                             for n in ("actions", "rewards", "continues")))

    def detach(self) -> Trajectory:
        """A copy cut from the autograd graph."""
        return Trajectory(self.states.detach(), self.actions.detach(), self.rewards.detach(),
                          self.continues.detach())


def to_jax_types(value: Any) -> Any:
    """Swap torch-side containers for worldloom's, recursively; leaves stay as they are."""
    if isinstance(value, LatentState):
        return jax_types.LatentState(*(getattr(value, f.name) for f in dataclasses.fields(value)))
    if isinstance(value, Trajectory):
        return jax_types.Trajectory(to_jax_types(value.states), value.actions, value.rewards, value.continues)
    if isinstance(value, dict):
        return {k: to_jax_types(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(to_jax_types(v) for v in value)
    return value


def from_jax_types(value: Any) -> Any:
    """Swap worldloom's containers for the torch-side ones, recursively; leaves stay as they are."""
    if isinstance(value, jax_types.LatentState):
        return LatentState(*(getattr(value, f.name) for f in dataclasses.fields(LatentState)))
    if isinstance(value, jax_types.Trajectory):
        return Trajectory(from_jax_types(value.states), value.actions, value.rewards, value.continues)
    if isinstance(value, dict):
        return {k: from_jax_types(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(from_jax_types(v) for v in value)
    return value
