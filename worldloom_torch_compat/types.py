"""Torch-side ``LatentState`` and ``Trajectory``.

Same field names and shape conventions as :mod:`worldloom.core.types`, with
torch tensors as fields: a single state is ``[B, ...]``, an observed sequence
``[B, T, ...]``. An imagined trajectory is time first and, as the original
library's, holds the start state too: states ``[H + 1, B, ...]``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import torch

from worldloom.core import types as jax_types
from worldloom.core.errors import ShapeError
from worldloom.core.exceptions import StateError


def _map(fn, value):
    return None if value is None else fn(value)


_TENSOR_FIELDS = ("deterministic", "stochastic", "posterior_logits", "prior_logits", "codebook_indices")
# Each field's name in a repr (the source's ``deter``, ``stoch`` and ``codebook``).
_REPR_NAMES = dict(zip(_TENSOR_FIELDS, ("deter", "stoch", "posterior_logits", "prior_logits", "codebook")))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _shape_text(tensor: torch.Tensor, dtype: torch.dtype) -> str:
    """``[32, 512]``, with the tensor's dtype after it when it is not ``dtype``."""
    shape = str(list(tensor.shape))
    return shape if tensor.dtype == dtype else f"{shape} {_dtype_name(tensor.dtype)}"


@dataclasses.dataclass
class LatentState:
    """A model's latent state, as torch tensors (the original library's ``LatentState``).

    Attributes:
        deterministic: ``[..., deter]``: DreamerV3's GRU state; TD-MPC2's
            SimNorm latent ``z`` (its whole, deterministic representation).
        stochastic: ``[..., stoch]``: DreamerV3's flattened one-hot codes;
            ``None`` for TD-MPC2. A state built by hand may also hold codes
            ``[B, latents, classes]``; :attr:`features` flattens them.
        posterior_logits: DreamerV3's posterior logits ``[..., latents, classes]``, or ``None``.
        prior_logits: DreamerV3's prior logits ``[..., latents, classes]``, or ``None``.
        codebook_indices: Discrete-code indices of VQ models; ``None`` here.
        latent_type: The original's tag of the latent kind: ``"categorical"``
            (DreamerV3), ``"simnorm"`` (TD-MPC2), ``"deterministic"`` by default.

    Indexing (``states[-1]``), ``len`` and iteration go along the leading axis.

    Raises:
        StateError: none of ``deterministic``, ``stochastic`` and
            ``codebook_indices`` is given.
    """

    deterministic: torch.Tensor | None = None
    stochastic: torch.Tensor | None = None
    posterior_logits: torch.Tensor | None = None
    prior_logits: torch.Tensor | None = None
    codebook_indices: torch.Tensor | None = None
    latent_type: str = "deterministic"

    def __post_init__(self) -> None:
        if self.deterministic is None and self.stochastic is None and self.codebook_indices is None:
            raise StateError("LatentState: expected at least one of deterministic, stochastic or "
                             "codebook_indices, got none.")

    def _tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.deterministic, self.stochastic, self.codebook_indices) if t is not None]

    @property
    def _stochastic_flat(self) -> torch.Tensor | None:
        """``stochastic`` with codes ``[..., latents, classes]`` flattened to ``[..., latents * classes]``."""
        stoch = self.stochastic
        if stoch is None:
            return None
        lead = self.deterministic.ndim - 1 if self.deterministic is not None else 1
        if stoch.ndim == lead + 2:
            return stoch.flatten(-2)
        if stoch.ndim != lead + 1:
            raise StateError(f"LatentState.stochastic: expected [B, stoch] or [B, latents, classes] codes, "
                             f"got shape {list(stoch.shape)}.")
        return stoch

    @property
    def features(self) -> torch.Tensor:
        """Combined features for downstream heads: ``cat([deterministic, stochastic], -1)``
        (codes ``[B, latents, classes]`` flattened)."""
        stoch = self._stochastic_flat
        if self.deterministic is None:
            if stoch is None:
                raise StateError("LatentState.features: expected a deterministic or stochastic part, got only "
                                 "codebook_indices.")
            return stoch
        if stoch is not None:
            return torch.cat([self.deterministic, stoch.to(self.deterministic.dtype)], dim=-1)
        return self.deterministic

    @property
    def batch_shape(self) -> torch.Size:
        """Leading (batch, or batch and time) shape: ``deterministic.shape[:-1]``."""
        if self.deterministic is not None:
            return self.deterministic.shape[:-1]
        return self._tensors()[0].shape[:1]

    @property
    def batch_size(self) -> int:
        """Size of the leading axis (the original's name)."""
        return int(self._tensors()[0].shape[0])

    @property
    def device(self) -> torch.device:
        """torch device of the state's tensors."""
        return self._tensors()[0].device

    @property
    def feature_dim(self) -> int:
        """Size of :attr:`features`' last axis."""
        return int(self.features.shape[-1])

    def __repr__(self) -> str:
        """Shapes, dtype and device, not values (as the source's):
        ``LatentState(type='categorical', deter=[32, 512], stoch=[32, 1024], dtype=float32, device=cpu)``
        (a field's dtype after its shape when it is not the first field's)."""
        fields = {name: getattr(self, name) for name in _TENSOR_FIELDS if getattr(self, name) is not None}
        parts = [f"type={self.latent_type!r}"]
        if fields:
            first = next(iter(fields.values()))
            parts += [f"{_REPR_NAMES[name]}={_shape_text(value, first.dtype)}" for name, value in fields.items()]
            parts += [f"dtype={_dtype_name(first.dtype)}", f"device={first.device}"]
        return f"LatentState({', '.join(parts)})"

    def map(self, fn) -> LatentState:
        """Apply ``fn`` to every tensor field (``None`` fields stay ``None``)."""
        return LatentState(*(_map(fn, getattr(self, name)) for name in _TENSOR_FIELDS),
                           latent_type=self.latent_type)

    def __getitem__(self, index) -> LatentState:
        """Index the leading (batch or time) axes of every field, e.g. ``states[:, -1]``."""
        return self.map(lambda x: x[index])

    def __len__(self) -> int:
        return int(self._tensors()[0].shape[0])

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def to(self, *args, **kwargs) -> LatentState:
        """``Tensor.to`` on every field."""
        return self.map(lambda x: x.to(*args, **kwargs))

    def detach(self) -> LatentState:
        """A copy cut from the autograd graph."""
        return self.map(torch.Tensor.detach)

    def clone(self) -> LatentState:
        """A copy with its own memory (``Tensor.clone`` on every field)."""
        return self.map(torch.Tensor.clone)


@dataclasses.dataclass
class Trajectory:
    """An imagined rollout, time first, as torch tensors (the original library's ``Trajectory``).

    As in the original, ``states`` holds the start state and then the state
    reached after each action: ``H + 1`` states for ``H`` actions, so
    ``states[h + 1]`` is the outcome of ``actions[h]`` and ``states[1:]`` are the
    imagined ones. (worldloom's JAX :class:`worldloom.Trajectory` keeps the ``H``
    imagined states only.)

    Attributes:
        states: Latent states ``[H + 1, B, ...]``, the start state first. A
            field the start state lacks (the prior logits of
            ``initial_state()``) is ``None`` for the whole trajectory.
        actions: The actions taken ``[H, B, action_dim]``.
        rewards: Predicted reward of each action, real units, ``[H, B]``
            (``imagine`` fills it; optional, as in the original).
        values: Optional values of the states ``[H + 1, B]`` (the original's
            field; ``imagine`` leaves it ``None``).
        continues: Predicted probability that the episode goes on after each
            action, ``[H, B]`` (``imagine`` fills it; optional).

    The fields are in the original's order, so ``Trajectory(states, actions,
    rewards, values, continues)`` means what it meant there.
    """

    states: LatentState
    actions: torch.Tensor
    rewards: torch.Tensor | None = None
    values: torch.Tensor | None = None
    continues: torch.Tensor | None = None

    def __repr__(self) -> str:
        """Shapes, not values: ``Trajectory(states=LatentState(...), actions=[15, 8, 2], rewards=[15, 8], ...)``
        (a dtype after a shape when it is not the states')."""
        dtype = next((t.dtype for t in (getattr(self.states, n) for n in _TENSOR_FIELDS) if t is not None),
                     self.actions.dtype)  # the state's first field's, as its own repr shows
        parts = [f"states={self.states!r}"] + [
            f"{name}={_shape_text(getattr(self, name), dtype)}"
            for name in ("actions", "rewards", "values", "continues") if getattr(self, name) is not None]
        return f"Trajectory({', '.join(parts)})"

    def __len__(self) -> int:
        """Number of states, ``H + 1`` (the original's ``len(trajectory)``)."""
        return len(self.states)

    @property
    def features(self) -> torch.Tensor:
        """Features of all states, the start state first, ``[H + 1, B, feature_dim]``."""
        return self.states.features

    def to_features_tensor(self) -> torch.Tensor:
        """The original's name of :attr:`features`: ``[H + 1, B, feature_dim]``."""
        return self.features

    @property
    def horizon(self) -> int:
        """Number of actions ``H``."""
        return int(self.actions.shape[0])

    @property
    def batch_size(self) -> int:
        return int(self.actions.shape[1])

    def discounted_return(self, discount: float) -> torch.Tensor:
        """Sum of discounted predicted rewards, weighted by continues, ``[B]``.

        Computed by :meth:`worldloom.Trajectory.discounted_return`; gradients
        flow back to ``rewards`` and ``continues``.
        """
        from worldloom_torch_compat._autograd import call_jax

        missing = [name for name in ("rewards", "continues") if getattr(self, name) is None]
        if missing:
            raise StateError(f"Trajectory.discounted_return: needs rewards and continues [H, B]; this trajectory "
                             f"has no {' or '.join(missing)} (imagine() fills both).")
        return call_jax(lambda traj: traj.discounted_return(discount), to_jax_types(self),
                        device=self.rewards.device)

    def _map(self, fn) -> Trajectory:
        return Trajectory(self.states.map(fn), **{n: _map(fn, getattr(self, n))
                                                  for n in ("actions", "rewards", "values", "continues")})

    def to(self, *args, **kwargs) -> Trajectory:
        """``Tensor.to`` on every field."""
        return self._map(lambda x: x.to(*args, **kwargs))

    def detach(self) -> Trajectory:
        """A copy cut from the autograd graph."""
        return self._map(torch.Tensor.detach)


def with_start_state(start: jax_types.LatentState, trajectory: jax_types.Trajectory) -> jax_types.Trajectory:
    """``trajectory`` (JAX, ``H`` imagined states) with ``start`` put before its states: ``H + 1`` states.

    Fields that both hold are concatenated along time (the start state's
    reshaped to the imagined states' layout); a field either lacks is ``None``.

    Raises:
        ShapeError: a field of ``start`` whose size differs from an imagined state's.
    """

    def stacked(name: str):
        first, rest = getattr(start, name), getattr(trajectory.states, name)
        if first is None or rest is None:
            return None
        if math.prod(jnp.shape(first)) != math.prod(rest.shape[1:]):
            raise ShapeError(f"initial_state.{name}: expected shape {list(rest.shape[1:])} (that of the imagined "
                             f"states), got {list(jnp.shape(first))}.")
        first = jnp.reshape(jnp.asarray(first, rest.dtype), (1, *rest.shape[1:]))
        return jnp.concatenate([first, rest], axis=0)

    states = jax_types.LatentState(*(stacked(name) for name in _TENSOR_FIELDS))
    return jax_types.Trajectory(states, trajectory.actions, trajectory.rewards, trajectory.continues)


def to_jax_types(value: Any) -> Any:
    """Swap torch-side containers for worldloom's, recursively; leaves stay as they are."""
    if isinstance(value, LatentState):
        return jax_types.LatentState(*(getattr(value, name) for name in _TENSOR_FIELDS))
    if isinstance(value, Trajectory):  # worldloom's trajectories hold the imagined states only
        return jax_types.Trajectory(to_jax_types(value.states[1:]), value.actions, value.rewards, value.continues)
    if isinstance(value, dict):
        return {k: to_jax_types(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(to_jax_types(v) for v in value)
    return value


def from_jax_types(value: Any) -> Any:
    """Swap worldloom's containers for the torch-side ones, recursively; leaves stay as they are."""
    if isinstance(value, jax_types.LatentState):
        return LatentState(*(getattr(value, name) for name in _TENSOR_FIELDS))
    if isinstance(value, jax_types.Trajectory):
        return Trajectory(from_jax_types(value.states), value.actions, rewards=value.rewards,
                          continues=value.continues)
    if isinstance(value, dict):
        return {k: from_jax_types(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(from_jax_types(v) for v in value)
    return value
