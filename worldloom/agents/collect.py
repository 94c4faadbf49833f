"""Experience collection of the online loop: acting in the environments and filling replay.

Two ways, one per agent, each the reference's:

- :class:`StreamCollector` (DreamerV3): every step enters a
  :class:`StreamReplay` as it happens, with the agent's latent; the terminal
  observation is a row of its own; windows start from stored latents, and the
  update's fresh posteriors are written back.
- :class:`EpisodeCollector` (TD-MPC2): whole episodes enter a
  :class:`ReplayBuffer` when they end, final observation included; windows are
  drawn episode-uniformly and may end on that final observation.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from worldloom.agents.replay import StreamReplay
from worldloom.core.errors import ConfigError, DataError

EpisodeHook = Callable[[float, int], None]


def env_action(action: np.ndarray, env, discrete: bool):
    """The Gymnasium action of one agent action (one-hot -> index; [-1, 1] -> the Box bounds).

    ``env`` is an environment, or an action space (a vector env's ``single_action_space``).
    A dimension without finite bounds gets the agent's value in [-1, 1], as the
    reference's ``NormalizeAction`` leaves it.
    """
    space = getattr(env, "action_space", env)
    if discrete:
        return int(np.argmax(action))
    low, high = (np.asarray(bound, np.float64).reshape(-1) for bound in (space.low, space.high))
    finite = np.isfinite(low) & np.isfinite(high)
    low, high = np.where(finite, low, -1.0), np.where(finite, high, 1.0)
    scaled = low + (np.clip(np.asarray(action, np.float64).reshape(-1), -1, 1) + 1.0) * 0.5 * (high - low)
    return scaled.reshape(space.shape).astype(space.dtype)


def act_on(agent, obs: np.ndarray, first: np.ndarray, envs, episode_steps) -> np.ndarray:
    """``agent.act(obs, first)``; an observation it refuses is named by environment id, index and episode step."""
    try:
        return agent.act(obs, first)
    except DataError as err:
        rows = getattr(err, "environments", None)
        if not rows:
            raise
        try:
            specs = list(envs.get_attr("spec"))
        except Exception:  # noqa: BLE001 - the id only words the message
            specs = [None] * len(obs)
        named = ", ".join(f"{getattr(specs[i], 'id', None) or 'environment'} #{i} at step {int(episode_steps[i])} "
                          "of its episode" for i in rows[:8])
        raise DataError(f"{named}: {err}") from err


def env_actions(actions: np.ndarray, envs, discrete: bool) -> np.ndarray:
    """A vector env's batched actions ``[N, ...]`` from the agent's ``[N, A]``."""
    return np.stack([env_action(action, envs.single_action_space, discrete) for action in actions])


def make_vector_env(env_id: str, agent: str, count: int, autoreset: str, options: dict | None = None):
    """``count`` copies of ``env_id`` behind Gymnasium's vector API, reset as ``autoreset`` says.

    ``options`` are :func:`~worldloom.envs.make_env` keywords (a suite's settings).

    With ``count > 1`` each runs in a subprocess (``AsyncVectorEnv``, started
    with ``spawn``): they step, and render, in parallel. A subprocess makes its
    environment from the id, so an environment registered only in the calling
    script must be named ``"module:Id"`` (Gymnasium imports the module first).
    """
    import functools

    import gymnasium as gym

    from worldloom.envs import make_env

    make = functools.partial(make_env, env_id, agent=agent, **(options or {}))
    if count > 1:
        return gym.vector.AsyncVectorEnv([make] * count, context="spawn", autoreset_mode=autoreset)
    return gym.vector.SyncVectorEnv([make], autoreset_mode=autoreset)


def as_vector_env(envs, autoreset: str):
    """``envs`` as a Gymnasium vector env: a vector env unchanged, a list of environments stepped in turn.

    Raises:
        ConfigError: a vector env that resets its environments another way than ``autoreset``.
    """
    import gymnasium as gym

    if isinstance(envs, gym.vector.VectorEnv):
        # The vector env's own attribute: its metadata dict is the environment class's, shared, before gymnasium 1.4.
        mode = getattr(envs.unwrapped, "autoreset_mode", None)
        if mode is not None and getattr(mode, "value", mode) != autoreset:
            raise ConfigError(f"Expected a vector env made with autoreset_mode={autoreset!r} (where the collector "
                              f"reads an episode's end and next start), got {getattr(mode, 'value', mode)!r}.")
        return envs
    return gym.vector.SyncVectorEnv([lambda env=env: env for env in envs], autoreset_mode=autoreset)


def obs_dtype(env) -> np.dtype:
    """The dtype replay stores ``env``'s (or an observation space's) observations in."""
    dtype = np.dtype(getattr(env, "observation_space", env).dtype)
    return np.dtype(np.float32) if dtype in (np.float64, np.bool_) else dtype


class StreamCollector:
    """DreamerV3's collection: one replay row per environment per call of :meth:`step`.

    Args:
        envs: A Gymnasium vector env made with ``autoreset_mode=AUTORESET``
            (one stream per environment), or a list of environments.
        agent: A :class:`DreamerAgent`.
        capacity: Replay rows over all streams.
        discrete: Discrete action space.
        on_episode: ``on_episode(return, length)`` at every episode end.
        **replay: :class:`StreamReplay` keywords: ``online``, ``directory``, ``resume``.
    """

    AUTORESET = "NextStep"  # the step after the last one resets: the terminal row is stored first

    def __init__(self, envs, agent, capacity: int, discrete: bool, seed: int, on_episode: EpisodeHook, **replay):
        cfg = agent.world_model.config
        envs = self.envs = as_vector_env(envs, self.AUTORESET)
        self.discrete, self.on_episode = discrete, on_episode
        count = envs.num_envs
        dtype = obs_dtype(envs.single_observation_space)
        self.capacity = max(int(capacity), 2 * count)
        self.replay = StreamReplay(self.capacity, count, cfg.obs_shape, dtype, cfg.action_dim, cfg.deter,
                                   cfg.stoch_size, seed=seed, **replay)
        self.rewards = np.zeros(count, np.float32)
        self.first, self.last, self.terminal = (np.zeros(count, bool) for _ in range(3))
        self.returns, self.lengths = np.zeros(count), np.zeros(count, np.int64)
        self.obs = None

    def reset(self, seeds: list[int], agent) -> None:
        """Start a new episode in every environment."""
        self.obs = self.envs.reset(seed=[int(seed) for seed in seeds])[0]
        self.rewards[:], self.first[:], self.last[:], self.terminal[:] = 0.0, True, False, False
        self.returns[:], self.lengths[:] = 0.0, 0
        agent.reset(self.envs.num_envs)

    def step(self, agent, random_actions: np.ndarray | None = None) -> int:
        """Act on the current observations, store the rows, advance the environments; env steps taken."""
        actions = act_on(agent, self.obs, self.first, self.envs, self.lengths)
        if random_actions is not None:
            actions = random_actions
            agent.record_actions(actions)
        deter, stoch = agent.latent()
        self.replay.add({"obs": self.obs, "actions": actions, "rewards": self.rewards, "is_first": self.first,
                         "is_last": self.last, "is_terminal": self.terminal, "deter": deter, "stoch": stoch})
        stepped = 0
        obs, rewards, terminateds, truncateds, _ = self.envs.step(env_actions(actions, self.envs, self.discrete))
        for i in range(self.envs.num_envs):
            if self.last[i]:  # the terminal row is stored; this step reset the environment
                self.rewards[i], self.first[i], self.last[i], self.terminal[i] = 0.0, True, False, False
                self.returns[i], self.lengths[i] = 0.0, 0
                continue
            reward, terminated, truncated = float(rewards[i]), bool(terminateds[i]), bool(truncateds[i])
            stepped += 1
            self.rewards[i], self.first[i] = reward, False
            self.last[i], self.terminal[i] = terminated or truncated, terminated
            self.returns[i] += float(reward)
            self.lengths[i] += 1
            if self.last[i]:
                self.on_episode(float(self.returns[i]), int(self.lengths[i]))
        self.obs = obs
        return stepped

    @property
    def num_transitions(self) -> int:
        return len(self.replay)

    def ready(self, batch_size: int, seq_len: int) -> bool:
        """Whether learning may start: replay holds ``batch_size * seq_len`` windows of ``seq_len + 1`` rows, as
        the reference waits for ``len(replay) >= batch_size * batch_length`` (1,088 steps of one environment at
        16 x 64)."""
        return self.replay.window_count(seq_len + 1) >= batch_size * seq_len

    def sample(self, batch_size: int, seq_len: int):
        """Windows of ``seq_len + 1`` rows (one row of context) and where they lie."""
        return self.replay.sample(batch_size, seq_len + 1)

    def write_back(self, where, posteriors: dict) -> None:
        """Store an update's fresh posteriors (``{"deter", "stoch"}``, ``[B, T, ...]``) in the windows ``where``."""
        self.replay.update(where, posteriors)

    def save(self, directory: Path) -> None:
        self.replay.save(directory / "replay.npz")

    def load(self, directory: Path) -> None:
        """Restore the replay, grown to this run's capacity (ConfigError when the rows held do not fit); the
        newest row of each stream becomes a last step (its episode ends there)."""
        self.replay.load(directory / "replay.npz").resize(self.capacity).end_episodes()


class EpisodeCollector:
    """TD-MPC2's collection: whole episodes, with their final observation, enter an :class:`EpisodeReplay`.

    ``envs``: a Gymnasium vector env made with ``autoreset_mode=AUTORESET``, or a list of environments.
    ``**replay``: :class:`EpisodeReplay` keywords (``directory``, ``resume``).
    """

    AUTORESET = "SameStep"  # an ended episode resets at once; its final observation comes in the step's info

    def __init__(self, envs, agent, capacity: int, discrete: bool, seed: int, on_episode: EpisodeHook,
                 online: bool = False, **replay):
        from worldloom.training.episode_replay import EpisodeReplay

        cfg = agent.world_model.config
        envs = self.envs = as_vector_env(envs, self.AUTORESET)
        self.discrete, self.on_episode = discrete, on_episode
        self.capacity = int(capacity)
        self.episodic = bool(getattr(cfg, "episodic", True))  # a model without the notion: no check
        self.replay = EpisodeReplay(capacity, cfg.obs_shape, obs_dtype(envs.single_observation_space), cfg.action_dim,
                                    seed=seed, **replay)
        self.records = [self._record() for _ in range(envs.num_envs)]
        self.first = np.ones(envs.num_envs, bool)
        self.obs = None

    @staticmethod
    def _record() -> dict:
        return dict(obs=[], actions=[], rewards=[], terminated=[], truncated=[])

    def reset(self, seeds: list[int], agent) -> None:
        count = self.envs.num_envs
        self.obs = self.envs.reset(seed=[int(seed) for seed in seeds])[0]
        self.records = [self._record() for _ in range(count)]
        self.first[:] = True
        agent.reset(count)

    def step(self, agent, random_actions: np.ndarray | None = None) -> int:
        actions = (act_on(agent, self.obs, self.first, self.envs, [len(r["rewards"]) for r in self.records])
                   if random_actions is None else random_actions)
        obs, rewards, terminateds, truncateds, info = self.envs.step(env_actions(actions, self.envs, self.discrete))
        for i in range(self.envs.num_envs):
            reward, terminated, truncated = float(rewards[i]), bool(terminateds[i]), bool(truncateds[i])
            next_obs = info["final_obs"][i] if terminated or truncated else obs[i]
            record = self.records[i]
            for key, value in (("obs", self.obs[i]), ("actions", actions[i]), ("rewards", reward),
                               ("terminated", terminated), ("truncated", truncated)):
                record[key].append(value)
            self.first[i] = False
            if terminated and not self.episodic:
                raise ConfigError(
                    f"Environment {i} ended an episode of {len(record['rewards'])} step(s) with a termination, but the "
                    "TD-MPC2 model is not episodic (episodic=False): it has no termination head, and its planning "
                    "counts reward past the end. Expected episodic=True (--episodic) on a task that terminates (unset, "
                    "a run decides by a 2,000-step random probe of the task).")
            if terminated or truncated:
                self.replay.add(dict(obs=np.stack(record["obs"]), actions=np.stack(record["actions"]),
                                     rewards=np.asarray(record["rewards"], np.float32),
                                     terminated=np.asarray(record["terminated"]),
                                     truncated=np.asarray(record["truncated"]), final_obs=next_obs))
                self.on_episode(float(np.sum(record["rewards"])), len(record["rewards"]))
                self.records[i] = self._record()
                self.first[i] = True  # obs[i] is the next episode's first observation
        self.obs = obs
        return self.envs.num_envs

    @property
    def buffer(self):
        """The :class:`ReplayBuffer` the replay holds."""
        return self.replay.buffer

    @property
    def num_transitions(self) -> int:
        return len(self.replay)

    def ready(self, batch_size: int, seq_len: int) -> bool:
        """Whether learning may start: replay holds a window (the seed steps come first, as the reference's)."""
        return self.replay.ready(seq_len)

    def sample(self, batch_size: int, seq_len: int):
        return self.replay.sample(batch_size, seq_len)

    def write_back(self, where, posteriors) -> None:
        """Nothing: TD-MPC2's replay stores no latents."""

    def save(self, directory: Path) -> None:
        self.replay.save(directory / "replay.npz")

    def load(self, directory: Path) -> None:
        """Restore the replay, in a buffer of this run's capacity (ConfigError when the episodes held do not fit)."""
        self.replay.load(directory / "replay.npz")
