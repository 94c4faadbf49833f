"""The TD-MPC2 ``WorldModel`` handle."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from worldloom.core import validation
from worldloom.core.errors import ConfigError, ShapeError
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
    positive_batch_size,
)
from worldloom.models.tdmpc2 import planner
from worldloom.models.tdmpc2.config import TDMPC2Config
from worldloom.models.tdmpc2.functions import TDMPC2Functions
from worldloom.models.tdmpc2.losses import loss_metrics
from worldloom.models.tdmpc2.scale import running_scale
from worldloom.models.tdmpc2.update import make_update
from worldloom.nn.layers import jit_init


def _latent_state(z: jax.Array) -> LatentState:
    """TD-MPC2's latent is deterministic: ``deterministic = features = z``, no stochastic part."""
    return LatentState(deterministic=z)


class _Programs:
    """The jitted programs of one config, shared by every handle with that config."""

    def __init__(self, config: TDMPC2Config):
        fns = self.functions = TDMPC2Functions(config)
        scale = running_scale(config.tau)
        self.encode = jax.jit(fns.encode)
        self.next = jax.jit(fns.next)
        self.imagine = jax.jit(self._imagine)
        self.heads = jax.jit(self._heads, static_argnames="reduce")
        self.decode = jax.jit(self._decode)
        self.loss = jax.jit(lambda params, batch, key, train: loss_metrics(fns, scale, params, batch, key, train),
                            static_argnames="train")
        # eval_mode is traced: acting and evaluating run one program (two compiles otherwise).
        self.act = jax.jit(self._act, static_argnames="use_policy")
        self.init = jit_init(fns.init)

    def _imagine(self, params, z, actions, task):
        fns = self.functions
        zs = fns.rollout(params, z, actions, task)
        rewards = fns.reward(params, zs[:-1], actions, task)
        return Trajectory(_latent_state(zs[1:]), actions, rewards, fns.continue_prob(params, zs[1:], task))

    def _heads(self, params, z, action, task, reduce):
        fns = self.functions
        if action is None:
            action = fns.pi_mean(params, z, task)
        q = fns.q_all(params, z, action, task)
        q = {"mean": lambda: q.mean(0), "min": lambda: q.min(0), "all": lambda: jnp.moveaxis(q, 0, -1)}[reduce]()
        return {"reward": fns.reward(params, z, action, task), "q": q, "continue": fns.continue_prob(params, z, task)}

    def _decode(self, params, z, action, task):
        """The protocol's ``decode``: scalar heads with a trailing axis, ``[..., 1]``."""
        heads = self._heads(params, z, action, task, "mean")
        return {name: value[..., None] for name, value in heads.items()}

    def _act(self, params, obs, prev_mean, t0, key, task, eval_mode, use_policy):
        fns = self.functions
        aug_key = None
        if fns.config.is_image and fns.config.augment_acting:
            key, aug_key = jax.random.split(key)
        z = fns.encode(params, obs, task, aug_key)
        if use_policy:
            sample, info = fns.pi(params, z, key, task)
            return jnp.where(eval_mode, info["mean"], sample), prev_mean  # info["mean"]: pi_mean's tanh(mean)
        keys = jax.random.split(key, obs.shape[0])
        tasks = task if task is not None else jnp.zeros((obs.shape[0],), jnp.int32)

        def one(z, mean, first, k, task_id):
            return planner.plan(fns, params, z, mean, first, k, eval_mode, task_id if task is not None else None)

        return jax.vmap(one)(z, prev_mean, t0, keys, tasks)


@shared()
def _programs(config: TDMPC2Config) -> _Programs:
    return _Programs(config)


@shared()
def _update(config: TDMPC2Config, settings: OptimizerSettings) -> UpdateFunctions:
    return make_update(_programs(config).functions, settings)


class TDMPC2WorldModel(WorldModel):
    """TD-MPC2's implicit world model, its policy prior and MPPI planner.

    The latent ``z`` is a SimNorm vector; there is no recurrent state and no
    observation decoder (TD-MPC2 never reconstructs observations), so
    :meth:`decode` returns reward, Q and continue predictions only.

    Shapes: observations ``[B, *obs_shape]`` (sequences ``[B, T, *obs_shape]``),
    actions ``[B, A]`` in [-1, 1] (discrete models also take integer indices),
    imagined actions ``[H, B, A]``. Multitask models take ``task`` ids ``[B]``.
    Inputs follow :mod:`worldloom.core.validation`: actions outside [-1, 1],
    indices outside ``[0, A)``, NaN/inf and float images in 0..255 are
    refused with a DataError; integer images are read as uint8.

    Example:
        >>> from worldloom import create_world_model
        >>> model = create_world_model("tdmpc2:1m", obs_shape=(3,), action_dim=1)
        >>> state = model.encode(np.zeros((2, 3)))
        >>> model.imagine(state, np.zeros((3, 2, 1))).rewards.shape
        (3, 2)
        >>> action = model.act(np.zeros(3), t0=True)  # MPPI plan, action in [-1, 1]
    """

    family = "tdmpc2"
    config_cls = TDMPC2Config
    config: TDMPC2Config

    def __init__(self, config: TDMPC2Config, params=None, **kwargs):
        super().__init__(config, params, **kwargs)
        self.programs = _programs(config)
        self.functions = self.programs.functions
        self._plan_mean = None

    @staticmethod
    def init_params(config: TDMPC2Config, key):
        """Fresh params for ``config`` (one jitted program per config)."""
        return _programs(config).init(key)

    # ------------------------------------------------------------ inputs

    def _actions(self, actions, lead_shape: tuple, names: str, name: str = "actions"):
        """Actions ``[*lead_shape, A]`` as f32; discrete integer indices ``[*lead_shape]`` become one-hot.

        Actions lie in TD-MPC2's bounds [-1, 1] (discrete models: indices in ``[0, A)``, or vectors
        in [-1, 1] as the planner makes them); the reference's dynamics only ever see such actions
        (its planner and policy clamp to the bounds), so others are refused rather than clipped.
        """
        actions = self._array(actions, name=name)
        cfg = self.config
        lead, shape = tuple(lead_shape), tuple(actions.shape)
        indices = cfg.action_type == "discrete" and jnp.issubdtype(actions.dtype, jnp.integer) \
            and shape in (lead, (*lead, 1))
        if not indices and shape != (*lead, cfg.action_dim):
            want = ", ".join([f"{n}={d}" for n, d in zip(names.split(","), lead)] + [str(cfg.action_dim)])
            raise ShapeError(f"{name}: expected shape [{want}], got {list(shape)}.")
        actions, converted = self._indices_or_vectors(actions, len(lead), name, bound=validation.ACTION_BOUND)
        return actions if converted else self._put(actions, jnp.float32, name)

    def _z(self, state, name: str = "state") -> jax.Array:
        """The latent ``z [..., L]`` of a :class:`LatentState`."""
        z = self._put(self._state(state, name).deterministic, jnp.float32, name)
        if z.shape[-1] != self.config.latent_dim or state.stochastic is not None:
            raise ShapeError(f"{name}: expected a TD-MPC2 state with deterministic [..., {self.config.latent_dim}] "
                             f"and no stochastic part, got deterministic of shape {list(z.shape)}"
                             f"{'' if state.stochastic is None else ' and a stochastic part'}.")
        return z

    def _task(self, task, lead_shape: tuple):
        if not self.config.multitask:
            return None
        if task is None:
            raise ShapeError(f"This multitask model ({self.config.num_tasks} tasks) needs task ids, got task=None.")
        ids = np.asarray(task)
        if not np.issubdtype(ids.dtype, np.integer) or ids.size == 0 or ids.min() < 0 \
                or ids.max() >= self.config.num_tasks:
            raise ShapeError(f"task: expected integer ids in [0, {self.config.num_tasks}), got {ids.tolist()}.")
        try:
            np.broadcast_to(ids, lead_shape)
        except ValueError as err:
            raise ShapeError(f"task: expected shape broadcastable to {list(lead_shape)}, "
                             f"got {list(ids.shape)}.") from err
        return self._put(ids.astype(np.int32))

    # ------------------------------------------------------------ protocol

    def initial_state(self, batch_size: int) -> LatentState:
        """A neutral latent (SimNorm of zeros) ``[batch_size, L]``; real states come from :meth:`encode`."""
        return _latent_state(self.functions.initial_latent(positive_batch_size(batch_size)))

    def encode(self, obs, task=None) -> LatentState:
        """Latent of observations ``[B, *obs_shape]`` -> state ``[B, L]`` (``deterministic = features = z``)."""
        obs = self._obs(obs, 1)
        return _latent_state(self.programs.encode(self.params, obs, self._task(task, obs.shape[:1])))

    def observe(self, state: LatentState, action, obs, task=None) -> LatentState:
        """One posterior step: the latent of ``obs`` ``[B, *obs_shape]``.

        TD-MPC2's latent depends on the current observation only, so ``state``
        ``[B, L]`` and ``action`` ``[B, A]`` are checked but do not change the result.
        """
        z = self._z(state)
        batch = z.shape[0]
        action = self._actions(action, (batch,), "B", "action")
        obs = self._obs(obs, 1)
        self._same_batch("obs", obs.shape[0], batch)
        return self.encode(obs, task=task)

    def observe_sequence(self, obs, actions=None, is_first=None, state=None, task=None) -> LatentState:
        """Latents of every step of ``obs`` ``[B, T, *obs_shape]`` -> ``[B, T, L]``.

        TD-MPC2's latent depends on the current observation only, so
        ``actions``, ``is_first`` and ``state`` do not change the result
        (they are still checked when given).
        """
        obs = self._obs(obs, 2)
        check_sequence_length(obs.shape)
        if state is not None:
            self._same_batch("state", self._z(state).shape[0], obs.shape[0], "obs")
        if actions is not None:
            self._actions(actions, obs.shape[:2], "B,T")
        if is_first is not None and tuple(np.shape(is_first)) != tuple(obs.shape[:2]):
            raise ShapeError(f"is_first: expected shape {list(obs.shape[:2])}, got {list(np.shape(is_first))}.")
        task_ids = self._task(task, obs.shape[:1])
        if task_ids is not None and task_ids.ndim == 1:
            task_ids = task_ids[:, None]
        return _latent_state(self.programs.encode(self.params, obs, task_ids))

    def predict(self, state, action, task=None) -> LatentState:
        """Latent dynamics: ``state [B, L]``, ``action [B, A]`` -> next state ``[B, L]``."""
        z = self._z(state)
        action = self._actions(action, z.shape[:-1], "B", "action")
        return _latent_state(self.programs.next(self.params, z, action, self._task(task, z.shape[:-1])))

    def imagine(self, initial_state, actions, task=None) -> Trajectory:
        """Roll the latent dynamics forward under ``actions`` ``[H, B, A]`` (one ``lax.scan``).

        Returns:
            :class:`Trajectory`: states ``[H, B, L]`` reached after each action,
            rewards ``[H, B]`` of each action in real units, continue
            probabilities ``[H, B]`` (ones unless episodic).
        """
        z = self._z(initial_state, "initial_state")
        if z.ndim != 2:
            raise ShapeError(f"initial_state: expected latents [B, {self.config.latent_dim}], got {list(z.shape)}.")
        actions = self._array(actions, name="actions")
        if actions.ndim < 2:
            raise ShapeError(f"actions: expected shape [H, B={z.shape[0]}, {self.config.action_dim}], "
                             f"got {list(actions.shape)}.")
        actions = self._actions(actions, (actions.shape[0], z.shape[0]), "H,B")
        return self.programs.imagine(self.params, z, actions, self._task(task, z.shape[:1]))

    def decode(self, state, action=None, task=None) -> dict:
        """Head predictions of a state ``[..., L]``.

        TD-MPC2 has no observation decoder, so there is no ``"obs"``. Returns
        ``reward`` ``[..., 1]`` and ``q`` ``[..., 1]`` (mean over the ensemble) of
        ``action``, by default the policy prior's mean action, and ``continue``
        ``[..., 1]``, the probability that the episode goes on in this state
        (ones unless episodic).
        """
        z = self._z(state)
        if action is not None:
            action = self._actions(action, z.shape[:-1], "B", "action")
        return self.programs.decode(self.params, z, action, self._task(task, z.shape[:-1]))

    def predict_reward(self, state, action, task=None) -> jax.Array:
        """Reward of taking ``action`` ``[B, A]`` in ``state`` ``[B, L]``, real units ``[B]``."""
        z = self._z(state)
        action = self._actions(action, z.shape[:-1], "B")
        return self.programs.heads(self.params, z, action, self._task(task, z.shape[:-1]), reduce="mean")["reward"]

    def predict_q(self, state, action, task=None, reduce: str = "mean") -> jax.Array:
        """Q of ``action`` ``[B, A]`` in ``state`` ``[B, L]``: ``reduce`` ``"mean"``/``"min"`` over
        the ensemble give ``[B]``, ``"all"`` gives ``[B, num_q]``."""
        if reduce not in ("mean", "min", "all"):
            raise ConfigError(f"reduce must be 'mean', 'min' or 'all', got {reduce!r}.")
        z = self._z(state)
        action = self._actions(action, z.shape[:-1], "B")
        return self.programs.heads(self.params, z, action, self._task(task, z.shape[:-1]), reduce=reduce)["q"]

    # ------------------------------------------------------------ acting

    def act(self, obs, t0=False, eval_mode: bool = False, use_policy: bool = False, prev_plan=None, task=None,
            key=None):
        """Choose actions by MPPI planning in latent space (or with the policy prior).

        The plan (MPPI mean ``[B, H, A]``) is kept on the handle and shifted to
        warm-start the next call; ``t0=True`` (per environment: bool or ``[B]``)
        starts from zeros, as at the start of an episode. The whole plan is one
        jitted program (iterations in ``lax.scan``, environments in ``vmap``).

        Args:
            obs: ``[*obs_shape]`` or ``[B, *obs_shape]``.
            t0: First step of the episode (bool or ``[B]`` bools).
            eval_mode: No exploration noise (policy: its mean action).
            use_policy: Act with the policy prior instead of planning.
            prev_plan: A plan ``[B, H, A]`` to warm-start from instead of the kept one.
            task: Task ids (multitask models).
            key: PRNG key for sampling; default: the next key of the handle's RNG.

        Returns:
            Actions ``[A]`` or ``[B, A]`` in [-1, 1] (discrete models: indices ``[]`` or ``[B]``).
        """
        action = self.plan_vectors(obs, t0, eval_mode, use_policy, prev_plan, task, key)
        return jnp.argmax(action, -1) if self.config.action_type == "discrete" else action

    def plan_vectors(self, obs, t0, eval_mode, use_policy, prev_plan, task, key):
        """:meth:`act`'s actions as the vectors in [-1, 1]^A the model plans with (discrete models too: the
        relaxed vectors whose argmax :meth:`act` returns)."""
        cfg = self.config
        obs = self._array(obs, name="obs")
        single = obs.ndim == len(cfg.obs_shape)
        obs = self._obs(obs[None] if single else obs, 1)
        batch = obs.shape[0]
        plan_shape = (batch, cfg.horizon, cfg.action_dim)
        t0 = self._array(t0, name="t0")
        if t0.shape not in ((), (batch,)):
            raise ShapeError(f"t0: expected a bool or [{batch}] bools (one per environment), got shape "
                             f"{list(t0.shape)}.")
        validation.check_flags("t0", t0, device_checks=self.check_device_inputs)
        if prev_plan is not None:
            prev = self._array(prev_plan, name="prev_plan")
            prev = prev[None] if single and prev.ndim == 2 else prev
            if tuple(prev.shape) != plan_shape:
                raise ShapeError(f"prev_plan: expected shape {list(plan_shape)}, got {list(prev.shape)}.")
            validation.check_action_vectors("prev_plan", prev, bound=validation.ACTION_BOUND,
                                            device_checks=self.check_device_inputs)
            prev = self._put(prev, jnp.float32, "prev_plan")
        elif self._plan_mean is not None and tuple(self._plan_mean.shape) == plan_shape:
            prev = self._plan_mean
        else:
            prev, t0 = self._put(np.zeros(plan_shape, np.float32)), True
        first = jnp.broadcast_to(jnp.asarray(t0, bool), (batch,))
        task_ids = self._task(task, (batch,))
        if task_ids is not None:
            task_ids = jnp.broadcast_to(task_ids, (batch,))
        key = self._given_key(key)
        action, mean = self.programs.act(self.params, obs, prev, first, key, task_ids,
                                         eval_mode=np.bool_(eval_mode), use_policy=bool(use_policy))
        if not use_policy:
            self._plan_mean = mean
        return action[0] if single else action

    @property
    def plan_mean(self):
        """The kept MPPI plan ``[B, H, A]`` (None before the first :meth:`act`)."""
        return self._plan_mean

    @plan_mean.setter
    def plan_mean(self, mean) -> None:
        self._plan_mean = mean

    def reset_plan(self) -> None:
        """Forget the kept plan; the next :meth:`act` starts from zeros."""
        self._plan_mean = None

    # ------------------------------------------------------------ training

    def compute_loss(self, batch, key=None) -> dict:
        """Loss terms on a ``[B, T, ...]`` batch (T >= 2): ``{"loss", "loss/consistency",
        "loss/reward", "loss/value", "loss/policy"[, "loss/termination"], ...}`` as f32 scalars.

        Also the original library's names, each as it enters ``"loss"``:
        ``"reward_loss"`` and, for episodic models, ``"continue_loss"`` (the
        termination term). TD-MPC2 reconstructs nothing and has no KL, so there
        is no ``"reconstruction_loss"`` or ``"kl_loss"``.

        The online Q networks stand in for the target networks (the handle
        holds no training state). Dropout and augmentation follow
        :meth:`train`/:meth:`eval`.
        """
        prepared = self.prepare_batch(batch)
        key = self._given_key(key)
        return self.with_original_names(self.programs.loss(self.params, prepared, key, train=self.training))

    def with_original_names(self, losses: dict) -> dict:
        """``losses`` with ``"reward_loss"`` and, for episodic models, ``"continue_loss"`` added, each as it
        enters ``"loss"``."""
        cfg = self.config
        named = {**losses, "reward_loss": cfg.reward_coef * losses["loss/reward"]}
        if "loss/termination" in losses:
            named["continue_loss"] = cfg.termination_coef * losses["loss/termination"]
        return named

    def prepare_batch(self, batch) -> dict:
        """Check a ``[B, T, ...]`` batch and move it to the device.

        Keys: ``obs``, ``actions``, ``rewards``, ``continues``; optional
        ``is_first``, ``terminals``, ``is_final`` ``[B, T]`` and ``task`` ``[B]``
        (multitask). Integer actions of discrete models become one-hot.
        """
        check_batch_mapping(batch)
        for name in ("obs", "actions", "rewards", "continues"):
            if name not in batch:
                raise ShapeError(f"batch lacks {name!r}; expected keys obs, actions, rewards, continues"
                                 "[, is_first, terminals, task].")
        obs = self._obs(batch["obs"], 2)
        lead = tuple(obs.shape[:2])
        check_batch_lead(lead)
        if lead[1] < 2:
            raise ShapeError(f"obs: TD-MPC2 needs windows of T >= 2 steps, got shape {list(obs.shape)}.")
        out = {"obs": obs, "actions": self._actions(batch["actions"], lead, "B,T")}
        for name in ("rewards", "continues", "is_first", "terminals", "is_final"):
            if name in batch and batch[name] is not None:
                value = self._array(batch[name], name=name)
                if tuple(value.shape) != lead:
                    raise ShapeError(f"{name}: expected shape {list(lead)}, got {list(value.shape)}.")
                check_batch_values(name, value, self.check_device_inputs)
                out[name] = self._put(value, bool if name in ("is_first", "is_final") else jnp.float32, name)
        if self.config.multitask:
            task = batch.get("task")
            task = np.asarray(task)[:, 0] if task is not None and np.ndim(task) == 2 else task
            out["task"] = self._task(task, lead[:1])
            if out["task"].shape != lead[:1]:
                raise ShapeError(f"task: expected shape [{lead[0]}], got {list(out['task'].shape)}.")
        return out

    def make_update(self, settings: OptimizerSettings) -> UpdateFunctions:
        """TD-MPC2's update: model Adam (encoder lr x ``enc_lr_scale``), policy Adam,
        target-Q Polyak averaging and the running Q scale, in one pure ``step``.

        Models of equal configs get the same functions for equal settings, and
        with them ``jax.jit``'s traced and compiled programs.
        """
        return _update(self.config, settings)

    def to(self, device) -> TDMPC2WorldModel:
        super().to(device)
        if self._plan_mean is not None:
            self._plan_mean = jax.device_put(self._plan_mean, self.device)
        return self
