"""Run presets: the reference's config blocks, chosen by the environment id, stacked, printed and recorded.

The expected values are written here, copied from the references' files:
danijar/dreamerv3 ``dreamerv3/configs.yaml`` (commit e3f0224) and
nicklashansen/tdmpc2 ``tdmpc2/config.yaml`` (commit e9f5932).
"""

import jax
import pytest
import yaml

from worldloom.agents import AgentRunConfig
from worldloom.agents.run_file import resolve_run
from worldloom.cli import main
from worldloom.core.errors import ConfigError
from worldloom.models.factory import get_config
from worldloom.training.reference import PRESETS

# configs.yaml's size blocks: .*\.rssm {deter, hidden, classes}, .*\.depth, .*\.units.
SIZES = {"size1m": (512, 64, 4, 4, 64), "size12m": (2048, 256, 16, 16, 256), "size25m": (3072, 384, 24, 24, 384),
         "size50m": (4096, 512, 32, 32, 512), "size100m": (6144, 768, 48, 48, 768),
         "size200m": (8192, 1024, 64, 64, 1024), "size400m": (12288, 1536, 96, 96, 1536)}

# Each block's values with a run field here: run.train_ratio, run.steps, run.envs, batch_size, batch_length,
# replay.size; TD-MPC2: batch_size, lr, grad_clip_norm, steps, eval_freq, eval_episodes, buffer_size, model_size 5
# (its train.py default) and one update per environment step.
RUN_VALUES = {
    "defaults": {},
    "dmc_proprio": dict(model="dreamerv3:size1m", train_ratio=1024.0, total_steps=1_100_000),
    "dmc_vision": dict(train_ratio=256.0, total_steps=1_100_000),
    "atari100k": dict(train_ratio=256.0, total_steps=110_000, num_envs=1),
    "debug": dict(batch_size=8, sequence_length=10, train_ratio=8.0, num_envs=4, buffer_capacity=10_000),
    **{size: dict(model=f"dreamerv3:{size}") for size in SIZES},
    **{name: dict(model="tdmpc2:5m", batch_size=256, learning_rate=3e-4, grad_clip=20.0, total_steps=10_000_000,
                  eval_every=50_000, eval_episodes=10, buffer_capacity=1_000_000, updates_per_step=1.0)
       for name in ("tdmpc2", "tdmpc2_pixels", "tdmpc2_gymnasium")},
}
# debug's agent block: .*\.bins 5, .*\.layers 1, .*\.units 8, .*\.stoch 2, .*\.classes 4, .*\.deter 8,
# .*\.hidden 3, .*\.blocks 4, .*\.depth 2 (on the world model's fields).
DEBUG_MODEL = dict(reward_bins=5, enc_layers=1, dec_layers=1, head_layers=1, units=8, stoch=2, classes=4, deter=8,
                   hidden=3, blocks=4, depth=2)


@pytest.mark.parametrize("name", sorted(RUN_VALUES))
def test_each_reference_preset_sets_the_reference_values_and_no_others(name):
    assert dict(PRESETS[name].run) == RUN_VALUES[name]
    algo = PRESETS[name].algo
    config = AgentRunConfig(algo=algo, env="dmc:walker-walk" if algo == "tdmpc2" else "CartPole-v1", configs=[name])
    for field, value in RUN_VALUES[name].items():
        assert getattr(config, field) == value, field


@pytest.mark.parametrize("size", sorted(SIZES))
def test_size_presets_select_world_models_of_the_reference_size_blocks(size):
    model = get_config(AgentRunConfig(configs=[size]).resolved("model"), obs_shape=(64, 64, 3), action_dim=6)
    assert (model.deter, model.hidden, model.classes, model.depth, model.units) == SIZES[size]


def test_debug_preset_shrinks_the_world_model_as_the_reference_does():
    config = AgentRunConfig(configs=["debug"], env="CartPole-v1")
    assert config.configs == ("quick", "debug") and config.preset_world_model() == DEBUG_MODEL
    model = get_config(config.resolved("model"), obs_shape=(4,), action_dim=2, action_type="discrete",
                       **config.preset_world_model())
    assert (model.deter, model.hidden, model.stoch, model.classes, model.units) == (8, 3, 2, 4, 8)


@pytest.mark.parametrize("env, algo, expected", [
    ("dmc:walker-walk", "dreamerv3", "dmc_proprio"), ("dmc:walker-walk:pixels", "dreamerv3", "dmc_vision"),
    ("atari:pong", "dreamerv3", "atari100k"), ("CartPole-v1", "dreamerv3", "quick"),
    ("dmc:walker-walk", "tdmpc2", "tdmpc2"), ("dmc:cartpole-balance:pixels", "tdmpc2", "tdmpc2_pixels"),
    ("Walker2d-v5", "tdmpc2", "tdmpc2_gymnasium"), ("HalfCheetah-v4", "tdmpc2", "tdmpc2_gymnasium"),
    ("BipedalWalker-v3", "tdmpc2", "tdmpc2_gymnasium"), ("LunarLanderContinuous-v3", "tdmpc2", "tdmpc2_gymnasium"),
    ("Walker2d-v5", "dreamerv3", "quick")])
def test_a_suite_id_selects_its_paper_preset(env, algo, expected):
    assert AgentRunConfig(env=env, algo=algo).configs == (expected,)


def test_tdmpc2_on_other_gymnasium_ids_selects_no_preset():
    assert AgentRunConfig(env="Pendulum-v1", algo="tdmpc2").configs == ()
    assert AgentRunConfig(env="Walker2dBulletEnv-v0", algo="tdmpc2").configs == ()


def test_tdmpc2_gymnasium_tasks_get_the_references_rho_and_discount_cap():
    # tdmpc2/envs/mujoco.py: cfg.discount_max = 0.99, cfg.rho = 0.7 for its Gymnasium tasks
    config = AgentRunConfig(env="Walker2d-v5", algo="tdmpc2")
    assert config.preset_world_model() == {"rho": 0.7, "discount_max": 0.99}
    model = get_config(config.resolved("model"), obs_shape=(17,), action_dim=6, episode_length=1000,
                       **config.preset_world_model())
    assert model.rho == 0.7 and model.gamma == pytest.approx(0.99)  # 0.995 from L=1000, capped
    assert get_config("tdmpc2:5m", obs_shape=(17,), action_dim=6, episode_length=1000).gamma == pytest.approx(0.995)


def test_presets_stack_in_order_and_fields_given_win():
    config = AgentRunConfig(env="dmc:walker-walk:pixels", configs=["size12m"])
    assert config.configs == ("dmc_vision", "size12m")  # the suite block first, as --configs dmc_vision size12m
    assert (config.model, config.train_ratio, config.total_steps) == ("dreamerv3:size12m", 256.0, 1_100_000)
    assert AgentRunConfig(configs="dmc_proprio size12m").model == "dreamerv3:size12m"  # later blocks win
    given = AgentRunConfig(env="dmc:walker-walk:pixels", configs=["size12m"], train_ratio=512, model="dreamerv3:size1m")
    assert (given.train_ratio, given.model) == (512.0, "dreamerv3:size1m")
    plain = AgentRunConfig(env="dmc:walker-walk:pixels", configs=["defaults"])
    assert (plain.train_ratio, plain.total_steps, plain.resolved("model")) == (32.0, 50_000, "dreamerv3:size1m")
    assert AgentRunConfig(algo="tdmpc2", env="Pendulum-v1").configs == ()  # quick is DreamerV3's


def test_unknown_or_mismatched_presets_are_config_errors(capsys):
    with pytest.raises(ConfigError, match=r"Unknown preset 'dmc_visoin'\. Did you mean 'dmc_vision'"):
        AgentRunConfig(configs=["dmc_visoin"])
    with pytest.raises(ConfigError, match=r"Preset 'size12m' is for dreamerv3; expected one for algo='tdmpc2'"):
        AgentRunConfig(algo="tdmpc2", configs=["size12m"])
    with pytest.raises(ConfigError, match=r"at most one suite preset in configs, got \['dmc_vision', 'atari100k'\]"):
        AgentRunConfig(configs=["dmc_vision", "atari100k"])
    assert main(["agent", "--configs", "size12", "--no-progress"]) == 2
    assert "Unknown preset 'size12'. Did you mean 'size12m'" in capsys.readouterr().err


@pytest.fixture
def started(monkeypatch, tmp_path):
    """``worldloom agent`` up to the start of its run: what run_agent prints and writes there, then no steps."""
    import worldloom.agents
    from worldloom.agents.run_file import settings_text, write_run

    calls = []

    def start(config, progress=True, resume=False, **overrides):
        path = write_run(f"{config.out_dir}/config.yaml", config, overrides)  # as run_agent does at its start
        print(settings_text(config, overrides, path), flush=True)
        calls.append((config, overrides, path))
        return dict(final_eval_return=None, env_steps=0, updates=0, wall_time=0.0, eval=[], out_dir=config.out_dir,
                    curves=f"{config.out_dir}/curves.png")

    monkeypatch.setattr(worldloom.agents, "run_agent", start)
    return lambda *args: (main(["agent", *args, "--no-progress", "--out", str(tmp_path / "run")]), calls[-1])


def test_dmc_pixels_run_prints_and_records_dmc_vision(started, capsys):
    status, (config, overrides, path) = started("--env", "dmc:walker-walk:pixels")
    assert status == 0 and config.configs == ("dmc_vision",)
    printed = capsys.readouterr().out
    assert "Presets dmc_vision" in printed and "train_ratio=256.0, total_steps=1100000" in printed
    text = path.read_text()
    assert text.startswith("# Presets dmc_vision") and "train_ratio=256.0, total_steps=1100000" in text
    saved = yaml.safe_load(text)
    assert saved["configs"] == ["dmc_vision"] and saved["train_ratio"] == 256.0 and saved["total_steps"] == 1_100_000
    assert resolve_run(path) == (config, overrides)  # the recorded file runs the same settings again


def test_configs_and_warmup_flags_and_run_files(started, tmp_path, capsys):
    _, (config, overrides, _) = started("--env", "dmc:walker-walk:pixels", "--configs", "dmc_vision", "debug",
                                        "--train-ratio", "16", "--warmup", "7")
    assert config.configs == ("dmc_vision", "debug") and overrides == DEBUG_MODEL
    assert (config.train_ratio, config.batch_size, config.total_steps, config.warmup_steps) == (16.0, 8, 1_100_000, 7)
    assert "train_ratio=8.0 -> 16.0" in capsys.readouterr().out  # a flag over a preset's value, shown
    run_file = tmp_path / "run.yaml"
    run_file.write_text("env: dmc:walker-walk:pixels\nconfigs: [dmc_vision, size12m]\nworld_model: {deter: 1024}\n")
    config, overrides = resolve_run(run_file, {"total_steps": 1000})
    assert (config.configs, config.model, config.train_ratio, config.total_steps) == (
        ("dmc_vision", "size12m"), "dreamerv3:size12m", 256.0, 1000)
    assert overrides == {"deter": 1024}


def test_quick_preset_on_gymnasium_ids(started):
    _, (config, _, _) = started("--env", "CartPole-v1", "--steps", "3000")
    quick = dict(PRESETS["quick"].run)
    assert config.configs == ("quick",) and config.total_steps == 3000
    assert all(getattr(config, field) == value for field, value in quick.items() if field != "total_steps")
    assert quick["stop_return"] == 475.0 and quick["model"] == "dreamerv3:size1m"
    # inf turns the preset's target off: the run goes on for all its steps.
    _, (config, _, _) = started("--env", "CartPole-v1", "--steps", "3000", "--stop-return", "inf")
    assert config.stop_return == float("inf") and config.replay_online is False


def test_run_agent_from_python_applies_the_presets_world_model_fields_under_its_keywords(tmp_path):
    from worldloom.agents.loop import plan_run
    from worldloom.training.parallel import ProcessShare

    config = AgentRunConfig(configs=["debug"], env="CartPole-v1", out_dir=str(tmp_path / "run"), device="cpu")
    share = ProcessShare(jax.devices("cpu")[0], config.resolved("batch_size"))
    assert plan_run(config, False, {}, share).overrides == DEBUG_MODEL
    assert plan_run(config, False, {"deter": 16}, share).overrides == {**DEBUG_MODEL, "deter": 16}


def test_tdmpc2_windows_hold_the_models_horizon_plus_one_rows(tmp_path):
    from worldloom.agents.loop import plan_run
    from worldloom.training.parallel import ProcessShare

    config = AgentRunConfig(algo="tdmpc2", env="Pendulum-v1", out_dir=str(tmp_path / "run"), device="cpu",
                            episodic=False)
    share = ProcessShare(jax.devices("cpu")[0], config.resolved("batch_size"))
    assert plan_run(config, False, {}, share).config.sequence_length == 4  # the reference's horizon 3
    assert plan_run(config, False, {"horizon": 5}, share).config.sequence_length == 6
    assert plan_run(config.replace(sequence_length=9), False, {"horizon": 5}, share).config.sequence_length == 9
    with pytest.raises(ConfigError, match=r"expected at least horizon \+ 1 = 6 rows .*got 4"):
        plan_run(config.replace(sequence_length=4), False, {"horizon": 5}, share)
