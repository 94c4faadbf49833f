"""The benchmark suites: ids, each reference's preprocessing, and short agent runs on each suite."""

import numpy as np
import pytest
from _agents import DREAMER_TINY, TDMPC_TINY

from worldloom.core.errors import ConfigError
from worldloom.envs import ATARI_REFERENCE, DMC_REFERENCE, make_env, parse_suite_id, suite_settings

pytest.importorskip("dm_control")
pytest.importorskip("ale_py")


def test_ids_name_a_task_and_bad_ones_say_what_was_expected():
    assert parse_suite_id("dmc:cartpole-balance") == ("dmc", {"domain": "cartpole", "task": "balance",
                                                              "pixels": False})
    assert parse_suite_id("dmc:cup-catch:pixels") == ("dmc", {"domain": "ball_in_cup", "task": "catch",
                                                              "pixels": True})
    assert parse_suite_id("dmc:finger-turn_hard")[1]["task"] == "turn_hard"
    assert parse_suite_id("atari:pong") == ("atari", {"game": "pong"})
    for bad in ("dmc:cartpole", "dmc:cartpole-balance:video", "atari:"):
        with pytest.raises(ConfigError, match="Expected"):
            parse_suite_id(bad)
    with pytest.raises(ConfigError, match="tdmpc2 reference is not run on atari"):
        suite_settings("atari:pong", "tdmpc2")
    with pytest.raises(ConfigError, match=r"Unknown dmc settings \['frameskip'\]"):
        suite_settings("dmc:cartpole-balance", frameskip=4)
    with pytest.raises(ConfigError, match="Did you mean 'dmc:cartpole-balance'"):
        make_env("dmc:cartpole-balanse")
    with pytest.raises(ConfigError, match="Unknown Atari game 'pongg'"):
        make_env("atari:pongg")
    with pytest.raises(ConfigError, match="dmc:lqr-lqr_2_1 has no time limit"):
        make_env("dmc:lqr-lqr_2_1")


@pytest.mark.parametrize("env_id", ["Walker2d-v5", "HalfCheetah-v5", "BipedalWalker-v3", "LunarLanderContinuous-v3"])
def test_the_tdmpc2_references_gymnasium_tasks_run_with_the_suites_extra(env_id, tmp_path, monkeypatch):
    """The tasks the ``tdmpc2_gymnasium`` preset is for (MuJoCo and Box2D) come with ``pip install -e ".[suites]"``."""
    from worldloom.training.data import env_spaces

    pytest.importorskip("Box2D" if env_id.startswith(("Bipedal", "LunarLander")) else "mujoco")
    monkeypatch.chdir(tmp_path)  # MuJoCo writes its warnings (HalfCheetah's model has one) to ./MUJOCO_LOG.TXT
    env = make_env(env_id)
    obs_shape, action_dim, discrete = env_spaces(env, "test")
    assert len(obs_shape) == 1 and action_dim == env.action_space.shape[0] and not discrete
    obs, _ = env.reset(seed=0)
    obs, reward, *_ = env.step(env.action_space.sample())
    assert obs.shape == obs_shape and np.isfinite(reward)


def test_a_task_whose_simulator_is_missing_says_what_to_install(monkeypatch):
    import gymnasium as gym

    def missing(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'imageio'", name="imageio")

    monkeypatch.setattr(gym, "make", missing)
    with pytest.raises(ConfigError, match=r"'HalfCheetah-v5': it needs the module 'imageio', which is not installed "
                                          r".*pip install -e \"\.\[suites\]\"") as caught:
        make_env("HalfCheetah-v5")
    assert "Did you mean" not in str(caught.value)  # the id is right: no other id to offer
    monkeypatch.setattr(gym, "make", lambda *a, **k: (_ for _ in ()).throw(gym.error.DependencyNotInstalled("Box2D")))
    with pytest.raises(ConfigError, match=r"'LunarLander-v3': it needs a package, which is not installed \(Box2D\)"):
        make_env("LunarLander-v3")
    # A registered environment whose constructor fails: its own error, no other id offered.
    monkeypatch.setattr(gym, "make", lambda *a, **k: (_ for _ in ()).throw(TypeError("Drift() takes no arguments")))
    for env_id in ("Pendulum-v1", "gymnasium:Pendulum-v1"):  # the module:Id form too
        with pytest.raises(ConfigError, match=r"Pendulum-v1': Drift\(\) takes no arguments\.$"):
            make_env(env_id)


def test_each_reference_runs_dmc_with_its_action_repeat_and_episode_length():
    assert (DMC_REFERENCE["dreamerv3"].repeat, DMC_REFERENCE["tdmpc2"].repeat) == (1, 2)
    for agent, steps in (("dreamerv3", 1000), ("tdmpc2", 500)):
        env = make_env("dmc:cartpole-balance", agent=agent)
        assert env.max_episode_steps == env.spec.max_episode_steps == steps
        assert env.observation_space.shape == (5,) and env.observation_space.dtype == np.float32
        assert env.action_space.shape == (1,) and (env.action_space.low, env.action_space.high) == (-1, 1)
    # One TD-MPC2 step is two physics steps; their rewards are summed. (dm_control is imported after worldloom
    # made an environment, which chose its OpenGL backend: imported first, dm_control would pick one itself.)
    from dm_control import suite

    env = make_env("dmc:cartpole-balance", agent="tdmpc2")
    raw = suite.load("cartpole", "balance", task_kwargs={"random": 7})
    obs, _ = env.reset(seed=7)
    step = raw.reset()
    np.testing.assert_allclose(obs, np.concatenate([v.reshape(-1) for v in step.observation.values()]))
    actions = np.random.default_rng(0).uniform(-1, 1, (500, 1))
    for index, action in enumerate(actions):
        obs, reward, terminated, truncated, _ = env.step(action)
        expected = sum(raw.step(action).reward for _ in range(2))
        assert reward == pytest.approx(expected, abs=1e-6)
        assert not terminated and truncated == (index == 499)  # the time limit truncates; DMC never terminates
    # Unseeded, each environment starts where it likes (a seed makes it repeat).
    starts = [make_env("dmc:cartpole-balance").reset()[0] for _ in range(2)]
    assert not np.array_equal(*starts)


def _render_or_skip(env_id, agent):
    try:
        env = make_env(env_id, agent=agent)
        return env, env.reset(seed=0)[0]
    except Exception as err:  # noqa: BLE001 - no offscreen OpenGL on this machine
        pytest.skip(f"MuJoCo cannot render offscreen here ({type(err).__name__}: {err})")


def test_dmc_pixels_are_64x64_frames_stacked_as_each_reference_stacks_them():
    env, obs = _render_or_skip("dmc:cartpole-balance:pixels", "dreamerv3")
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8 and obs.std() > 0
    env, first = _render_or_skip("dmc:cartpole-balance:pixels", "tdmpc2")
    assert first.shape == (64, 64, 9) and env.observation_space.shape == (64, 64, 9)
    np.testing.assert_array_equal(first[..., :3], first[..., 6:])  # the reset frame fills the stack
    second = env.step(np.ones(1))[0]
    np.testing.assert_array_equal(second[..., :6], first[..., 3:])  # oldest first; the new frame last
    assert not np.array_equal(second[..., 6:], first[..., 6:])
    assert make_env("dmc:quadruped-walk").camera == 2 and env.camera == 0


class CountingALE:
    """ale-py's interface with every emulated frame counted and the rewards and lives scripted."""

    def __init__(self, ale, reward=None, lives=None):
        self.ale, self.frames, self.screens = ale, 0, []
        self.reward, self.lives_left = reward, lives

    def act(self, action):
        self.frames += 1
        real = self.ale.act(action)
        return real if self.reward is None else self.reward

    def lives(self):
        return self.ale.lives() if self.lives_left is None else self.lives_left(self.frames)

    def getScreenRGB(self, out=None):  # noqa: N802 - ale-py's name
        self.ale.getScreenRGB(out)
        self.screens.append(out.copy())

    def __getattr__(self, name):
        return getattr(self.ale, name)


def test_atari_follows_dreamerv3s_atari100k_settings():
    from PIL import Image

    settings = ATARI_REFERENCE["dreamerv3"]
    assert (settings.repeat, settings.size, settings.gray, settings.sticky, settings.noops) == (4, 64, False, 0.0, 30)
    env = make_env("atari:pong")
    assert env.observation_space.shape == (64, 64, 3) and env.observation_space.dtype == np.uint8
    assert env.action_space.n == 6  # Pong's minimal action set
    assert env.ale.getFloat("repeat_action_probability") == 0.0
    assert make_env("atari:pong", sticky=0.25).ale.getFloat("repeat_action_probability") == 0.25
    noops = set()
    for seed in range(6):  # a uniform number of no-op frames in [0, 30] at every reset
        env.ale = CountingALE(env.ale)
        env.reset(seed=seed)
        noops.add(env.ale.frames)
    assert len(noops) > 1 and max(noops) <= 30
    env.ale = CountingALE(env.ale.ale, reward=1.0)
    env.reset(seed=0)
    env.ale.frames, env.ale.screens = 0, []
    obs, reward, terminated, truncated, info = env.step(1)
    assert env.ale.frames == 4 and info["frames"] == 4 and reward == 4.0  # 4 frames, rewards summed
    assert len(env.ale.screens) == 2  # the last two frames of the step, max-pooled, resized bilinearly
    pooled = np.maximum(*env.ale.screens)
    np.testing.assert_array_equal(obs, np.asarray(Image.fromarray(pooled).resize((64, 64), Image.BILINEAR)))
    assert not terminated and not truncated


def test_atari_time_limit_truncates_and_lives_end_episodes_only_when_asked():
    env = make_env("atari:pong", max_frames=8)
    env.reset(seed=0)
    assert env.step(0)[2:4] == (False, False)
    assert env.step(0)[2:4] == (False, True)  # 8 frames: truncated, not terminated
    for lives, ends in (("unused", False), ("terminal", True)):
        env = make_env("atari:pong", lives=lives)
        env.ale = CountingALE(env.ale, lives=lambda frames: 3 if frames < 2 else 2)
        env.reset(seed=0)
        env.ale.frames = 0
        _, _, terminated, truncated, info = env.step(0)
        assert terminated == ends and not truncated and info["lives"] == 2


# The tests' tiny models (tests/_agents.py); DreamerV3's image encoder and decoder of one stage (64x64 -> 32x32),
# TD-MPC2's image encoder 4 channels wide: they compile and run in a fraction of the reference stack's time.
DREAMER_SUITE = dict(DREAMER_TINY, depth=4, cnn_mults=(2,), enc_layers=1, dec_layers=1, img_layers=1)
TDMPC_SUITE = dict(TDMPC_TINY, num_channels=4)
RUNS = {
    "dreamerv3-dmc": ("dmc:cartpole-balance", "dreamerv3", DREAMER_SUITE, None),
    "dreamerv3-dmc-pixels": ("dmc:cartpole-balance:pixels", "dreamerv3", DREAMER_SUITE, None),
    "dreamerv3-atari": ("atari:pong", "dreamerv3", DREAMER_SUITE, None),
    "tdmpc2-dmc": ("dmc:cartpole-balance", "tdmpc2", TDMPC_SUITE, None),
    # 504 rendered steps: without shadows and reflections (DMCSettings.fast_render), 3.5 ms a frame instead of 33
    # (the reference's rendering is test_dmc_pixels_are_64x64_frames_stacked_as_each_reference_stacks_them's).
    "tdmpc2-dmc-pixels": ("dmc:cartpole-balance:pixels", "tdmpc2", TDMPC_SUITE, {"fast_render": True}),
}


@pytest.mark.slow(reason="a short run of each agent on each suite: five models, their updates and acting compile")
@pytest.mark.parametrize("name", sorted(RUNS))
def test_each_agent_trains_on_each_suite_its_reference_runs(tmp_path, name):
    from worldloom.agents import AgentRunConfig, run_agent

    env_id, algo, model, env_options = RUNS[name]
    if "pixels" in env_id:
        _render_or_skip(env_id, algo)
    # DreamerV3 trains once replay holds B x T = 8 windows of 5 rows (12 rows: step 11), one update a step. TD-MPC2
    # replays whole episodes, as its reference does: its updates start when the first (500 steps) ends, with a burst
    # of 8 (seed_steps) updates, fewer than a K-update program takes: the run compiles one update program.
    steps, seed_steps, length = (12, 4, 4) if algo == "dreamerv3" else (504, 8, None)
    config = AgentRunConfig(env=env_id, env_options=env_options, algo=algo, total_steps=steps, seed_steps=seed_steps,
                            train_ratio=8, updates_per_step=0.5, batch_size=2, sequence_length=length,
                            eval_every=steps, eval_episodes=0, checkpoint_every=10_000, out_dir=str(tmp_path / "run"),
                            seed=0)
    result = run_agent(config, progress=False, **model)
    assert result["env_steps"] >= steps and result["updates"] > 0


def test_the_suite_table_scores_in_the_papers_format(tmp_path):
    """benchmarks.suites: DMC returns at the published step counts, Atari human-normalised beside DreamerV3's."""
    from benchmarks.reference_scores import ATARI, human_normalized
    from benchmarks.suites import BEGIN, END, table, write_section

    assert human_normalized("pong", -20.7) == 0.0 and human_normalized("pong", 14.6) == pytest.approx(1.0)
    runs = [{"task": "dmc:cartpole-balance:pixels", "algo": "dreamerv3", "seed": seed,
             "eval": [(50_000, 300.0 + seed), (100_000, 700.0 + 10 * seed), (120_000, 800.0)]} for seed in (0, 1)]
    runs.append({"task": "atari:pong", "algo": "dreamerv3", "seed": 0, "eval": [(100_000, -3.0)]})
    runs.append({"task": "dmc:cup-catch:pixels", "algo": "dreamerv3", "seed": 0, "eval": [(100_000, 500.0)]})
    text = table(runs)
    assert "| dmc:cup-catch:pixels | dreamerv3 | 1 | 100,000 | 100,000 | 500.0 | 876.6 |" in text  # ball_in_cup
    # DreamerV3's DMC runs repeat each action once (its reference's setting): agent steps are frames.
    assert "| dmc:cartpole-balance:pixels | dreamerv3 | 2 | 100,000 | 100,000 | 705.0 | 947.8 |" in text
    assert "| dmc:cartpole-balance:pixels | dreamerv3 | 2 | 120,000 | 120,000 | 800.0 | - |" in text
    random, human, paper = ATARI["pong"]
    assert (f"| pong | dreamerv3 | 1 | 100,000 | -3.0 | {random} | {human} | {(-3.0 - random) / (human - random):.3f} "
            f"| {paper} |") in text
    results = tmp_path / "results.md"
    results.write_text("# Results\n\nearlier text\n")
    write_section(results, "first")
    write_section(results, "second")
    assert results.read_text() == f"# Results\n\nearlier text\n\n{BEGIN}\nsecond\n{END}\n"


def test_the_suite_table_from_finished_agent_runs(tmp_path):
    """benchmarks.suites --runs tabulates `worldloom agent` run directories; a directory without a run is refused."""
    import json

    import yaml

    from benchmarks.suites import main

    run = tmp_path / "pixels"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"env": "dmc:cartpole-balance:pixels", "algo": "dreamerv3",
                                                     "seed": 3, "env_options": {"repeat": 2}}))
    (run / "summary.json").write_text(json.dumps({"eval": [[50_000, 500.0], [100_000, 720.5]], "wall_time": 7200.0}))
    results = tmp_path / "results.md"
    assert main(["--runs", str(run), "--results", str(results)]) == 0
    text = results.read_text()
    # At action repeat 2 an agent step is two frames, the published curve's unit: 50k steps meet its 100k frames.
    assert "| dmc:cartpole-balance:pixels | dreamerv3 | 1 | 50,000 | 100,000 | 500.0 | 947.8 |" in text
    assert "| dmc:cartpole-balance:pixels | dreamerv3 | 1 | 100,000 | 200,000 | 720.5 | 976.6 |" in text
    assert "2.00 h of wall time on this machine (the runs added up)" in text
    with pytest.raises(SystemExit, match="expected a finished `worldloom agent` run"):
        main(["--runs", str(tmp_path / "missing")])
