"""The online loop: act in Gymnasium environments, replay, train, evaluate, checkpoint.

``run_agent(AgentRunConfig(env="CartPole-v1", algo="dreamerv3"))`` collects
experience with the agent (DreamerV3: every step into a stream replay as it
happens; TD-MPC2: whole episodes into a :class:`ReplayBuffer`, see
:mod:`worldloom.agents.collect`), runs jitted updates at a fixed train ratio,
evaluates periodically in separate environments without disturbing the
episodes in flight, and writes TensorBoard logs, learning-curve PNGs and
resumable checkpoints to ``out_dir``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from worldloom import distributed
from worldloom.agents._processes import NullWriter, ProcessShare
from worldloom.agents._run_io import LoopState, load_checkpoint, plot_curves, save_checkpoint
from worldloom.agents.collect import EpisodeCollector, StreamCollector, env_action, make_vector_env
from worldloom.agents.dreamer import DreamerAgent
from worldloom.agents.run_file import write_run
from worldloom.agents.tdmpc2 import TDMPC2Agent
from worldloom.core.config import ConfigBase, require
from worldloom.core.errors import ConfigError, TrainingError
from worldloom.models.base import OptimizerSettings
from worldloom.models.checkpoint import params_sha256
from worldloom.models.factory import create_world_model
from worldloom.training._guard import NONFINITE_MODES, SKIPPED, NonFiniteGuard

_PROCESS_SEEDS = 7919  # seed offset of each process's environments, replay and random actions

DEFAULTS = {
    "dreamerv3": dict(model="dreamerv3:size1m", batch_size=16, sequence_length=64, learning_rate=4e-5,
                      grad_clip=0.0, warmup_steps=1000, seed_steps=0),
    "tdmpc2": dict(model="tdmpc2:5m", batch_size=256, sequence_length=4, learning_rate=3e-4,
                   grad_clip=20.0, warmup_steps=0, seed_steps=1000),
}


@dataclasses.dataclass(frozen=True)
class AgentRunConfig(ConfigBase):
    """An online training run. ``None`` fields take the algorithm's reference default."""

    env: str = "CartPole-v1"
    """Gymnasium id or suite id (``dmc:cartpole-balance:pixels``, ``atari:pong``); Discrete or Box actions,
    vector or image observations."""
    env_options: dict[str, Any] | None = None
    """Keywords for every environment the run makes: a suite's settings over its reference's
    (``{"fast_render": True}``, ``{"repeat": 2}``; see :mod:`worldloom.envs.suites`), or ``gymnasium.make``
    keywords for a Gymnasium id."""
    algo: str = "dreamerv3"
    """``"dreamerv3"`` (actor-critic in imagination) or ``"tdmpc2"`` (MPPI planning)."""
    model: str | None = None
    """World-model preset; default ``dreamerv3:size1m`` / ``tdmpc2:5m`` (the reference's default size)."""
    total_steps: int = 50_000
    """Environment steps (summed over environments)."""
    num_envs: int = 1
    """Environments stepped together; the agent acts on all in one call."""
    train_ratio: float = 32.0
    """Replayed steps per environment step (DreamerV3); updates = steps * ratio / (B * T)."""
    updates_per_step: float = 1.0
    """Updates per environment step (TD-MPC2's update-to-data ratio)."""
    batch_size: int | None = None
    sequence_length: int | None = None
    learning_rate: float | None = None
    grad_clip: float | None = None
    warmup_steps: int | None = None
    seed_steps: int | None = None
    """Random-action steps before learning starts (DreamerV3: none, it acts with its initial policy from
    step 0, as the reference; TD-MPC2: ``max(1000, 5 * episode length)``)."""
    episodic: bool | None = None
    """TD-MPC2: termination head and planning that stops at predicted terminations. ``None``: on when a
    random-action probe of the environment (2,000 steps, not counted) sees a termination; set it for tasks
    that terminate only on success or failure a random policy never reaches."""
    log_every: int = 10
    """Updates between logged training losses (TensorBoard ``train/*``)."""
    eval_every: int = 5_000
    """Environment steps between evaluations."""
    eval_episodes: int = 5
    stop_return: float | None = None
    """Stop once a mean evaluation return reaches this (``None``: run all ``total_steps``)."""
    checkpoint_every: int = 10_000
    """Environment steps between checkpoints (0: only at the end)."""
    buffer_capacity: int = 1_000_000
    out_dir: str = "runs/agent"
    device: str = "auto"
    """Where the agent computes: ``"cpu"``, ``"cuda"``, ``"tpu"`` or ``"auto"`` (the fastest present)."""
    seed: int = 0
    on_nonfinite: str = "stop"
    """A NaN/inf loss, gradient or updated state: "stop" (TrainingError), "skip" (drop the update) or "ignore"."""
    max_consecutive_skips: int = 20
    """With ``on_nonfinite="skip"``: more consecutive skipped updates than this stop with TrainingError."""

    def validate(self) -> None:
        require(self.algo in DEFAULTS, f"algo must be one of {sorted(DEFAULTS)}, got {self.algo!r}.")
        require(self.total_steps > 0, f"total_steps must be positive, got {self.total_steps}.")
        require(self.num_envs >= 1, f"num_envs must be >= 1, got {self.num_envs}.")
        require(self.train_ratio > 0 and self.updates_per_step > 0, "train_ratio and updates_per_step must be > 0.")
        require(self.eval_episodes >= 0 and self.eval_every > 0, "eval_every must be > 0 and eval_episodes >= 0.")
        require(self.on_nonfinite in NONFINITE_MODES,
                f"on_nonfinite must be one of {', '.join(map(repr, NONFINITE_MODES))}, got {self.on_nonfinite!r}.")
        require(self.env_options is None or (isinstance(self.env_options, dict)
                                              and all(isinstance(key, str) for key in self.env_options)
                                              and "agent" not in self.env_options),
                f"env_options must be a mapping of keyword names to values (the agent's suite settings come "
                f"from algo, not an 'agent' key), got {self.env_options!r}.")
        require(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}.")
        require(self.max_consecutive_skips >= 1,
                f"max_consecutive_skips must be >= 1, got {self.max_consecutive_skips}.")

    def make_env(self, **kwargs):
        """One environment of this run: ``env`` with the agent's suite settings and ``env_options``."""
        from worldloom.training.data import make_env

        return make_env(self.env, agent=self.algo, **(self.env_options or {}), **kwargs)

    def resolved(self, name: str):
        value = getattr(self, name)
        return DEFAULTS[self.algo][name] if value is None else value


def _spaces(env):
    import gymnasium as gym

    obs_shape = tuple(env.observation_space.shape)
    space = env.action_space
    if isinstance(space, gym.spaces.Discrete):
        return obs_shape, int(space.n), True
    if isinstance(space, gym.spaces.Box):
        return obs_shape, int(np.prod(space.shape)), False
    raise ValueError(f"Unsupported action space {space}; expected Discrete or Box.")


def reached(eval_returns, stop_return: float | None) -> bool:
    """Whether the latest evaluation ``(step, mean, std)`` reached ``stop_return``."""
    return stop_return is not None and bool(eval_returns) and eval_returns[-1][1] >= stop_return


def seed_steps_for(config: AgentRunConfig, episode_length: int | None) -> int:
    """Random-action steps: ``config.seed_steps``, else DreamerV3's 0 or TD-MPC2's ``max(1000, 5 * L)``."""
    if config.seed_steps is not None or config.algo != "tdmpc2" or not episode_length:
        return config.resolved("seed_steps")
    return max(DEFAULTS["tdmpc2"]["seed_steps"], 5 * int(episode_length))


def make_agent(config: AgentRunConfig, obs_shape, action_dim: int, discrete: bool, episode_length: int | None = None,
               **overrides):
    """The agent of ``config.algo`` with a fresh world model.

    ``episode_length`` (the environment's time limit) sets TD-MPC2's discount
    heuristic and seed steps, as the reference does, unless overridden.
    """
    kind = "discrete" if discrete else "continuous"
    if config.algo == "tdmpc2" and episode_length:
        overrides.setdefault("episode_length", int(episode_length))
    model = create_world_model(config.resolved("model"), obs_shape=obs_shape, action_dim=action_dim,
                               action_type=kind, seed=config.seed, device=config.device, **overrides)
    if config.algo == "dreamerv3":
        return DreamerAgent(model, seed=config.seed)
    return TDMPC2Agent(model, seed_steps=seed_steps_for(config, episode_length), seed=config.seed)


def evaluate(agent, env_id: str, episodes: int, seed: int, env_options: dict | None = None) -> list[float]:
    """Returns of ``episodes`` evaluation episodes (TD-MPC2 without exploration noise).

    The episodes run side by side: episode ``i`` starts from
    ``reset(seed=seed + i)`` and the agent acts on every unfinished one in a
    single call, so planning (or the actor) is batched over episodes. The
    agent's acting state (recurrent latents, kept plans) is restored
    afterwards, so training episodes in flight go on undisturbed. ``env_options`` are
    :func:`~worldloom.training.data.make_env` keywords (a suite's settings).
    """
    from worldloom.training.data import make_env

    if episodes <= 0:
        return []
    envs = [make_env(env_id, agent=agent.algo, **(env_options or {})) for _ in range(episodes)]
    _, _, discrete = _spaces(envs[0])
    greedy = agent.algo == "tdmpc2"
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    saved = agent.acting_state()
    agent.reset(episodes)
    first, running = np.ones(episodes, bool), np.ones(episodes, bool)
    returns = np.zeros(episodes)
    try:
        while running.any():
            actions = agent.act(obs, first, greedy=greedy)
            first[:] = False
            for i in np.flatnonzero(running):
                obs[i], reward, terminated, truncated, _ = envs[i].step(env_action(actions[i], envs[i], discrete))
                returns[i] += float(reward)
                running[i] = not (terminated or truncated)
    finally:
        agent.set_acting_state(saved)
        for env in envs:
            env.close()
    return returns.tolist()


def terminates(env_id: str, seed: int, steps: int = 2000, agent: str | None = None,
               env_options: dict | None = None) -> bool:
    """Whether random actions in ``env_id`` reach a termination (not a time limit) within ``steps`` steps.

    DMC tasks are taken as never terminating, as TD-MPC2's reference runs them
    (only their time limit ends an episode), without stepping them.
    """
    from worldloom.envs.suites import is_suite_id, parse_suite_id
    from worldloom.training.data import make_env

    if is_suite_id(env_id) and parse_suite_id(env_id)[0] == "dmc":
        return False

    env = make_env(env_id, agent=agent, **(env_options or {}))
    try:
        env.reset(seed=seed)
        env.action_space.seed(seed)
        for _ in range(steps):
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated:
                return True
            if truncated:
                env.reset()
    finally:
        env.close()
    return False


def run_agent(config: AgentRunConfig, *, progress: bool = True, resume: bool = False, **model_overrides) -> dict:
    """Train an agent online; returns the evaluation history and where files went.

    Args:
        config: The run.
        progress: Show a tqdm progress bar.
        resume: Continue from ``out_dir/checkpoints`` when it exists (episodes in
            flight are restarted; replay, params, optimiser and counters resume).
        **model_overrides: World-model config overrides (e.g. ``deter=256``).

    Returns:
        ``{"eval": [(env_step, mean_return), ...], "final_eval_return", "env_steps", "params_sha256", "wall_time",
        "out_dir", "curves"}``.
    """
    from tensorboardX import SummaryWriter

    from worldloom.core.devices import resolve_device
    from worldloom.core.progress import progress as progress_display

    device = resolve_device(config.device)  # an absent device fails before any environment is made
    share = ProcessShare(device, config.resolved("batch_size"))
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    probe = config.make_env()  # a bad id or setting fails here, with its message
    try:
        obs_shape, action_dim, discrete = _spaces(probe)
        episode_length = probe.spec.max_episode_steps if probe.spec is not None else None
    finally:
        probe.close()
    run_overrides = {key: value for key, value in model_overrides.items() if key != "episodic"}
    if config.algo == "tdmpc2":
        episodic = config.episodic
        if episodic is None:
            episodic = terminates(config.env, config.seed, agent=config.algo, env_options=config.env_options)
        config = config.replace(episodic=bool(model_overrides.setdefault("episodic", bool(episodic))))
    agent = make_agent(config, obs_shape, action_dim, discrete, episode_length, **model_overrides)
    if share.primary:
        write_run(out / "config.yaml", config, run_overrides)
    batch_size, seq_len = config.resolved("batch_size"), config.resolved("sequence_length")
    settings = OptimizerSettings(learning_rate=config.resolved("learning_rate"), grad_clip=config.resolved("grad_clip"),
                                 warmup_steps=config.resolved("warmup_steps"))
    guard = NonFiniteGuard(config.on_nonfinite, config.max_consecutive_skips, "AgentRunConfig.on_nonfinite",
                           label=lambda update_number: f"update {update_number}")
    update = agent.make_update(settings, skip_nonfinite=guard.active)
    step_fn = share.jit(update.step)
    writer = SummaryWriter(str(out / "logs")) if share.primary else NullWriter()
    loop = LoopState()

    def on_episode(episode_return: float, length: int) -> None:
        loop.train_returns.append((loop.env_step, episode_return))
        writer.add_scalar("episode/return", episode_return, loop.env_step)
        writer.add_scalar("episode/length", length, loop.env_step)

    collector_type = StreamCollector if config.algo == "dreamerv3" else EpisodeCollector
    envs = make_vector_env(config.env, config.algo, config.num_envs, collector_type.AUTORESET,
                           config.env_options)
    capacity = min(config.buffer_capacity, config.total_steps + 1000)
    collector = collector_type(envs, agent, capacity, discrete, config.seed + _PROCESS_SEEDS * share.index,
                               on_episode)
    train_state = share.replicate(update.init(agent.params))
    # Process 0's checkpoint holds the run; each other process keeps its own replay and counters beside it.
    checkpoint_dir = out / ("checkpoints" if share.primary else f"checkpoints.process{share.index}")
    loop.processes = share.count
    if share.everyone(resume and checkpoint_dir.exists()):
        # Process 0 restores the train state and sends it; each process restores its own replay.
        saved, restored = load_checkpoint(checkpoint_dir, train_state if share.primary else None, agent, collector)
        if restored.processes != share.count:
            raise ConfigError(f"{checkpoint_dir} is a checkpoint of a run of {restored.processes} processes; "
                              f"expected {share.count}: an online run resumes on as many processes as it ran "
                              "(each holds its own replay).")
        vars(loop).update(vars(restored))
        train_state = share.replicate(distributed.broadcast_arrays(saved, train_state))
        agent.load_params(share.local(update.params(train_state)))
        print(f"Resuming {out} from environment step {loop.env_step} ({loop.updates} updates done)")
    per_step = (config.train_ratio / (batch_size * seq_len) if config.algo == "dreamerv3"
                else config.updates_per_step)
    seed_steps = seed_steps_for(config, episode_length)
    first_seed = config.seed + _PROCESS_SEEDS * share.index + loop.env_step
    rng = np.random.default_rng(first_seed)
    collector.reset([first_seed + 1000 * i for i in range(envs.num_envs)], agent)
    bar = progress_display(config.total_steps, initial=loop.env_step, disable=not (progress and share.primary),
                           desc=f"{config.algo} {config.env}")
    compiled = False
    started, metrics = time.time(), {}
    next_eval = (loop.env_step // config.eval_every + 1) * config.eval_every
    every = config.checkpoint_every
    next_ckpt = (loop.env_step // every + 1) * every if every else None
    try:
        while loop.env_step < config.total_steps:
            random_phase = loop.env_step < seed_steps
            stepped = collector.step(agent, agent.random_actions(rng, envs.num_envs) if random_phase else None)
            stepped, ready = share.agree(stepped, collector.ready(seq_len))  # summed over processes
            loop.env_step += stepped
            bar.update(stepped)
            if loop.env_step >= seed_steps and ready:
                if not loop.pretrained and config.algo == "tdmpc2":
                    loop.updates_owed += seed_steps  # the reference's pretraining burst, in place of this step's
                else:
                    loop.updates_owed += per_step * stepped
                loop.pretrained = True
                first_update, dispatched, placed = loop.updates, [], []
                while loop.updates_owed >= 1.0:
                    batch, where = collector.sample(share.local_batch, seq_len)
                    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), loop.updates)
                    train_state, metrics = step_fn(train_state, share.batch(batch), key)
                    context = {k: metrics.pop(k) for k in [k for k in metrics if k.startswith("context/")]}
                    if context:
                        placed.append((where, {k: share.local_rows(v) for k, v in context.items()}))
                    dispatched.append(metrics)
                    loop.updates += 1
                    loop.updates_owed -= 1.0
                    if loop.updates % config.log_every == 0:
                        for name, value in metrics.items():
                            writer.add_scalar(f"train/{name}", float(value), loop.env_step)
                skipped = guard.skipped
                _check_updates(guard, first_update, dispatched, loop.env_step)
                if guard.skipped != skipped:
                    writer.add_scalar("train/skipped_updates", guard.skipped, loop.env_step)
                for (where, context), metrics_i in zip(placed, dispatched):
                    if not guard.active or float(metrics_i[SKIPPED]) == 0.0:
                        collector.write_back(where, context)
                agent.load_params(share.local(update.params(train_state)))
                if dispatched and not compiled:  # leave the compiling first update out of the rate and ETA
                    compiled = True
                    bar.restart_clock()
            if loop.env_step >= next_eval or loop.env_step >= config.total_steps:
                next_eval += config.eval_every
                if config.eval_episodes:
                    eval_seed = config.seed + 10_000 + loop.env_step
                    returns = evaluate(agent, config.env, config.eval_episodes, seed=eval_seed,
                                       env_options=config.env_options)
                    loop.eval_returns.append((loop.env_step, float(np.mean(returns)), float(np.std(returns))))
                    writer.add_scalar("eval/return", float(np.mean(returns)), loop.env_step)
                if share.primary:
                    plot_curves(loop, out / "learning_curve.png", f"{config.algo} on {config.env}")
                if reached(loop.eval_returns, config.stop_return):
                    break
            if next_ckpt is not None and loop.env_step >= next_ckpt:
                next_ckpt += config.checkpoint_every
                save_checkpoint(checkpoint_dir, share.primary_state(train_state), collector, loop, agent)
                share.barrier(f"worldloom-agent-checkpoint-{loop.env_step}")
            last = loop.eval_returns[-1][1] if loop.eval_returns else float("nan")
            recent = [r for _, r in loop.train_returns[-10:]]
            bar.set_postfix(ret=f"{np.mean(recent):.1f}" if recent else "-", eval=f"{last:.1f}", upd=loop.updates,
                            loss=f"{float(metrics['loss']):.3f}" if metrics else "-")
    except KeyboardInterrupt:
        save_checkpoint(checkpoint_dir, share.primary_state(train_state), collector, loop, agent)
        raise
    finally:
        bar.close()
        writer.close()
        envs.close()
    loop.wall_time += time.time() - started
    save_checkpoint(checkpoint_dir, share.primary_state(train_state), collector, loop, agent)
    share.barrier("worldloom-agent-final-checkpoint")
    curves = out / "learning_curve.png"
    if share.primary:
        agent.save(out / "agent")
        curves = plot_curves(loop, curves, f"{config.algo} on {config.env}")
    result = {
        "eval": [(s, r) for s, r, _ in loop.eval_returns],
        "final_eval_return": loop.eval_returns[-1][1] if loop.eval_returns else None,
        "train_returns": loop.train_returns,
        "updates": loop.updates,
        "env_steps": loop.env_step,
        "params_sha256": params_sha256(jax.device_get(agent.params)),
        "skipped_updates": guard.skipped,
        "wall_time": loop.wall_time,
        "out_dir": str(out),
        "curves": str(curves),
    }
    if share.primary:
        (out / "summary.json").write_text(json.dumps(result, indent=2))
    return result


def _check_updates(guard: NonFiniteGuard, first_update: int, dispatched: list[dict], env_step: int) -> None:
    """One look at the ``"skipped"`` flags of this environment step's updates; TrainingError when the guard says stop.

    Raised before the agent takes the new params and before any checkpoint,
    so the checkpoint on disk and the agent keep the last finite state.
    """
    if not guard.active or not dispatched:
        return
    flags = jax.device_get([metrics[SKIPPED] for metrics in dispatched])
    _, problem = guard.inspect(first_update, flags,
                               lambda index: {k: float(v) for k, v in jax.device_get(dispatched[index]).items()})
    if problem is not None:
        raise TrainingError(f"{problem} The agent keeps its params from before the updates of environment step "
                            f"{env_step}.")
