"""The online loop: a few hundred steps of each agent, checkpoints, resume, reload."""

import json

import numpy as np
import pytest
from _agents import DREAMER_TINY, TDMPC_TINY

from worldloom import create_world_model
from worldloom.agents import AgentRunConfig, DreamerAgent, TDMPC2Agent, evaluate, run_agent
from worldloom.agents.loop import seed_steps_for
from worldloom.core.errors import CheckpointError, ConfigError


def _dreamer_config(tmp_path, total_steps):
    return AgentRunConfig(env="CartPole-v1", algo="dreamerv3", total_steps=total_steps, seed_steps=60,
                          train_ratio=8, batch_size=2, sequence_length=8, eval_every=100, eval_episodes=1,
                          checkpoint_every=100, out_dir=str(tmp_path / "run"), seed=3)


@pytest.fixture
def every_program_cached():
    """The session's compilation cache keeps every program, however fast it compiled."""
    import jax

    minimum = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield
    jax.config.update("jax_persistent_cache_min_compile_time_secs", minimum)


@pytest.mark.slow(reason="three DreamerV3 runs (100 steps, resumed twice)")
def test_dreamer_loop_resume_and_reload(tmp_path, capsys, caplog, every_program_cached, monkeypatch):
    import logging

    from worldloom.agents import loop as online
    from worldloom.cli import main

    saves, save = [], online.save_checkpoint
    monkeypatch.setattr(online, "save_checkpoint", lambda *args: saves.append(args[3].env_step) or save(*args))
    sets = [arg for key, value in DREAMER_TINY.items() for arg in ("--set", f"{key}={value}")]
    status = main(["agent", "--env", "CartPole-v1", "--algo", "dreamerv3", "--steps", "100", "--seed-steps", "60",
                   "--train-ratio", "8", "--batch-size", "2", "--seq-len", "8", "--eval-every", "100",
                   "--eval-episodes", "1", "--checkpoint-every", "100", "--out", str(tmp_path / "run"),
                   "--seed", "3", "--no-progress", *sets])
    out = capsys.readouterr().out
    assert status == 0 and "final evaluation return" in out and "after 100 steps and 20 updates" in out
    assert saves == [100]  # checkpoint_every=100 and the end coincide: one checkpoint, written once
    first = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert first["updates"] == int((100 - 60) * 8 / 16)
    assert [step for step, _ in first["eval"]] == [100]
    run = tmp_path / "run"
    for name in ("learning_curve.png", "summary.json", "config.yaml", "agent", "checkpoints", "logs"):
        assert (run / name).exists(), name
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "logs").iterdir())

    # The resumed run's restored train state is placed as a fresh one: it runs the update program the fresh run
    # compiled (in this process the same jitted function and executable), neither compiling a second one nor
    # loading one from the compilation cache.
    import jax

    with caplog.at_level(logging.DEBUG, logger="jax._src.compiler"):
        resumed = run_agent(_dreamer_config(tmp_path, 200), progress=False, resume=True, **DREAMER_TINY)
        jax.jit(lambda x: x * 3 + 1)(np.float32(resumed["updates"]))  # a program of its own: the log is captured
    assert "get_compile_options" in caplog.text
    assert "'jit_guarded'" not in caplog.text, caplog.text
    assert resumed["updates"] == int((200 - 60) * 8 / 16)
    assert [step for step, _ in resumed["eval"]] == [100, 200]
    assert json.loads((run / "summary.json").read_text())["updates"] == resumed["updates"]
    # A fresh run into it is refused before anything is written: it would replace this run's files.
    summary = (run / "summary.json").read_text()
    with pytest.raises(ConfigError, match=r"already holds agent, checkpoints, config.yaml, .*resume=True"):
        run_agent(_dreamer_config(tmp_path, 200), progress=False, **DREAMER_TINY)
    assert (run / "summary.json").read_text() == summary
    # Resumed from the command line with a target return that its next evaluation reaches: it stops there, and
    # says so.
    assert main(["agent", "--resume", str(run), "--steps", "500", "--stop-return", "-1000", "--no-progress"]) == 0
    assert "after 300 of 500 steps (stopped at the target return -1000)" in capsys.readouterr().out
    summary = (run / "summary.json").read_text()
    saves.clear()
    assert main(["agent", "--resume", str(run), "--steps", "300", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{run} has done its 300 environment steps: nothing to run" in out
    assert "final evaluation return" in out and "after 300 steps" in out  # its saved result
    assert saves == [] and (run / "summary.json").read_text() == summary  # a finished run's files stay

    agent = DreamerAgent.load(run / "agent")
    again = DreamerAgent.load(run / "agent")
    obs = np.random.default_rng(0).normal(size=(5, 2, 4)).astype(np.float32)
    agent.reset(2), again.reset(2)
    for t in range(5):
        key = jax.random.PRNGKey(t)
        first = np.full(2, t == 0)
        np.testing.assert_array_equal(agent.act(obs[t], first, key=key), again.act(obs[t], first, key=key))


def test_a_new_run_refuses_a_directory_holding_what_it_writes(tmp_path):
    """The user's files under the names a run writes (checkpoints/, agent/, config.yaml, ...) are refused, not
    replaced, before any environment is made."""
    out = tmp_path / "mine"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "thesis.tex").write_text("my thesis")
    (out / "config.yaml").write_text("mine")
    config = AgentRunConfig(env="CartPole-v1", algo="dreamerv3", total_steps=40, out_dir=str(out))
    with pytest.raises(ConfigError, match=r"'.*mine' already holds checkpoints, config.yaml, which a new "
                                          r"run writes; expected a directory without them"):
        run_agent(config, progress=False)
    with pytest.raises(CheckpointError, match=r"checkpoints' has no manifest.json: expected an agent checkpoint"):
        run_agent(config, progress=False, resume=True)  # not a checkpoint to go on from
    (out / "checkpoints" / "thesis.tex").rename(out / "thesis.tex")
    (out / "checkpoints").rmdir()
    with pytest.raises(ConfigError, match=r"already holds config.yaml, .*, or one holding a checkpoint to resume"):
        run_agent(config, progress=False, resume=True)  # no checkpoint there to go on from
    assert (out / "thesis.tex").read_text() == "my thesis" and (out / "config.yaml").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "thesis.tex"]  # nothing written, nothing gone


@pytest.mark.slow(reason="a TD-MPC2 run on Pendulum: its update and two MPPI plans compile")
def test_tdmpc2_loop_on_pendulum(tmp_path):
    config = AgentRunConfig(env="Pendulum-v1", algo="tdmpc2", total_steps=210, seed_steps=200, batch_size=8,
                            eval_every=210, eval_episodes=1, checkpoint_every=0, out_dir=str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.md").write_text("mine")  # a file of the user's beside the run's: kept
    result = run_agent(config, progress=False, **TDMPC_TINY)
    assert (tmp_path / "run" / "notes.md").read_text() == "mine"
    assert result["updates"] == 200 + 10  # pretraining burst of seed_steps, then one per step
    assert result["final_eval_return"] is not None and np.isfinite(result["final_eval_return"])
    # The first 200-step episode is logged at the step that ended it, 200, as its length says.
    assert [step for step, _ in result["train_returns"]] == [200]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(row["step"], row["episode/length"]) for row in rows if "episode/length" in row] == [(200, 200)]
    agent = TDMPC2Agent.load(tmp_path / "run" / "agent")
    # The discount heuristic sees Pendulum's 200-step time limit, as the reference's does.
    assert agent.world_model.config.episode_length == 200
    assert agent.world_model.config.gamma == pytest.approx(0.975)
    obs = np.zeros((1, 3), np.float32)
    import jax

    a = agent.act(obs, np.array([True]), greedy=True, key=jax.random.PRNGKey(0))
    b = TDMPC2Agent.load(tmp_path / "run" / "agent").act(obs, np.array([True]), greedy=True, key=jax.random.PRNGKey(0))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (1, 1) and np.all(np.abs(a) <= 1)


@pytest.mark.parametrize("env_id, obs_shape, action_dim, kind", [("CartPole-v1", (4,), 2, "discrete"),
                                                                  ("Pendulum-v1", (3,), 1, "continuous")])
@pytest.mark.slow(reason="compiles a TD-MPC2 model and its policy for one and for three episodes")
def test_side_by_side_evaluation_matches_one_episode_at_a_time(env_id, obs_shape, action_dim, kind):
    model = create_world_model("tdmpc2:1m", obs_shape=obs_shape, action_dim=action_dim, action_type=kind,
                               **TDMPC_TINY)
    agent = TDMPC2Agent(model, use_policy=True)  # greedy policy prior: deterministic
    together = evaluate(agent, env_id, 3, seed=5)
    alone = [evaluate(agent, env_id, 1, seed=5 + i)[0] for i in range(3)]
    np.testing.assert_allclose(together, alone, rtol=1e-5)  # CartPole: episodes of different lengths
    assert len(set(np.round(together, 3))) == 3
    assert evaluate(agent, env_id, 0, seed=5) == []


def test_tdmpc2_seed_steps_follow_the_episode_length():
    config = AgentRunConfig(env="Pendulum-v1", algo="tdmpc2")
    assert seed_steps_for(config, 200) == 1000
    assert seed_steps_for(config, 1000) == 5000
    assert seed_steps_for(config, None) == 1000
    assert seed_steps_for(config.replace(seed_steps=300), 1000) == 300
    assert seed_steps_for(AgentRunConfig(algo="dreamerv3"), 1000) == 0  # acts with its policy from step 0


def test_environments_of_other_spaces_are_config_errors(tmp_path):
    """A MultiDiscrete action space or a Dict observation space is refused by name, before anything runs."""
    import gymnasium as gym

    class Odd(gym.Env):
        def __init__(self, action_space, observation_space):
            self.action_space, self.observation_space = action_space, observation_space

    box, discrete = gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(2)
    cases = {"MultiDiscrete-v0": (gym.spaces.MultiDiscrete([2, 3]), box, "a Discrete or Box action space"),
             "DictObs-v0": (discrete, gym.spaces.Dict({"x": box}), "a Box observation space")}
    for name, (action_space, observation_space, expected) in cases.items():
        env_id = f"worldloom-tests/{name}"
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=Odd, kwargs=dict(action_space=action_space,
                                                              observation_space=observation_space))
        config = AgentRunConfig(env=env_id, total_steps=10, out_dir=str(tmp_path / name))
        with pytest.raises(ConfigError, match=rf"run_agent \({env_id}\): expected {expected}"):
            run_agent(config, progress=False)
        assert not (tmp_path / name).exists()


def test_bad_run_config():
    with pytest.raises(ConfigError, match="algo must be one of"):
        AgentRunConfig(algo="ppo")
    with pytest.raises(ConfigError, match="total_steps"):
        AgentRunConfig(total_steps=0)


@pytest.mark.slow(reason="starts four environment subprocesses and compiles a DreamerV3 policy step")
def test_environments_in_subprocesses_collect_what_stepping_them_in_turn_collects():
    """num_envs > 1 steps the environments in subprocesses (Gymnasium's AsyncVectorEnv): same rows, same episodes."""
    import gymnasium as gym

    from worldloom.agents.collect import EpisodeCollector, StreamCollector, make_vector_env

    wm = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, action_type="discrete", **DREAMER_TINY)
    tdmpc = TDMPC2Agent(create_world_model("tdmpc2:1m", obs_shape=(4,), action_dim=2, action_type="discrete",
                                           episodic=True, **TDMPC_TINY))  # CartPole terminates
    for kind, agent in ((StreamCollector, DreamerAgent(wm, seed=0)), (EpisodeCollector, tdmpc)):
        collected = []
        for envs in (make_vector_env("CartPole-v1", agent.algo, 2, kind.AUTORESET),
                     [gym.make("CartPole-v1") for _ in range(2)]):
            assert isinstance(envs, list) or isinstance(envs, gym.vector.AsyncVectorEnv)
            episodes = []
            collector = kind(envs, agent, 500, True, 0, lambda ret, length, into=episodes: into.append((ret, length)))
            collector.reset([5, 6], agent)
            rng = np.random.default_rng(0)
            for _ in range(60):
                collector.step(agent, agent.random_actions(rng, 2))
            collector.envs.close()
            data = collector.replay.data if kind is StreamCollector else collector.buffer.sample_episodes(8, 3)
            collected.append((episodes, data))
        (episodes_async, data_async), (episodes_turn, data_turn) = collected
        assert episodes_async == episodes_turn and len(episodes_turn) >= 2
        for key in set(data_turn) - {"deter", "stoch"}:  # the latents depend on the agent's advancing key
            np.testing.assert_array_equal(np.asarray(data_async[key]), np.asarray(data_turn[key]), err_msg=key)


@pytest.mark.slow(reason="a DreamerV3 run on Pendulum, its evaluation and play: the model and policy compile")
def test_env_options_reach_every_environment_of_a_run(tmp_path):
    """env_options make training, evaluation and `play` environments alike, and a bad one fails before training."""
    from worldloom.agents.play import play
    from worldloom.agents.run_file import resolve_run

    config, _ = resolve_run(None, {"env": "Pendulum-v1"}, ["env_options.max_episode_steps=20"])
    assert config.env_options == {"max_episode_steps": 20}
    # No update runs (60 * 0.2 replayed steps are less than one batch): only the environments are under test.
    config = AgentRunConfig(env="Pendulum-v1", env_options={"max_episode_steps": 20}, total_steps=60, train_ratio=0.2,
                            batch_size=2, sequence_length=8, eval_every=60, eval_episodes=2,
                            out_dir=str(tmp_path / "run"), seed=0)
    result = run_agent(config, progress=False, **DREAMER_TINY)
    # Pendulum's own limit is 200 steps: three 20-step training episodes, and an evaluation return of 20 steps'
    # worth (a step's reward is at least -16.3; random actions lose about 1,200 in 200 steps).
    steps = [step for step, _ in result["train_returns"]]
    assert len(steps) == 3 and np.diff(steps).tolist() == [20, 20]
    assert result["final_eval_return"] >= -16.3 * 20
    assert play(result["out_dir"], episodes=1)["lengths"] == [20]

    with pytest.raises(ConfigError, match="no_such_option"):
        run_agent(config.replace(env_options={"no_such_option": 1}, out_dir=str(tmp_path / "bad")), progress=False)
    for bad in (["fast_render"], {"agent": "tdmpc2"}):
        with pytest.raises(ConfigError, match="env_options"):
            AgentRunConfig(env_options=bad)
