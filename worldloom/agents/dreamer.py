"""``DreamerAgent``: DreamerV3 world model plus actor-critic learned in imagination."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from worldloom.agents._run_io import read_agent_meta, write_agent
from worldloom.agents.dreamer_losses import DreamerAgentConfig, behaviour_loss
from worldloom.agents.dreamer_networks import Actor, Critic, policy_sample
from worldloom.agents.normalizers import ema_update, percentile_normalizer
from worldloom.core.errors import CheckpointError, ConfigError, ShapeError
from worldloom.core.sharing import shared
from worldloom.core.validation import check_environment_observations
from worldloom.models.base import OptimizerSettings, UpdateFunctions, owned_state
from worldloom.models.checkpoint import restore_pytree, save_pytree
from worldloom.models.dreamerv3.config import DreamerV3Config
from worldloom.models.dreamerv3.losses import DreamerV3Functions
from worldloom.models.dreamerv3.model import DreamerV3WorldModel
from worldloom.nn.layers import jit_init
from worldloom.nn.optim import global_norm, laprop_agc
from worldloom.training.guard import guard_update

sg = jax.lax.stop_gradient


class DreamerAgent:
    """A DreamerV3 agent: world model, actor and critic trained in one jitted update.

    Args:
        world_model: A :class:`DreamerV3WorldModel` (``create_world_model("dreamerv3:...")``).
        config: Behaviour hyperparameters.
        seed: Seeds the actor/critic init and the acting RNG.

    Example:
        >>> from worldloom import create_world_model
        >>> wm = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, action_type="discrete")
        >>> agent = DreamerAgent(wm)
        >>> agent.reset(3)
        >>> agent.act(np.zeros((3, 4)), np.ones(3, bool)).shape
        (3, 2)
    """

    algo = "dreamerv3"

    def __init__(self, world_model: DreamerV3WorldModel, config: DreamerAgentConfig | None = None, *,
                 seed: int = 0, behaviour_params=None):
        if not isinstance(world_model, DreamerV3WorldModel):
            raise ConfigError(f"DreamerAgent needs a DreamerV3 world model, got {type(world_model).__name__}.")
        self.world_model = world_model
        self.config = config or DreamerAgentConfig()
        wm_cfg = world_model.config
        self._learner = _learner(wm_cfg, self.config)
        self.discrete = self._learner.discrete
        self.actor_net, self.critic_net = self._learner.nets
        if behaviour_params is None:
            behaviour_params = self._learner.init_behaviour_program(jax.random.PRNGKey(seed + 7))
        self.behaviour_params = jax.device_put(behaviour_params, world_model.device)
        self.seed = seed
        self._key = jax.random.PRNGKey(seed + 11)
        self._policy_step = self._learner.policy_step_program
        self._carry = None

    # ------------------------------------------------------------ params

    def init_behaviour(self, key):
        """Fresh ``{"actor", "critic"}`` params."""
        return self._learner.init_behaviour(key)

    @property
    def params(self) -> dict:
        """``{"wm", "actor", "critic"}`` params."""
        return {"wm": self.world_model.params, **self.behaviour_params}

    def load_params(self, params: dict) -> DreamerAgent:
        self.world_model.load_params(params["wm"])
        self.behaviour_params = jax.device_put({"actor": params["actor"], "critic": params["critic"]},
                                               self.world_model.device)
        return self

    def num_parameters(self) -> int:
        return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(self.params)))

    # ------------------------------------------------------------ training

    def loss(self, params, slow_critic, retnorm, batch, key):
        """World-model loss plus behaviour losses on replay windows; ``(total, (metrics, retnorm, posterior))``.

        Args:
            batch: :meth:`StreamReplay.sample` windows of ``T + 1`` rows: the
                world model starts from the stored latent of row 0
                (``deter [B, D]``, ``stoch [B, S]``) with row 0's action as the
                previous action, and trains on rows ``1..T``.

        Returns:
            The posterior ``[B, T, ...]`` of the trained rows is returned too,
            to be written back to the replay.
        """
        return self._learner.loss(params, slow_critic, retnorm, batch, key)

    def make_update(self, settings: OptimizerSettings, skip_nonfinite: bool = True) -> UpdateFunctions:
        """One optimiser (LaProp + AGC) over world model, actor and critic, as the reference.

        Args:
            settings: Learning rate, clip, warm-up.
            skip_nonfinite: Guard each update: one whose losses, gradients or
                new state hold NaN/inf leaves the state unchanged, and
                ``metrics["skipped"]`` is 1.0 there (0.0 otherwise). ``run_agent``
                stops or goes on from that flag (``AgentRunConfig.on_nonfinite``).

        ``step(state, batch, key) -> (state, metrics, posteriors)``: besides the
        state and metrics, each update returns the fresh posteriors of the
        trained rows, ``{"deter": [B, T, D], "stoch": [B, T, S]}``, for the
        replay's write-back (:meth:`StreamReplay.write_latents`).

        Agents of equal configs get the same functions for equal settings, and
        with them ``jax.jit``'s traced and compiled programs: a second run of
        the same configuration in a process compiles no update.
        """
        return _update_functions(self.world_model.config, self.config, settings, bool(skip_nonfinite))

    # ------------------------------------------------------------ acting

    def policy_step(self, params, carry, obs, is_first, key, greedy=False):
        """One environment step of the policy, pure.

        Args:
            carry: ``(LatentState [N, ...], prev_action [N, A])``.
            obs: ``[N, *obs_shape]``; ``is_first``: ``[N]`` bool.

        Returns:
            ``(carry, action [N, A])``; discrete actions are one-hot.

        Agents of equal configs act with one jitted program.
        """
        return self._learner.policy_step(params, carry, obs, is_first, key, greedy)

    def reset(self, num_envs: int) -> None:
        """Start fresh recurrent states for ``num_envs`` environments."""
        wm = self.world_model
        # On the model's device, as the policy step's outputs are: jit compiles once per placement of its inputs.
        self._carry = jax.device_put((wm.initial_state(num_envs), jnp.zeros((num_envs, wm.config.action_dim))),
                                     wm.device)

    def latent(self) -> tuple[np.ndarray, np.ndarray]:
        """``(deter [N, D], stoch [N, S])`` after the latest :meth:`act`: what the replay stores with the step."""
        state = self._carry[0]
        return np.asarray(state.deterministic), np.asarray(state.stochastic)

    def record_actions(self, actions) -> None:
        """Make ``actions`` ``[N, A]`` the previous actions of the next step (random ones run instead, say)."""
        self._carry = (self._carry[0], jax.device_put(jnp.asarray(actions, jnp.float32), self.world_model.device))

    def acting_state(self):
        """The recurrent acting state, to hand back to :meth:`set_acting_state` (e.g. around an evaluation)."""
        return self._carry

    def set_acting_state(self, state) -> None:
        self._carry = state

    def act(self, obs, is_first, greedy: bool = False, key=None) -> np.ndarray:
        """Actions ``[N, A]`` for observations ``[N, *obs_shape]`` (one-hot if discrete).

        Continuous actions are clipped to [-1, 1]. ``is_first`` marks the first
        observation of an episode. Call :meth:`reset` before the first step.
        Observations are checked as the world model checks them
        (:mod:`worldloom.core.validation`); a NaN/inf one is a DataError naming its environment.
        """
        obs = obs if isinstance(obs, jax.Array) else np.asarray(obs)
        shape = tuple(self.world_model.config.obs_shape)
        if obs.shape[1:] != shape:
            raise ShapeError(f"obs: expected shape [N, {', '.join(map(str, shape))}], got {list(obs.shape)}.")
        obs = check_environment_observations(obs, image=self.world_model.config.is_image,
                                             device_checks=self.world_model.check_device_inputs)
        if self._carry is None or self._carry[1].shape[0] != obs.shape[0]:
            self.reset(obs.shape[0])
        if key is None:
            self._key, key = jax.random.split(self._key)
        self._carry, action = self._policy_step(self.params, self._carry, obs, jnp.asarray(is_first, bool), key,
                                                greedy=greedy)
        action = np.asarray(action)
        return action if self.discrete else np.clip(action, -1.0, 1.0)

    def random_actions(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """Random actions ``[count, A]``: uniform one-hot when discrete, else uniform in [-1, 1]."""
        dim = self.world_model.config.action_dim
        if self.discrete:
            return np.eye(dim, dtype=np.float32)[rng.integers(0, dim, count)]
        return rng.uniform(-1, 1, (count, dim)).astype(np.float32)

    # ------------------------------------------------------------ save / load

    def save(self, path) -> None:
        """Write the agent (world model, actor, critic, configs) to ``path`` atomically."""
        meta = {"config": self.config.to_dict(), "seed": self.seed}
        write_agent(path, self.algo, self.world_model, meta,
                    fill=lambda tmp: save_pytree(self.behaviour_params, tmp / "behaviour"))

    @classmethod
    def load(cls, path, device=None) -> DreamerAgent:
        from worldloom.models.checkpoint import load_model

        path = Path(path)
        meta = read_agent_meta(path, cls.algo)
        world_model = load_model(path / "world_model", device=device)
        agent = cls(world_model, DreamerAgentConfig.from_dict(meta["config"]), seed=meta.get("seed", 0))
        try:
            behaviour = restore_pytree(path / "behaviour", agent.behaviour_params)
        except Exception as err:  # noqa: BLE001
            raise CheckpointError(f"Could not read the behaviour weights at {path / 'behaviour'}: {err}") from err
        agent.behaviour_params = jax.device_put(behaviour, world_model.device)
        return agent


class _Learner:
    """What the agent acts, learns and initialises with: pure functions of the two configs, no params, and
    their jitted programs."""

    def __init__(self, wm_config: DreamerV3Config, config: DreamerAgentConfig):
        self.config = config
        self.wm_fns = DreamerV3Functions(wm_config)
        self.discrete = wm_config.action_type == "discrete"
        self.nets = (Actor(wm_config.action_dim, self.discrete, wm_config.units, config.actor_layers,
                           config.actor_outscale),
                     Critic(wm_config.units, config.critic_bins, config.critic_layers))
        self.policy_step_program = jax.jit(self.policy_step, static_argnames="greedy")
        self.init_behaviour_program = jit_init(self.init_behaviour)

    def init_behaviour(self, key):
        """:meth:`DreamerAgent.init_behaviour`."""
        actor, critic = self.nets
        features = jnp.zeros((1, self.wm_fns.config.feature_size))
        actor_key, critic_key = jax.random.split(key)
        return {"actor": actor.init(actor_key, features)["params"],
                "critic": critic.init(critic_key, features)["params"]}

    def policy_step(self, params, carry, obs, is_first, key, greedy=False):
        """:meth:`DreamerAgent.policy_step`."""
        fns = self.wm_fns
        wm = params["wm"]
        latent, prev_action = carry
        obs_key, act_key = jax.random.split(key)
        token = fns.encode(wm, obs)
        first = fns.first_deter(wm, prev_action.shape[-1])
        prev_action = jnp.where(is_first[:, None], 0.0, prev_action)
        inputs = (token, prev_action, is_first, obs_key)
        _, (deter, stoch, _, _) = fns.obs_step(wm, (latent.deterministic, latent.stochastic), inputs, first)
        state = fns.state(deter, stoch)
        raw = self.nets[0].apply({"params": params["actor"]}, state.features)
        action = policy_sample(raw, act_key, self.discrete, greedy)
        return (state, action), action

    def loss(self, params, slow_critic, retnorm, batch, key):
        """:meth:`DreamerAgent.loss`."""
        wm_fns = self.wm_fns
        wm_key, behaviour_key = jax.random.split(key)
        rows = {name: batch[name][:, 1:] for name in ("obs", "rewards", "is_first", "is_last", "is_terminal")}
        rows["prev_actions"] = batch["actions"][:, :-1]
        start = wm_fns.state(batch["deter"], batch["stoch"])
        wm_loss, wm_metrics, post = wm_fns.stream_loss(params["wm"], rows, start, wm_key)
        behaviour, metrics, retnorm = behaviour_loss(self.config, wm_fns, self.nets, params, slow_critic, retnorm,
                                                     post, rows, behaviour_key, self.discrete)
        metrics.update({k if k != "loss" else "loss/world_model": v for k, v in wm_metrics.items()})
        total = wm_loss + behaviour
        metrics["loss"] = total
        return total, (metrics, retnorm, post.core())


@shared()
def _learner(wm_config: DreamerV3Config, config: DreamerAgentConfig) -> _Learner:
    return _Learner(wm_config, config)


@shared()
def _update_functions(wm_config: DreamerV3Config, config: DreamerAgentConfig, settings: OptimizerSettings,
                      skip_nonfinite: bool) -> UpdateFunctions:
    """:meth:`DreamerAgent.make_update`'s functions, one per configuration (they hold no params)."""
    learner = _learner(wm_config, config)
    tx = laprop_agc(settings.schedule(), weight_decay=settings.weight_decay, grad_clip=settings.grad_clip)
    normalizer = percentile_normalizer(config.retnorm_rate, limit=config.retnorm_limit)
    rate = config.slow_critic_rate

    def init(params):
        state = {"params": params, "opt_state": tx.init(params), "slow_critic": params["critic"],
                 "retnorm": normalizer.init()}
        return owned_state(state, params)

    def step(state, batch, key):
        grad_fn = jax.value_and_grad(learner.loss, has_aux=True)
        (_, (metrics, retnorm, post)), grads = grad_fn(state["params"], state["slow_critic"], state["retnorm"],
                                                 batch, key)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        slow = ema_update(state["slow_critic"], params["critic"], rate)
        metrics = dict(metrics, grad_norm=global_norm(grads))
        posteriors = {"deter": sg(post.deterministic), "stoch": sg(post.stochastic)}
        return ({"params": params, "opt_state": opt_state, "slow_critic": slow, "retnorm": retnorm}, metrics,
                posteriors)

    update = UpdateFunctions(init=init, step=step, params=lambda state: state["params"])
    return guard_update(update) if skip_nonfinite else update
