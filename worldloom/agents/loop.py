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

import json
import time
from pathlib import Path

import jax
import numpy as np

from worldloom import distributed
from worldloom.agents._run_io import (
    LoopState,
    has_checkpoint,
    load_checkpoint,
    plot_curves,
    read_loop_state,
    save_checkpoint,
)
from worldloom.agents.collect import EpisodeCollector, StreamCollector, env_action, make_vector_env
from worldloom.agents.config import DEFAULTS, AgentRunConfig, seed_steps_for
from worldloom.agents.dreamer import DreamerAgent
from worldloom.agents.replay_choice import replay_options
from worldloom.agents.run_file import settings_text, write_run
from worldloom.agents.tdmpc2 import TDMPC2Agent
from worldloom.core.errors import ConfigError, TrainingError
from worldloom.core.files import atomic_write_text, read_json_object
from worldloom.models.base import OptimizerSettings
from worldloom.models.checkpoint import params_sha256
from worldloom.models.factory import create_world_model, get_config
from worldloom.training.data import env_spaces
from worldloom.training.guard import SKIPPED, NonFiniteGuard, applied_before
from worldloom.training.interrupts import Interrupted, signal_name, stop_requests
from worldloom.training.logs import METRICS_FILE, NullWriter, check_logger, run_sinks
from worldloom.training.parallel import ProcessShare
from worldloom.training.programs import update_program
from worldloom.training.runloop import Checkpointer, Evaluator, Learner, owed_plan
from worldloom.training.videos import evaluation_recorder, log_evaluation_video

__all__ = ["DEFAULTS", "AgentRunConfig", "evaluate", "make_agent", "reached", "run_agent", "seed_steps_for",
           "terminates"]

_PROCESS_SEEDS = 7919  # seed offset of each process's environments, replay and random actions
_BURST = 50  # updates owed at one environment step from which they get a progress display of their own
_CHUNK = 10  # updates per scanned program where an environment step owes that many or more


def reached(eval_returns, stop_return: float | None) -> bool:
    """Whether the latest evaluation ``(step, mean, std)`` reached ``stop_return``."""
    return stop_return is not None and bool(eval_returns) and eval_returns[-1][1] >= stop_return


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


def evaluate(agent, env_id: str, episodes: int, seed: int, env_options: dict | None = None,
             record=None) -> list[float]:
    """Returns of ``episodes`` evaluation episodes (TD-MPC2 without exploration noise).

    The episodes run side by side: episode ``i`` starts from
    ``reset(seed=seed + i)`` and the agent acts on every unfinished one in a
    single call, so planning (or the actor) is batched over episodes. The
    agent's acting state (recurrent latents, kept plans) is restored
    afterwards, so training episodes in flight go on undisturbed. ``env_options`` are
    :func:`~worldloom.envs.make_env` keywords (a suite's settings). With ``record`` (an
    :class:`~worldloom.training.videos.EpisodeRecorder`), episode 0's environment renders ``rgb_array``
    frames and ``record(env, obs, action, reward)`` sees its reset and each of its steps.
    """
    from worldloom.envs import make_env

    if episodes <= 0:
        return []
    envs = [make_env(env_id, agent=agent.algo, **{**(env_options or {}), **(
        {"render_mode": "rgb_array"} if record is not None and i == 0 else {})}) for i in range(episodes)]
    _, _, discrete = env_spaces(envs[0], "evaluate")
    greedy = agent.algo == "tdmpc2"
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    if record is not None:
        record(envs[0], obs[0])
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
                if record is not None and i == 0:
                    record(envs[0], obs[0], actions[0], reward)
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
    from worldloom.envs import make_env
    from worldloom.envs.suites import is_suite_id, parse_suite_id

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


class RunPlan:
    """What a run settled before any environment is stepped: resolved settings, spaces, resume point.

    Built by :func:`plan_run`, which checks every setting first: the run's
    fields, the device, the environment id (made, not stepped), the
    world-model preset and overrides, the replay capacity, and on resume the
    steps already done. Nothing is written before it returns.
    """

    def __init__(self, config, overrides, spaces, episode_length, checkpoint_dir, steps_done):
        self.config, self.overrides = config, overrides
        self.obs_shape, self.action_dim, self.discrete = spaces
        self.episode_length, self.checkpoint_dir, self.steps_done = episode_length, checkpoint_dir, steps_done

    @property
    def resuming(self) -> bool:
        return self.steps_done is not None


def steps_done(checkpoint_dir: Path) -> int:
    """Environment steps an online run's checkpoint has done (its ``loop.json``).

    Raises:
        CheckpointError: no readable counters there.
    """
    return read_loop_state(checkpoint_dir).env_step  # loop.json, checked against the checkpoint's manifest


RUN_FILES = ("config.yaml", "summary.json", METRICS_FILE, "logs", "agent", "learning_curve.png", "videos",
             "checkpoints", "replay")
"""What a run writes in ``out_dir`` (and ``checkpoints.process<N>``, ``replay.process<N>`` of other processes)."""


def run_files_in(out: Path) -> list[str]:
    """The names in ``out`` that a run writes (:data:`RUN_FILES`), sorted; [] for a new or empty directory."""
    if not out.is_dir():
        return []
    return sorted(entry.name for entry in out.iterdir()
                  if entry.name in RUN_FILES or entry.name.split(".process")[0] in ("checkpoints", "replay"))


def plan_run(config: AgentRunConfig, resume: bool, model_overrides: dict, share: ProcessShare) -> RunPlan:
    """Check every setting of ``config`` before any environment is stepped; see :class:`RunPlan`.

    Raises:
        ConfigError: a setting no run can use; CheckpointError: unreadable counters to resume from.
    """
    out = Path(config.out_dir)
    checkpoint_dir = out / ("checkpoints" if share.primary else f"checkpoints.process{share.index}")
    done = None
    if share.everyone(resume and has_checkpoint(checkpoint_dir)):  # a killed write's leftovers cleaned first
        done = steps_done(checkpoint_dir)
        if done > config.total_steps:
            raise ConfigError(f"--resume: {out} has taken {done} environment steps; expected total_steps (--steps) "
                              f"of at least {done} to go on, got {config.total_steps}.")
    if done is None:  # a fresh run writes these names: none of them may be there already (another run's, a user's)
        taken = run_files_in(out) if share.primary else []
        if not share.everyone(not taken):
            held = ", ".join(taken) if share.primary else "files (process 0 found them)"
            raise ConfigError(f"out_dir {str(out)!r} already holds {held}, which a new run writes; expected a "
                              "directory without them (other files are left alone)"
                              + (", or one holding a checkpoint to resume from." if resume else
                                 ", or resume=True (worldloom agent --resume) to go on with the run there."))
    check_logger(config.logger)  # wandb without its package: said before anything runs
    probe = config.make_env()  # a bad id or setting fails here, with its message
    try:
        spaces = env_spaces(probe, "run_agent")
        episode_length = probe.spec.max_episode_steps if probe.spec is not None else None
    finally:
        probe.close()
    overrides = {**config.preset_world_model(), **model_overrides}  # world-model keywords win over presets
    kind = "discrete" if spaces[2] else "continuous"
    model = get_config(config.resolved("model"), obs_shape=spaces[0], action_dim=spaces[1], action_type=kind,
                       **{key: value for key, value in overrides.items() if key != "episodic"})
    if config.algo == "tdmpc2":  # windows of horizon + 1 rows, as the reference samples them
        least = model.horizon + 1
        if config.sequence_length is None:
            config = config.replace(sequence_length=least)
        elif config.sequence_length < least:
            raise ConfigError(f"sequence_length={config.sequence_length}: a TD-MPC2 window trains the model's "
                              f"horizon of {model.horizon} steps, so expected at least horizon + 1 = {least} rows "
                              f"(unset, it is {least}), got {config.sequence_length}.")
    config = config.resolve(episode_length)
    rows = config.capacity() // config.num_envs
    window = config.sequence_length + (1 if config.algo == "dreamerv3" else 0)
    need = window if config.algo == "dreamerv3" else max(window, episode_length or 0)
    if rows < need:
        what = "a window of sequence_length + 1" if config.algo == "dreamerv3" else "a window and a whole episode"
        raise ConfigError(f"buffer_capacity={config.buffer_capacity} holds {rows} steps per environment; expected at "
                          f"least {need} ({what}).")
    if config.algo == "tdmpc2":  # the probe steps an environment: after every other check
        episodic = config.episodic if config.episodic is not None else terminates(
            config.env, config.seed, agent=config.algo, env_options=config.env_options)
        config = config.replace(episodic=bool(overrides.setdefault("episodic", bool(episodic))))
    return RunPlan(config, overrides, spaces, episode_length, checkpoint_dir, done)


class AgentLearner(Learner):
    """The run loop's learner (:class:`~worldloom.training.runloop.Learner`) over an agent's update.

    Updates owed run as K-update programs (``K = 10`` where an environment
    step owes that many or more: TD-MPC2's pretraining burst, high train
    ratios) and one-update programs, on one process or across several with
    each sampling its share of the global batch; the next dispatches' windows are sampled on a
    host thread while the current one runs. DreamerV3's posteriors go back to
    replay after the environment step's last dispatch, and the agent acts
    with the new params.

    Args:
        agent: The agent whose ``make_update`` it runs.
        config: The resolved run.
        share: The process's part of the run (placement across processes).
    """

    def __init__(self, agent, config: AgentRunConfig, share: ProcessShare):
        guard = NonFiniteGuard(config.on_nonfinite, config.max_consecutive_skips, "AgentRunConfig.on_nonfinite",
                               label=lambda update_number: f"update {update_number}")
        super().__init__(self._dispatch, guard, fetch=lambda tree: jax.device_get(share.local(tree)))
        self.agent, self.config, self.share = agent, config, share
        settings = OptimizerSettings(learning_rate=config.learning_rate, grad_clip=config.grad_clip,
                                     warmup_steps=config.warmup_steps)
        self.update = agent.make_update(settings, skip_nonfinite=guard.active)
        self.schedule = settings.schedule()
        self.step_fn = share.jit(self.update.step)
        self.chunk = update_program(agent.make_update(settings, skip_nonfinite=False), _CHUNK, config.on_nonfinite,
                                    None if share.place is None else share.place.mesh)
        self.state = share.replicate(self.update.init(agent.params))
        self.metrics: dict = {}
        self.compiled: set = set()
        self._hooks = None

    def restore(self, saved) -> None:
        restored = distributed.broadcast_arrays(saved, self.state)
        if self.share.place is None:
            # Placed where the fresh state lives, so the resumed run calls the update program a fresh run compiled
            # (and finds its compilation-cache entry) instead of compiling one for uncommitted arrays.
            restored = jax.tree_util.tree_map(lambda new, old: jax.device_put(new, old.sharding), restored, self.state)
        self.state = self.share.replicate(restored)
        self.agent.load_params(self.share.local(self.update.params(self.state)))

    def _sample(self, collector, start: int, count: int):
        samples = [collector.sample(self.share.local_batch, self.config.sequence_length) for _ in range(count)]
        wheres = [where for _, where in samples]
        if count == 1:
            return self.share.batch(samples[0][0]), wheres
        stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *[batch for batch, _ in samples])
        return self.share.chunk(stacked), wheres

    def _dispatch(self, state, batches, start: int, count: int):
        note, inner = self._hooks
        compiling = count not in self.compiled
        if compiling:
            note(f"compiling the update program ({count} x batch {self.config.batch_size} x "
                 f"{self.config.sequence_length}) ...")
            began = time.perf_counter()
        if count == 1:
            key = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), start)
            result = self.step_fn(state, batches, key)
        else:
            counter = self.share.counter
            result = self.chunk(state, batches, counter(jax.random.PRNGKey(self.config.seed)),
                                counter(np.int32(start)), counter(np.int32(count)))
        if compiling:
            jax.block_until_ready(result[1]["loss"])
            self.compiled.add(count)
            note(f"update program compiled in {time.perf_counter() - began:.1f} s")
            if inner is not None:
                inner.restart_clock()
        if inner is not None:
            inner.update(count)
        return result

    def run_owed(self, collector, loop: LoopState, writer, request, note) -> int:
        """The updates ``loop.updates_owed`` holds (whole ones), fewer once a stop is requested; returns how many ran.

        Raises:
            TrainingError: the guard stops the run; the agent keeps its params from before these updates.
        """
        config, share = self.config, self.share
        plan = owed_plan(loop.updates, int(loop.updates_owed), _CHUNK if self.chunk is not None else None)
        inner = None
        if plan and loop.updates_owed >= _BURST:
            from worldloom.core.progress import progress

            owed = int(loop.updates_owed)
            inner = progress(owed, desc=f"{config.algo} {config.env}: updates at step {loop.env_step}", unit="update",
                             measured=False, disable=not note.enabled)
            inner.note(f"{owed} updates before the next environment step")
        self._hooks = (note, inner)
        placed, skipped = [], loop.skipped_updates

        def report(start, count, metrics, outputs, wheres):
            dropped = (np.asarray(metrics[SKIPPED])[:count] != 0.0) if self.guard.active else np.zeros(count, bool)
            logged = [index for index in range(count) if (start + index + 1) % config.log_every == 0]
            # The rate each ran with: the schedule at the optimiser's count, which a dropped update does not advance.
            counts = applied_before(start, dropped, loop.skipped_updates)[logged]
            rates = np.broadcast_to(np.asarray(self.schedule(counts), np.float64), counts.shape) if logged else []
            for index, rate in zip(logged, rates):
                for name, values in metrics.items():
                    writer.add_scalar(f"train/{name}", float(values[index]), loop.env_step)
                writer.add_scalar("train/updates", start + index + 1, loop.env_step)  # for curves by update
                writer.add_scalar("train/lr", float(rate), loop.env_step)
            loop.skipped_updates += int(dropped.sum())
            for index in range(count):
                if outputs and not dropped[index]:
                    placed.append((wheres[index], index, len(wheres) > 1, outputs[0]))
            self.metrics = {name: values[count - 1] for name, values in metrics.items()}

        def planned():  # read ahead on the prefetch thread; none after a stop request
            for item in plan:
                if request.stop:
                    return
                yield item

        self.step = loop.updates
        try:
            ran = self.run(planned(), lambda start, count: self._sample(collector, start, count), report,
                           prefetch=2 if len(plan) > 1 else 0)
        except TrainingError as err:
            raise TrainingError(f"{err} The agent keeps its params from before the updates of environment step "
                                f"{loop.env_step}.") from None
        finally:
            if inner is not None:
                inner.close()
        loop.updates += ran
        loop.updates_owed -= ran
        if loop.skipped_updates != skipped:
            writer.add_scalar("train/skipped_updates", loop.skipped_updates, loop.env_step)
        fetched = {}  # each dispatch's posteriors come to the host once
        for where, index, stacked, posteriors in placed:  # DreamerV3: the trained rows' posteriors go back to replay
            if id(posteriors) not in fetched:
                fetched[id(posteriors)] = jax.tree_util.tree_map(
                    lambda x, axis=int(stacked): share.local_rows(x, axis), posteriors)
            rows = fetched[id(posteriors)]
            collector.write_back(where, rows if not stacked else jax.tree_util.tree_map(
                lambda x, i=index: x[i], rows))
        self.agent.load_params(share.local(self.update.params(self.state)))
        return ran


class _Notes:
    """One-line notes of the run's phases on the primary process's progress display."""

    def __init__(self, bar, enabled: bool):
        self.bar, self.enabled = bar, enabled

    def __call__(self, text: str) -> None:
        if self.enabled:
            self.bar.note(text)


def _evaluate(agent, config: AgentRunConfig, loop: LoopState, writer, note) -> None:
    """One evaluation of ``config.eval_episodes`` episodes, logged and noted."""
    count = config.eval_episodes
    note(f"evaluating {count} episode{'s' if count != 1 else ''} at step {loop.env_step} ...")
    began = time.perf_counter()
    recorder = evaluation_recorder(config) if distributed.is_primary() else None
    returns = evaluate(agent, config.env, config.eval_episodes, seed=config.seed + 10_000 + loop.env_step,
                       env_options=config.env_options, record=recorder)
    if recorder is not None:
        log_evaluation_video(writer, recorder, config.out_dir, loop.env_step, agent)
    mean, std = float(np.mean(returns)), float(np.std(returns))
    loop.eval_returns.append((loop.env_step, mean, std))
    writer.add_scalar("eval/return", mean, loop.env_step)
    writer.add_scalar("eval/return_std", std, loop.env_step)
    note(f"evaluation at step {loop.env_step}: return {mean:.1f} +- {std:.1f} ({time.perf_counter() - began:.0f} s)")


def run_agent(config: AgentRunConfig, *, progress: bool = True, resume: bool = False, **model_overrides) -> dict:
    """Train an agent online; returns the evaluation history and where files went.

    Every setting is checked before any environment is stepped (:func:`plan_run`),
    and ``out_dir/config.yaml`` then holds the run's resolved settings (printed
    at start). Ctrl-C or SIGTERM saves a checkpoint and raises
    :class:`~worldloom.training.interrupts.Interrupted`, whose message says how to resume.

    Args:
        config: The run.
        progress: Show progress (a tqdm bar on a terminal, periodic lines elsewhere) and phase notes.
        resume: Continue from ``out_dir/checkpoints`` when it exists (episodes in flight are restarted;
            replay, params, optimiser and counters resume; replay grows to the new ``total_steps``).
            A run that does not resume refuses an ``out_dir`` holding any name a run writes
            (:data:`RUN_FILES`): nothing of an earlier run or of yours is replaced.
        **model_overrides: World-model config overrides (e.g. ``deter=256``).

    Returns:
        ``{"eval": [(env_step, mean_return), ...], "final_eval_return", "env_steps", "params_sha256", "wall_time",
        "out_dir", "curves"}``.
    """
    from worldloom.core.devices import resolve_device
    from worldloom.core.progress import progress as progress_display

    device = resolve_device(config.device)  # an absent device fails before any environment is made
    share = ProcessShare(device, config.resolved("batch_size"))
    plan = plan_run(config, resume, model_overrides, share)
    config, out = plan.config, Path(config.out_dir)
    agent = make_agent(config, plan.obs_shape, plan.action_dim, plan.discrete, plan.episode_length, **plan.overrides)
    learner = AgentLearner(agent, config, share)
    loop, rng_seed = LoopState(processes=share.count), config.seed + _PROCESS_SEEDS * share.index
    kind = StreamCollector if config.algo == "dreamerv3" else EpisodeCollector
    replay_kw = replay_options(config, agent, plan.obs_shape, out, share.index,
                               plan.checkpoint_dir if plan.resuming else None, announce=share.primary)
    collector = kind(make_vector_env(config.env, config.algo, config.num_envs, kind.AUTORESET, config.env_options),
                     agent, replay_kw.pop("capacity"), plan.discrete, rng_seed,
                     lambda ret, length: on_episode(ret, length), **replay_kw)
    # What a checkpoint holds: process 0's train state, each process's replay, the loop's counters.
    cp = Checkpointer(lambda learner, replay, loop, agent: save_checkpoint(
        plan.checkpoint_dir, share.primary_state(learner.state), replay, loop, agent), everyone_writes=True)
    cp.learner, cp.replay, cp.loop, cp.agent = learner, collector, loop, agent
    try:
        if plan.resuming:
            _restore(plan, learner, collector, loop, share, config)
            finished = _finished_result(out, loop, config, share)
            if finished is not None:  # its files stay as they are
                print(f"{out} has done its {config.total_steps} environment steps: nothing to run; raise "
                      "total_steps (--steps) to go on.", flush=True)
                return finished
        if share.primary:
            out.mkdir(parents=True, exist_ok=True)
            overrides = {k: v for k, v in plan.overrides.items() if k != "episodic"}  # episodic: a run field
            write_run(out / "config.yaml", config, overrides)
            print(settings_text(config, overrides, out / "config.yaml"), flush=True)
        writer = run_sinks(out, config.logger, config.to_dict()) if share.primary else NullWriter()

        ended: list[tuple[float, int]] = []

        def on_episode(episode_return: float, length: int) -> None:
            ended.append((episode_return, length))  # logged once the step that ended it is counted

        def log_episodes() -> None:
            for episode_return, length in ended:
                loop.train_returns.append((loop.env_step, episode_return))
                writer.add_scalar("episode/return", episode_return, loop.env_step)
                writer.add_scalar("episode/length", length, loop.env_step)
            ended.clear()

        started = time.time()
        first_seed = rng_seed + loop.env_step
        collector.reset([first_seed + 1000 * i for i in range(collector.envs.num_envs)], agent)
        bar = progress_display(config.total_steps, initial=loop.env_step, desc=f"{config.algo} {config.env}",
                               disable=not (progress and share.primary), measured=False)
        note = _Notes(bar, progress and share.primary)
        evaluator = Evaluator(config.eval_every, lambda step: _evaluation(agent, config, loop, writer, note, share,
                                                                          out), loop.env_step)
        try:
            with stop_requests("saving a checkpoint and stopping") as request:
                _drive(config, agent, collector, learner, evaluator, cp, loop, share, writer, bar, note, request,
                       np.random.default_rng(first_seed), log_episodes)
        finally:
            bar.close()
            writer.close()
        loop.wall_time += time.time() - started
        cp.save("final")
        if request.stop:
            raise Interrupted(request.signal, f"{signal_name(request.signal)}: saved {out} at environment step "
                                              f"{loop.env_step} of {config.total_steps}; resume with: worldloom agent "
                                              f"--resume {out}")
    finally:
        collector.envs.close()
    return _finish(config, agent, learner, loop, share, out)


def _finished_result(out: Path, loop: LoopState, config: AgentRunConfig, share) -> dict | None:
    """The saved result of a run resumed at (or past) its ``total_steps``, from its ``summary.json``; None to
    run on (more steps to go, no summary, or several processes, which all take the same path)."""
    if share.count > 1 or loop.env_step < config.total_steps:
        return None
    result = read_json_object(out / "summary.json")
    return result if result is not None and result.get("env_steps") == loop.env_step else None


def _restore(plan: RunPlan, learner: AgentLearner, collector, loop: LoopState, share, config: AgentRunConfig) -> None:
    """Process 0 restores the train state and sends it; each process restores its own replay (grown to the
    run's capacity by the collector)."""
    saved, restored = load_checkpoint(plan.checkpoint_dir, learner.state if share.primary else None, learner.agent,
                                      collector)
    if restored.processes != share.count:
        raise ConfigError(f"{plan.checkpoint_dir} is a checkpoint of a run of {restored.processes} processes; "
                          f"expected {share.count}: an online run resumes on as many processes as it ran "
                          "(each holds its own replay).")
    vars(loop).update(vars(restored))
    learner.restore(saved)
    print(f"Resuming {config.out_dir} from environment step {loop.env_step} ({loop.updates} updates done)")


def _drive(config, agent, collector, learner, evaluator, cp, loop, share, writer, bar, note, request, rng,
           log_episodes):
    """Step the environments into replay until ``total_steps``, a reached target return or a stop request.

    The rate (and ETA) is measured from the end of the first environment step
    after the last compilation and after a burst of updates (TD-MPC2's pretraining).
    """
    seed_steps, per_step = config.seed_steps, config.updates_per_env_step()
    every = config.checkpoint_every
    next_ckpt = (loop.env_step // every + 1) * every if every else None
    if loop.env_step < seed_steps:
        note(f"{seed_steps - loop.env_step} seed steps of random actions before learning")
    acted, measuring = False, False
    while loop.env_step < config.total_steps and not request.stop:
        random_phase = loop.env_step < seed_steps
        compiles = not random_phase and not acted
        acted = acted or not random_phase
        stepped = collector.step(agent, agent.random_actions(rng, collector.envs.num_envs) if random_phase else None)
        stepped, ready = share.agree(stepped, collector.ready(share.local_batch, config.sequence_length))
        loop.env_step += stepped
        log_episodes()
        bar.update(stepped)
        ran = 0
        if random_phase and loop.env_step >= seed_steps:
            note("seed steps done; learning starts")
        if loop.env_step >= seed_steps and ready:
            if not loop.pretrained and config.algo == "tdmpc2":
                loop.updates_owed += seed_steps  # the reference's pretraining burst, in place of this step's
            else:
                loop.updates_owed += per_step * stepped
            loop.pretrained = True
            compiled_before = len(learner.compiled)
            ran = learner.run_owed(collector, loop, writer, request, note)
            compiles = compiles or len(learner.compiled) != compiled_before
        if compiles or ran >= _BURST or (random_phase and loop.env_step >= seed_steps):
            measuring = False
        elif not measuring and not random_phase and learner.compiled:
            bar.restart_clock()  # leave compilation and bursts out of the rate and the ETA
            measuring = True
        if evaluator(loop.env_step, final=loop.env_step >= config.total_steps):
            break
        if next_ckpt is not None and loop.env_step >= next_ckpt:
            next_ckpt += config.checkpoint_every
            if loop.env_step < config.total_steps:  # at the end, the final checkpoint follows at once
                cp.save(loop.env_step)
        last = f"{loop.eval_returns[-1][1]:.1f}" if loop.eval_returns else "-"
        recent = [r for _, r in loop.train_returns[-10:]]
        bar.set_postfix(ret=f"{np.mean(recent):.1f}" if recent else "-", eval=last, upd=loop.updates,
                        loss=f"{float(learner.metrics['loss']):.3f}" if learner.metrics else "-")


def _evaluation(agent, config: AgentRunConfig, loop: LoopState, writer, note, share, out) -> bool:
    """The evaluator's hook: an evaluation (when the run has evaluation episodes) and the learning curves;
    returns whether the target return is reached."""
    if config.eval_episodes:
        _evaluate(agent, config, loop, writer, note)
    if share.primary:
        plot_curves(loop, out / "learning_curve.png", f"{config.algo} on {config.env}")
    return reached(loop.eval_returns, config.stop_return)


def _finish(config, agent, learner, loop, share, out) -> dict:
    """The saved agent, the curves and ``summary.json`` (process 0); the run's result."""
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
        "skipped_updates": loop.skipped_updates,
        "wall_time": loop.wall_time,
        "out_dir": str(out),
        "curves": str(curves),
    }
    if share.primary:
        atomic_write_text(out / "summary.json", json.dumps(result, indent=2))
    return result
