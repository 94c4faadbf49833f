"""The DreamerV3 ``WorldModel`` handle."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from worldloom.core.arrays import check_trailing_shape
from worldloom.core.errors import ShapeError
from worldloom.core.types import LatentState, Trajectory
from worldloom.models.base import OptimizerSettings, UpdateFunctions, WorldModel, owned_state
from worldloom.models.dreamerv3.config import DreamerV3Config
from worldloom.models.dreamerv3.losses import DreamerV3Functions
from worldloom.nn.optim import laprop_agc


class DreamerV3WorldModel(WorldModel):
    """DreamerV3's RSSM world model.

    Shapes: observations ``[B, *obs_shape]`` (sequences ``[B, T, *obs_shape]``),
    actions ``[B, A]`` one-hot or continuous (discrete models also take integer
    indices ``[B]``), imagined actions ``[H, B, A]``.

    Example:
        >>> from worldloom import create_world_model
        >>> model = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2)
        >>> state = model.encode(jnp.zeros((3, 4)))
        >>> traj = model.imagine(state, jnp.zeros((15, 3, 2)))
        >>> traj.rewards.shape
        (15, 3)
    """

    family = "dreamerv3"
    config: DreamerV3Config

    def __init__(self, config: DreamerV3Config, params, **kwargs):
        super().__init__(config, params, **kwargs)
        self.functions = DreamerV3Functions(config)
        fns = self.functions
        self._observe = jax.jit(fns.observe_scan, static_argnames="stochastic")
        self._encode = jax.jit(fns.encode)
        self._img_step = jax.jit(fns.img_step, static_argnames="stochastic")
        self._imagine = jax.jit(self._imagine_fn, static_argnames="stochastic")
        self._decode = jax.jit(self._decode_fn)
        self._loss = jax.jit(fns.loss, static_argnames="stochastic")

    @staticmethod
    def init_params(config: DreamerV3Config, key):
        return DreamerV3Functions(config).init(key)

    # ------------------------------------------------------------ inputs

    def _obs(self, obs, lead: int):
        obs = self._put(obs)
        check_trailing_shape("obs", obs, self.config.obs_shape, min_lead=lead)
        return obs

    def _actions(self, actions, lead: int):
        """Actions ``[*lead, A]`` as f32; discrete indices ``[*lead]`` become one-hot."""
        actions = self._put(actions)
        cfg = self.config
        if cfg.action_type == "discrete" and jnp.issubdtype(actions.dtype, jnp.integer):
            if actions.ndim == lead + 1 and actions.shape[-1] == 1:
                actions = actions[..., 0]
            if actions.ndim == lead:
                return jax.nn.one_hot(actions, cfg.action_dim, dtype=jnp.float32)
        if actions.ndim != lead + 1 or actions.shape[-1] != cfg.action_dim:
            dims = ", ".join(["B", "T"][:lead]) if lead <= 2 else "H, B"
            raise ShapeError(f"actions: expected shape [{dims}, {cfg.action_dim}], got {list(actions.shape)}.")
        return actions.astype(jnp.float32)

    @property
    def _stochastic(self) -> bool:
        return self.training

    # ------------------------------------------------------------ protocol

    def initial_state(self, batch_size: int) -> LatentState:
        """The zero state ``[batch_size, ...]``."""
        return self.functions.initial(self.params, int(batch_size))

    def encode(self, obs) -> LatentState:
        """Posterior state of a first observation ``[B, *obs_shape]`` -> ``[B, ...]``."""
        obs = self._obs(obs, 1)
        if obs.ndim != len(self.config.obs_shape) + 1:
            raise ShapeError(f"obs: expected shape [B, {', '.join(map(str, self.config.obs_shape))}], "
                             f"got {list(obs.shape)}.")
        seq = self.observe(obs[:, None], jnp.zeros((obs.shape[0], 1, self.config.action_dim)))
        return seq[:, 0]

    def observe(self, obs, actions, is_first=None, state=None, prev_action=None) -> LatentState:
        """Posterior states of a sequence.

        Args:
            obs: ``[B, T, *obs_shape]``.
            actions: ``[B, T, A]``; ``actions[:, t]`` is taken after ``obs[:, t]``.
            is_first: Optional ``[B, T]`` bool; the state resets there.
            state: Optional state ``[B, ...]`` before ``obs[:, 0]``; zero state if None.
            prev_action: Action ``[B, A]`` taken from ``state`` into ``obs[:, 0]``.

        Returns:
            ``LatentState`` ``[B, T, ...]``: state ``t`` has seen ``obs[:, :t+1]``.
        """
        obs = self._obs(obs, 2)
        batch, length = obs.shape[:2]
        actions = self._actions(actions, 2)
        if actions.shape[:2] != (batch, length):
            raise ShapeError(f"actions: expected shape [{batch}, {length}, {self.config.action_dim}], "
                             f"got {list(actions.shape)}.")
        first = jnp.zeros((batch, length), bool) if is_first is None else self._put(is_first).astype(bool)
        if state is None:
            state = self.initial_state(batch)
            prev = jnp.zeros((batch, self.config.action_dim))
        else:
            prev = jnp.zeros((batch, self.config.action_dim)) if prev_action is None else self._actions(prev_action, 1)
        prev_actions = jnp.concatenate([prev[:, None], actions[:, :-1]], 1)
        tokens = self._encode(self.params, obs)
        post, _ = self._observe(self.params, tokens, prev_actions, first, state, self.next_key(),
                                stochastic=self._stochastic)
        return post

    def predict(self, state: LatentState, action) -> LatentState:
        """One prior step: ``state [B, ...]``, ``action [B, A]`` -> next state."""
        action = self._actions(action, 1)
        return self._img_step(self.params, state, action, self.next_key(), stochastic=self._stochastic)

    def _imagine_fn(self, params, state, actions, key, stochastic=True):
        fns = self.functions
        states = fns.imagine(params, state, actions, key, stochastic)
        return Trajectory(states, actions, fns.reward(params, states.features),
                          fns.continue_prob(params, states.features))

    def imagine(self, state: LatentState, actions) -> Trajectory:
        """Roll the prior forward under ``actions`` ``[H, B, A]``.

        Returns:
            :class:`Trajectory` with states ``[H, B, ...]``, rewards ``[H, B]`` in
            real units and continue probabilities ``[H, B]``; entry ``h`` is the
            outcome of ``actions[h]``.
        """
        actions = self._actions(actions, 2)
        if actions.shape[1] != state.features.shape[0]:
            raise ShapeError(f"actions: expected shape [H, {state.features.shape[0]}, {self.config.action_dim}] "
                             f"for a state of batch {state.features.shape[0]}, got {list(actions.shape)}.")
        return self._imagine(self.params, state, actions, self.next_key(), stochastic=self._stochastic)

    def _decode_fn(self, params, state):
        fns = self.functions
        return {
            "obs": fns.decode_obs(params, state.deterministic, state.stochastic),
            "reward": fns.reward(params, state.features),
            "continue": fns.continue_prob(params, state.features),
        }

    def decode(self, state: LatentState) -> dict:
        """Heads of a state ``[..., ...]``: ``obs`` (real units; images in [0, 1]),
        ``reward`` (real units) and ``continue`` (probability)."""
        return self._decode(self.params, state)

    def compute_loss(self, batch, key=None) -> dict:
        """Loss terms on a ``[B, T, ...]`` batch (``obs, actions, rewards, continues``
        and optionally ``is_first``): ``{"loss", "loss/rec", "loss/rew", "loss/con",
        "loss/dyn", "loss/rep", ...}`` as f32 scalars."""
        prepared = self.prepare_batch(batch)
        key = self.next_key() if key is None else key
        _, metrics = self._loss(self.params, prepared, key, stochastic=self._stochastic)
        return metrics

    def prepare_batch(self, batch) -> dict:
        """Check and move a batch to the device; integer discrete actions become one-hot."""
        for name in ("obs", "actions", "rewards", "continues"):
            if name not in batch:
                raise ShapeError(f"batch lacks {name!r}; expected keys obs, actions, rewards, continues[, is_first].")
        obs = self._obs(batch["obs"], 2)
        lead = obs.shape[:2]
        out = {"obs": obs, "actions": self._actions(batch["actions"], 2)}
        for name in ("rewards", "continues", "is_first"):
            if name in batch and batch[name] is not None:
                value = self._put(batch[name])
                if value.shape != lead:
                    raise ShapeError(f"{name}: expected shape {list(lead)}, got {list(value.shape)}.")
                out[name] = value.astype(bool) if name == "is_first" else value.astype(jnp.float32)
        if out["actions"].shape[:2] != lead:
            raise ShapeError(f"actions: expected shape [{lead[0]}, {lead[1]}, {self.config.action_dim}], "
                             f"got {list(out['actions'].shape)}.")
        return out

    # ------------------------------------------------------------ training

    def make_update(self, settings: OptimizerSettings) -> UpdateFunctions:
        """LaProp + AGC(0.3) updates of the whole world model."""
        tx = laprop_agc(settings.schedule(), weight_decay=settings.weight_decay,
                        grad_clip=settings.grad_clip)
        return make_simple_update(self.functions.loss, tx)


def make_simple_update(loss_fn, tx: optax.GradientTransformation) -> UpdateFunctions:
    """Update functions for a model trained by one loss and one optimiser."""

    def init(params):
        return owned_state({"params": params, "opt_state": tx.init(params)}, params)

    def step(state, batch, key):
        grad_fn = jax.value_and_grad(functools.partial(loss_fn, stochastic=True), has_aux=True)
        (_, metrics), grads = grad_fn(state["params"], batch, key)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = dict(metrics, grad_norm=optax.global_norm(grads))
        return {"params": params, "opt_state": opt_state}, metrics

    return UpdateFunctions(init=init, step=step, params=lambda state: state["params"])
