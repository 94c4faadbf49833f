"""``TDMPC2WorldModel`` at the original library's path ``worldloom.models.tdmpc2.world_model``."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import torch

from worldloom.core.errors import ConfigError
from worldloom_torch_compat.core.config import TDMPC2Config
from worldloom_torch_compat.model import WorldModel
from worldloom_torch_compat.types import LatentState


class TDMPC2WorldModel(WorldModel, family="tdmpc2"):
    """TD-MPC2 as a ``torch.nn.Module``: ``TDMPC2WorldModel(config, device=, seed=)``.

    Beyond the protocol, as the original: :meth:`predict_q` gives the whole Q
    ensemble, :meth:`decode` adds ``"q_values"`` and ``"action"``, and
    ``predict_reward(state, action)`` gives ``[B]``.
    """

    config_class = TDMPC2Config
    latent_type = "simnorm"
    source_losses = {"consistency": "loss/consistency", "reward": "reward_loss", "td": "loss/value",
                     "continue": "continue_loss"}

    def predict(self, state: LatentState, action, deterministic: bool = False, task=None,
                task_id=None) -> LatentState:
        """One latent step ``[B, latent_dim]`` -> ``[B, latent_dim]``; ``task_id`` is the source's name of
        ``task`` (ids ``[B]`` of a multitask model)."""
        if task is not None and task_id is not None:
            raise ConfigError("predict: task= and task_id= are the same argument; pass one.")
        return super().predict(state, action, deterministic, task=task if task_id is None else task_id)

    def predict_q(self, state: LatentState, action, task=None, reduce: str = "all") -> torch.Tensor:
        """Q of ``action`` ``[B, A]`` in ``state`` ``[B, latent_dim]``, real units.

        Args:
            state: The state ``[B, latent_dim]``.
            action: ``[B, A]`` (discrete models also take indices ``[B]``).
            task: Task ids ``[B]`` of a multitask model.
            reduce: ``"all"`` (the original's): every ensemble member's Q,
                ``[num_q, B]``; ``"mean"`` or ``"min"`` over the ensemble: ``[B]``.
        """
        q = self._call("predict_q", state, action, task=task, reduce=reduce)
        return q.movedim(-1, 0) if reduce == "all" else q

    def decode(self, state: LatentState, action=None, task=None) -> dict:
        """Heads of a state ``[..., latent_dim]``; TD-MPC2 reconstructs nothing, so there is no ``"obs"``.

        Returns:
            ``"reward"``, ``"q"`` (the ensemble mean) and ``"continue"``, each
            ``[..., 1]``, and the original's ``"q_values"``, each member's Q
            ``[num_q, ..., 1]``, and ``"action"`` ``[..., A]``, the action the heads
            score: ``action``, by default the policy prior's mean action.
        """
        return self._call(_decode_with_ensemble, state, action, task=task)


def _decode_with_ensemble(handle, state, action=None, task=None) -> dict:
    """``handle.decode`` plus each member's Q and the action scored (run on JAX inputs)."""
    heads = handle.decode(state, action, task=task)  # checks state, action and task
    if action is None:
        ids = jnp.asarray(task, jnp.int32) if handle.config.multitask else None
        action = _policy_mean(handle.functions)(handle.params, jnp.asarray(state.deterministic, jnp.float32), ids)
    q = handle.predict_q(state, action, task=task, reduce="all")  # [..., num_q]
    return {**heads, "q_values": jnp.moveaxis(q, -1, 0)[..., None], "action": action}


@functools.lru_cache(maxsize=16)
def _policy_mean(functions) -> Callable:
    """The policy prior's mean action ``pi_mean(params, z, task)`` of a model's functions, jitted once."""
    return jax.jit(functions.pi_mean)


__all__ = ["TDMPC2Config", "TDMPC2WorldModel"]
