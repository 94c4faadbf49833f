"""``TDMPC2Agent``: acts with MPPI over a TD-MPC2 world model (or its policy prior)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from worldloom.agents._run_io import read_agent_meta, write_agent
from worldloom.core.errors import ConfigError, ShapeError
from worldloom.core.sharing import shared
from worldloom.core.validation import check_environment_observations
from worldloom.models.base import OptimizerSettings, UpdateFunctions
from worldloom.training.guard import guard_update


class TDMPC2Agent:
    """A TD-MPC2 agent: the model's own update trains dynamics, reward, Qs and policy.

    Args:
        world_model: A TD-MPC2 world model (``create_world_model("tdmpc2:...")``).
        use_policy: Act with the policy prior instead of MPPI planning.
        seed_steps: The random-action steps of the run that trains it, kept with
            the agent and in its saves. The run loop takes them from
            :attr:`AgentRunConfig.seed_steps <worldloom.agents.AgentRunConfig.seed_steps>`
            (the reference's ``max(1000, 5 * episode_length)``) and sets them
            here; acting never reads them.
    """

    algo = "tdmpc2"

    def __init__(self, world_model, *, use_policy: bool = False, seed_steps: int = 1000, seed: int = 0):
        if getattr(world_model, "family", None) != "tdmpc2":
            raise ConfigError(f"TDMPC2Agent needs a TD-MPC2 world model, got {type(world_model).__name__}.")
        self.world_model = world_model
        self.use_policy = bool(use_policy)
        self.seed_steps = int(seed_steps)
        self.seed = seed
        self.discrete = world_model.config.action_type == "discrete"

    @property
    def params(self):
        return self.world_model.params

    def load_params(self, params) -> TDMPC2Agent:
        self.world_model.load_params(params)
        return self

    def num_parameters(self) -> int:
        return self.world_model.num_parameters()

    def make_update(self, settings: OptimizerSettings, skip_nonfinite: bool = True) -> UpdateFunctions:
        """The world model's update (dynamics, reward, Qs, policy prior).

        Args:
            settings: Learning rate, clip, warm-up.
            skip_nonfinite: Guard each update: one whose losses, gradients or
                new state hold NaN/inf leaves the state unchanged, and
                ``metrics["skipped"]`` is 1.0 there (0.0 otherwise).

        Agents of equal configs get the same functions for equal settings, as
        their world models do (:meth:`TDMPC2WorldModel.make_update`).
        """
        update = self.world_model.make_update(settings)
        return _guarded(update) if skip_nonfinite else update

    def reset(self, num_envs: int) -> None:
        self.world_model.reset_plan()

    def acting_state(self):
        """The kept MPPI plan, to hand back to :meth:`set_acting_state` (e.g. around an evaluation)."""
        return self.world_model.plan_mean

    def set_acting_state(self, state) -> None:
        self.world_model.plan_mean = state

    def act(self, obs, is_first, greedy: bool = False, key=None) -> np.ndarray:
        """Actions ``[N, A]`` in [-1, 1] for observations ``[N, *obs_shape]``.

        Discrete models get the relaxed vectors MPPI planned with; the
        environment runs their argmax (:func:`~worldloom.agents.collect.env_action`)
        and replay keeps the vectors, so the model trains on the inputs it plans over.
        """
        obs = np.asarray(obs)
        shape = tuple(self.world_model.config.obs_shape)
        if obs.shape[1:] != shape:
            raise ShapeError(f"obs: expected shape [N, {', '.join(map(str, shape))}], got {list(obs.shape)}.")
        obs = check_environment_observations(obs, image=self.world_model.config.is_image)
        return np.asarray(self.world_model.plan_vectors(obs, t0=np.asarray(is_first, bool), eval_mode=greedy,
                                                         use_policy=self.use_policy, prev_plan=None, task=None,
                                                         key=key))

    def random_actions(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """Seed-phase actions ``[count, A]``, uniform in [-1, 1] (discrete too: the env runs the argmax)."""
        return rng.uniform(-1, 1, (count, self.world_model.config.action_dim)).astype(np.float32)

    def save(self, path) -> None:
        meta = {"use_policy": self.use_policy, "seed_steps": self.seed_steps, "seed": self.seed}
        write_agent(path, self.algo, self.world_model, meta)

    @classmethod
    def load(cls, path, device=None) -> TDMPC2Agent:
        from worldloom.models.checkpoint import load_model

        path = Path(path)
        meta = read_agent_meta(path, cls.algo)
        model = load_model(path / "world_model", device=device)
        return cls(model, use_policy=meta["use_policy"], seed_steps=meta["seed_steps"], seed=meta.get("seed", 0))


_guarded = shared()(guard_update)  # one guarded update per update: one trace, one compile
