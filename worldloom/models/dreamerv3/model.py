"""The DreamerV3 ``WorldModel`` handle."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from worldloom.core import validation
from worldloom.core.errors import ShapeError
from worldloom.core.sharing import shared
from worldloom.core.types import LatentState, Trajectory
from worldloom.models.base import (
    OptimizerSettings,
    UpdateFunctions,
    WorldModel,
    check_batch_lead,
    check_batch_mapping,
    check_batch_values,
    check_sequence_length,
    owned_state,
    positive_batch_size,
    step_from_gradients,
)
from worldloom.models.dreamerv3.config import DreamerV3Config
from worldloom.models.dreamerv3.losses import DreamerV3Functions
from worldloom.nn.layers import jit_init
from worldloom.nn.optim import global_norm, laprop_agc


class DreamerV3WorldModel(WorldModel):
    """DreamerV3's RSSM world model.

    Shapes: observations ``[B, *obs_shape]`` (sequences ``[B, T, *obs_shape]``),
    actions ``[B, A]`` one-hot or continuous (discrete models also take integer
    indices ``[B]``), imagined actions ``[H, B, A]``. Inputs follow
    :mod:`worldloom.core.validation`: indices outside ``[0, A)``, rows that are
    not one-hot (discrete), NaN/inf, float images in 0..255 and continues
    outside [0, 1] are refused with a DataError; integer images are read as uint8.

    Example:
        >>> from worldloom import create_world_model
        >>> model = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2)
        >>> state = model.encode(jnp.zeros((3, 4)))
        >>> traj = model.imagine(state, jnp.zeros((15, 3, 2)))
        >>> traj.rewards.shape
        (15, 3)
    """

    family = "dreamerv3"
    config_cls = DreamerV3Config
    config: DreamerV3Config

    def __init__(self, config: DreamerV3Config, params=None, **kwargs):
        super().__init__(config, params, **kwargs)
        self.programs = _programs(config)
        self.functions = self.programs.functions

    @staticmethod
    def init_params(config: DreamerV3Config, key):
        """Fresh params for ``config`` (one jitted program per config)."""
        return _programs(config).init(key)

    # ------------------------------------------------------------ inputs

    def _actions(self, actions, lead: int, name: str = "actions", dims: str | None = None):
        """Actions ``[*lead, A]`` as f32; discrete indices ``[*lead]`` become one-hot.

        Discrete models take indices in ``[0, A)`` or one-hot rows; every action is finite.
        """
        actions, converted = self._indices_or_vectors(self._array(actions, name=name), lead, name)
        if converted:
            return actions
        cfg = self.config
        if actions.ndim != lead + 1 or actions.shape[-1] != cfg.action_dim:
            dims = dims or {1: "B", 2: "B, T"}[lead]
            raise ShapeError(f"{name}: expected shape [{dims}, {cfg.action_dim}], got {list(actions.shape)}.")
        return self._put(actions, jnp.float32, name)

    def _core_state(self, state, name: str = "state") -> LatentState:
        """``state`` checked and reduced to what a step carries: ``deterministic [B, deter]``, ``stochastic``."""
        state = self._state(state, name)
        cfg = self.config
        deter, stoch = state.deterministic, state.stochastic
        if stoch is None or np.shape(deter)[-1] != cfg.deter or np.shape(stoch)[-1] != cfg.stoch_size \
                or np.shape(deter)[:-1] != np.shape(stoch)[:-1] or np.ndim(deter) != 2:
            raise ShapeError(f"{name}: expected a DreamerV3 state with deterministic [B, {cfg.deter}] and "
                             f"stochastic [B, {cfg.stoch_size}], got {list(np.shape(deter))} and "
                             f"{None if stoch is None else list(np.shape(stoch))}.")
        return LatentState(self._put(deter, jnp.float32, name), self._put(stoch, jnp.float32, name))

    @property
    def _stochastic(self) -> bool:
        return self.training

    # ------------------------------------------------------------ protocol

    def initial_state(self, batch_size: int) -> LatentState:
        """The zero state ``[batch_size, ...]`` (the reference's ``initial``), before any observation."""
        return self.functions.initial(self.params, positive_batch_size(batch_size))

    def encode(self, obs) -> LatentState:
        """Posterior state of a first observation ``[B, *obs_shape]`` -> ``[B, ...]``.

        The same as ``observe(initial_state(B), zero action, obs)``.
        """
        obs = self._obs(obs, 1)
        batch = obs.shape[0]
        start, action = self.initial_state(batch), jnp.zeros((batch, self.config.action_dim))
        return self.programs.observe_step(self.params, start, action, obs, self.next_key(),
                                          stochastic=self._stochastic)

    def observe(self, state: LatentState, action, obs) -> LatentState:
        """One posterior step: the state after ``action`` and observing ``obs``.

        Args:
            state: ``s_{t-1}`` ``[B, ...]``.
            action: ``a_{t-1}`` ``[B, A]`` taken in it (discrete: one-hot or indices ``[B]``).
            obs: The next observation ``o_t`` ``[B, *obs_shape]``.

        Returns:
            ``s_t`` ``[B, ...]`` with ``posterior_logits`` and ``prior_logits``.
        """
        state = self._core_state(state)
        action = self._actions(action, 1, "action")
        obs = self._obs(obs, 1)
        batch = state.deterministic.shape[0]
        self._same_batch("action", action.shape[0], batch)
        self._same_batch("obs", obs.shape[0], batch)
        return self.programs.observe_step(self.params, state, action, obs, self.next_key(),
                                          stochastic=self._stochastic)

    def observe_sequence(self, obs, actions, is_first=None, state=None, prev_action=None) -> LatentState:
        """Posterior states of a sequence, one ``lax.scan`` over time.

        Args:
            obs: ``[B, T, *obs_shape]``.
            actions: ``[B, T, A]``; ``actions[:, t]`` is taken after ``obs[:, t]``.
            is_first: Optional ``[B, T]`` bool; the state resets there.
            state: Optional state ``[B, ...]`` before ``obs[:, 0]``; zero state if None.
            prev_action: Action ``[B, A]`` taken from ``state`` into ``obs[:, 0]``.

        Returns:
            ``LatentState`` ``[B, T, ...]`` with both logits: state ``t`` has seen
            ``obs[:, :t+1]``; equal to :meth:`encode` then one :meth:`observe` per step.
        """
        obs = self._obs(obs, 2)
        batch, length = obs.shape[:2]
        check_sequence_length(obs.shape)
        actions = self._actions(actions, 2)
        if actions.shape[:2] != (batch, length):
            raise ShapeError(f"actions: expected shape [{batch}, {length}, {self.config.action_dim}], "
                             f"got {list(actions.shape)}.")
        if is_first is None:
            first = jnp.zeros((batch, length), bool)
        else:
            first = self._array(is_first, name="is_first")
            if first.shape != (batch, length):
                raise ShapeError(f"is_first: expected shape [{batch}, {length}], got {list(first.shape)}.")
            validation.check_flags("is_first", first, device_checks=self.check_device_inputs)
            first = self._put(first, bool, "is_first")
        if state is None:
            state = self.initial_state(batch)
        else:
            state = self._core_state(state)
            self._same_batch("state", state.deterministic.shape[0], batch, "obs")
        prev = jnp.zeros((batch, self.config.action_dim)) if prev_action is None \
            else self._actions(prev_action, 1, "prev_action")
        self._same_batch("prev_action", prev.shape[0], batch, "obs")
        return self.programs.observe_sequence(self.params, obs, actions, first, state, prev, self.next_key(),
                                              stochastic=self._stochastic)

    def predict(self, state: LatentState, action) -> LatentState:
        """One prior step: ``state [B, ...]``, ``action [B, A]`` -> next state (``prior_logits`` set)."""
        state = self._core_state(state)
        action = self._actions(action, 1, "action")
        self._same_batch("action", action.shape[0], state.deterministic.shape[0])
        return self.programs.img_step(self.params, state, action, self.next_key(), stochastic=self._stochastic)

    def imagine(self, initial_state: LatentState, actions) -> Trajectory:
        """Roll the prior forward under ``actions`` ``[H, B, A]``.

        Returns:
            :class:`Trajectory` with states ``[H, B, ...]``, rewards ``[H, B]`` in
            real units and continue probabilities ``[H, B]``; entry ``h`` is the
            outcome of ``actions[h]``.
        """
        state = self._core_state(initial_state, "initial_state")
        actions = self._actions(actions, 2, dims="H, B")
        self._same_batch("actions", actions.shape[1], state.deterministic.shape[0], "initial_state")
        return self.programs.imagine(self.params, state, actions, self.next_key(), stochastic=self._stochastic)

    def decode(self, state: LatentState) -> dict:
        """Heads of a state ``[*lead, ...]`` (any leading axes): ``obs`` ``[*lead, *obs_shape]``
        (real units; images in [0, 1]), ``reward`` ``[*lead, 1]`` (real units) and
        ``continue`` ``[*lead, 1]`` (probability)."""
        state = self._state(state)
        cfg = self.config
        if state.stochastic is None or np.shape(state.deterministic)[-1] != cfg.deter \
                or np.shape(state.stochastic)[-1] != cfg.stoch_size:
            raise ShapeError(f"state: expected a DreamerV3 state with deterministic [..., {cfg.deter}] and "
                             f"stochastic [..., {cfg.stoch_size}], got {list(np.shape(state.deterministic))} and "
                             f"{None if state.stochastic is None else list(np.shape(state.stochastic))}.")
        return self.programs.decode(self.params, state.core())

    def compute_loss(self, batch, key=None) -> dict:
        """Loss terms on a ``[B, T, ...]`` batch (``obs, actions, rewards, continues``
        and optionally ``is_first``), as f32 scalars.

        Keys: ``"loss"`` (the total), ``"loss/rec"``, ``"loss/rew"``, ``"loss/con"``,
        ``"loss/dyn"``, ``"loss/rep"`` (unscaled terms), the entropies, and the
        original library's names: ``"reconstruction_loss"``, ``"reward_loss"``,
        ``"continue_loss"`` and ``"kl_loss"`` (``dyn`` and ``rep`` with their
        scales), each as it enters ``"loss"``, so they sum to it.
        """
        prepared = self.prepare_batch(batch)
        key = self._given_key(key)
        _, metrics = self.programs.loss(self.params, prepared, key, stochastic=self._stochastic)
        return self.with_original_names(metrics)

    def with_original_names(self, losses: dict) -> dict:
        """``losses`` with ``"kl_loss"``, ``"reconstruction_loss"``, ``"reward_loss"`` and ``"continue_loss"``
        added, each as it enters ``"loss"``."""
        cfg = self.config
        return {**losses,
                "kl_loss": cfg.loss_scale_dyn * losses["loss/dyn"] + cfg.loss_scale_rep * losses["loss/rep"],
                "reconstruction_loss": cfg.loss_scale_rec * losses["loss/rec"],
                "reward_loss": cfg.loss_scale_rew * losses["loss/rew"],
                "continue_loss": cfg.loss_scale_con * losses["loss/con"]}

    def prepare_batch(self, batch) -> dict:
        """Check and move a batch to the device; integer discrete actions become one-hot."""
        check_batch_mapping(batch)
        for name in ("obs", "actions", "rewards", "continues"):
            if name not in batch:
                raise ShapeError(f"batch lacks {name!r}; expected keys obs, actions, rewards, continues[, is_first].")
        obs = self._obs(batch["obs"], 2)
        lead = obs.shape[:2]
        check_batch_lead(obs.shape)
        out = {"obs": obs, "actions": self._actions(batch["actions"], 2)}
        for name in ("rewards", "continues", "is_first"):
            if name in batch and batch[name] is not None:
                value = self._array(batch[name], name=name)
                if value.shape != lead:
                    raise ShapeError(f"{name}: expected shape {list(lead)}, got {list(value.shape)}.")
                check_batch_values(name, value, self.check_device_inputs)
                out[name] = self._put(value, bool if name == "is_first" else jnp.float32, name)
        if out["actions"].shape[:2] != lead:
            raise ShapeError(f"actions: expected shape [{lead[0]}, {lead[1]}, {self.config.action_dim}], "
                             f"got {list(out['actions'].shape)}.")
        return out

    # ------------------------------------------------------------ training

    def make_update(self, settings: OptimizerSettings) -> UpdateFunctions:
        """LaProp + AGC(0.3) updates of the whole world model.

        Models of equal configs get the same functions for equal settings, and
        with them ``jax.jit``'s traced and compiled programs.
        """
        return _update(self.config, settings)


class _Programs:
    """The jitted programs of one config, shared by every handle with that config."""

    def __init__(self, config: DreamerV3Config):
        fns = self.functions = DreamerV3Functions(config)
        self.observe_step = jax.jit(self._observe_step, static_argnames="stochastic")
        self.observe_sequence = jax.jit(self._observe_sequence, static_argnames="stochastic")
        self.img_step = jax.jit(fns.img_step, static_argnames="stochastic")
        self.imagine = jax.jit(self._imagine, static_argnames="stochastic")
        self.decode = jax.jit(self._decode)
        self.loss = jax.jit(fns.loss, static_argnames="stochastic")
        self.init = jit_init(fns.init)

    def _observe_step(self, params, state, action, obs, key, stochastic=True):
        tokens = self.functions.encode(params, obs)
        return self.functions.observe_step(params, state, action, tokens, key, stochastic)

    def _observe_sequence(self, params, obs, actions, first, state, prev, key, stochastic=True):
        fns = self.functions
        prev_actions = jnp.concatenate([prev[:, None], actions[:, :-1]], 1)
        post, _ = fns.observe_scan(params, fns.encode(params, obs), prev_actions, first, state, key, stochastic)
        return post.replace(prior_logits=fns.prior(params, post.deterministic))

    def _imagine(self, params, state, actions, key, stochastic=True):
        fns = self.functions
        states = fns.imagine(params, state, actions, key, stochastic)
        features = states.features
        return Trajectory(states, actions, fns.reward(params, features), fns.continue_prob(params, features))

    def _decode(self, params, state):
        fns = self.functions
        features = state.features
        return {
            "obs": fns.decode_obs(params, state.deterministic, state.stochastic),
            "reward": fns.reward(params, features)[..., None],
            "continue": fns.continue_prob(params, features)[..., None],
        }


@shared()
def _programs(config: DreamerV3Config) -> _Programs:
    return _Programs(config)


@shared()
def _update(config: DreamerV3Config, settings: OptimizerSettings) -> UpdateFunctions:
    tx = laprop_agc(settings.schedule(), weight_decay=settings.weight_decay, grad_clip=settings.grad_clip)
    return make_simple_update(_programs(config).functions.loss, tx)


def make_simple_update(loss_fn, tx: optax.GradientTransformation) -> UpdateFunctions:
    """Update functions for a model trained by one loss and one optimiser."""

    def init(params):
        return owned_state({"params": params, "opt_state": tx.init(params)}, params)

    def gradients(state, batch, keys):
        grad_fn = jax.value_and_grad(functools.partial(loss_fn, stochastic=True), has_aux=True)
        (_, metrics), grads = grad_fn(state["params"], batch, keys)
        return grads, metrics

    def apply_gradients(state, grads, metrics):
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = dict(metrics, grad_norm=global_norm(grads))
        return {"params": params, "opt_state": opt_state}, metrics

    return UpdateFunctions(init=init, step=step_from_gradients(gradients, apply_gradients),
                           params=lambda state: state["params"], gradients=gradients, apply_gradients=apply_gradients)

