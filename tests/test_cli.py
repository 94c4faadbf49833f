"""The worldloom command: train end to end on CartPole, collect, evaluate, imagine, list-models.

The training run uses the tiny model and optimiser setting of test_trainer.py
(so one pytest session compiles its update program once).
"""

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from worldloom.cli import main
from worldloom.training import ReplayBuffer

SMALL = ["deter=64", "hidden=32", "units=32", "classes=4", "stoch=4", "enc_layers=1", "dec_layers=1", "img_layers=1"]


def _train_args(out) -> list[str]:
    args = ["train", "--env", "CartPole-v1", "--model", "dreamerv3:size1m", "--episodes", "8", "--test-episodes", "6",
            "--steps", "8", "--batch-size", "4", "--seq-len", "8", "--steps-per-dispatch", "4", "--warmup-steps", "2",
            "--eval-interval", "4", "--log-interval", "4", "--context", "3", "--horizon", "5", "--device", "cpu",
            "--seed", "0", "--no-progress", "--out", str(out)]
    for override in SMALL:
        args += ["--set", override]
    return args


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cartpole")
    assert main(_train_args(out)) == 0
    return out


@pytest.mark.slow
def test_train_writes_model_buffers_logs_plot_and_summary(run_dir, capsys):
    names = set(os.listdir(run_dir))
    assert {"model", "buffer.npz", "test_buffer.npz", "logs", "checkpoints", "imagination.png", "summary.json",
            "config.yaml"} <= names
    assert (run_dir / "model" / "config.json").is_file()
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(run_dir / "logs"))
    assert (run_dir / "imagination.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["best", "step_00000008"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 8 and not summary["interrupted"]
    assert summary["heldout_loss_after"]["loss"] < summary["heldout_loss_before"]["loss"]
    assert summary["open_loop"]["horizon"] == 5 and summary["open_loop"]["obs_mse"] >= 0
    # CartPole pays 1 per step: the reward baseline is the training mean, exact by construction, and said so.
    assert summary["open_loop"]["rewards_constant"] and summary["open_loop"]["reward_baseline"] == 1.0
    assert [step for step, _ in summary["eval_history"]] == [4, 8]
    buffer = ReplayBuffer.load(run_dir / "buffer.npz")
    assert buffer.num_episodes == 8 and buffer.obs_shape == (4,) and buffer.action_dim == 2


@pytest.mark.slow
def test_evaluate_and_imagine_a_saved_model(run_dir, tmp_path, capsys):
    capsys.readouterr()
    common = ["--model", str(run_dir / "model"), "--buffer", str(run_dir / "test_buffer.npz"), "--device", "cpu"]
    assert main(["evaluate", *common, "--batch-size", "4", "--seq-len", "8", "--batches", "2"]) == 0
    out = capsys.readouterr().out
    assert "loss/rec:" in out and "loss:" in out
    scaled = next(line for line in out.splitlines() if "as they enter loss (scaled): " in line)  # each term once
    assert "reconstruction_loss:" not in out and "kl_loss " in scaled and "reconstruction_loss " in scaled
    # The run directory in place of --model and --buffer (its model/ and test_buffer.npz), or as --model
    sizes = ["--batch-size", "4", "--seq-len", "8", "--batches", "2", "--device", "cpu"]
    assert main(["evaluate", str(run_dir), *sizes]) == 0
    assert main(["evaluate", "--model", str(run_dir), "--buffer", str(run_dir / "test_buffer.npz"), *sizes]) == 0
    assert capsys.readouterr().out.count(f"on {run_dir / 'test_buffer.npz'}") == 2
    plot = tmp_path / "plot.png"
    assert main(["imagine", *common, "--context", "3", "--horizon", "5", "--out", str(plot)]) == 0
    out = capsys.readouterr().out
    assert plot.read_bytes()[:4] == b"\x89PNG" and "obs MSE" in out
    assert "baseline: predict the mean reward of these episodes" in out  # no training buffer named: in-sample
    # A video of vector observations is refused before anything is written; RUN's plot goes into RUN
    assert main(["imagine", str(run_dir), "--context", "3", "--horizon", "5", "--video", str(tmp_path / "v.gif")]) == 2
    assert "--video: an open-loop video shows image observations" in capsys.readouterr().err
    assert not (run_dir / "imagine.png").exists() and not (tmp_path / "v.gif").exists()
    assert main(["imagine", str(run_dir), "--context", "3", "--horizon", "5", "--device", "cpu"]) == 0
    assert (run_dir / "imagine.png").read_bytes()[:4] == b"\x89PNG"
    trained = ReplayBuffer.load(run_dir / "buffer.npz")  # RUN's training episodes give the baseline
    mean = np.concatenate([trained.episode(i)["rewards"] for i in range(trained.num_episodes)]).mean()
    assert f"baseline: predict the training mean reward {mean:.3g}," in capsys.readouterr().out


def test_collect_and_errors(tmp_path, capsys):
    path = tmp_path / "data.npz"
    assert main(["collect", "--env", "CartPole-v1", "--episodes", "3", "--out", str(path), "--seed", "1"]) == 0
    assert ReplayBuffer.load(path).num_episodes == 3 and "Wrote" in capsys.readouterr().out
    # A directory holding no saved model is a CheckpointError: one line, exit status 1.
    assert main(["evaluate", "--model", str(tmp_path), "--buffer", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("worldloom evaluate: error: ") and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):
        main(["train", "--set", "no-equals-sign"])


def test_list_models_through_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "worldloom", "list-models"], capture_output=True, text=True,
                         check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}).stdout.split()
    assert "dreamerv3:size1m" in out and "dreamerv3:size12m" in out


@pytest.mark.slow
def test_list_models_verbose(capsys):
    assert main(["list-models", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "dreamerv3:size12m" in out and "8,852,675 params" in out


def test_the_compilation_cache_follows_jax_then_worldloom_then_xdg(tmp_path):
    from worldloom.cli import compilation_cache_dir

    assert compilation_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}, None) == tmp_path / "worldloom" / "xla"
    assert compilation_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}, "/jax/own") is None  # JAX's setting stands
    assert compilation_cache_dir({"WORLDLOOM_COMPILATION_CACHE": str(tmp_path / "x")}, None) == tmp_path / "x"
    for off in ("0", "off", ""):
        assert compilation_cache_dir({"WORLDLOOM_COMPILATION_CACHE": off, "XDG_CACHE_HOME": "/c"}, None) is None
    assert compilation_cache_dir({}, None) == Path("~/.cache").expanduser() / "worldloom" / "xla"


@pytest.mark.slow(reason="two fresh interpreters evaluate a saved model")
def test_a_command_keeps_its_compiled_programs_for_the_next_run(run_dir, tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "JAX_COMPILATION_CACHE_DIR"}
    env.update(JAX_PLATFORMS="cpu", XDG_CACHE_HOME=str(tmp_path), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    command = [sys.executable, "-m", "worldloom", "evaluate", str(run_dir), "--batch-size", "4", "--seq-len", "8",
               "--batches", "1", "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert any((tmp_path / "worldloom" / "xla").glob("*-cache")), "no compiled program was kept"
    off = subprocess.run(command, capture_output=True, text=True, timeout=120,
                         env=dict(env, XDG_CACHE_HOME=str(tmp_path / "off"), WORLDLOOM_COMPILATION_CACHE="0"))
    assert off.returncode == 0, off.stderr
    assert not (tmp_path / "off").exists()


def _worldloom(*args, timeout=120):
    """``python -m worldloom ARGS`` in a fresh interpreter: for exit codes and what only a new process shows."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "worldloom", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _run(capsys, *args) -> subprocess.CompletedProcess:
    """``worldloom ARGS`` in this process: its exit status (argparse's exits included), stdout and stderr."""
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 2
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def test_evaluate_and_imagine_of_an_agent_run_say_where_its_model_and_replay_are(tmp_path, capsys):
    run = tmp_path / "pend"
    (run / "agent" / "world_model").mkdir(parents=True)
    for command in ("evaluate", "imagine"):
        out = _run(capsys, command, str(run))
        assert out.returncode == 2 and f"'{run}' is a `worldloom agent` run" in out.stderr, out.stderr
        assert f"--model {run / 'agent' / 'world_model'} --buffer {run / 'checkpoints' / 'replay.npz'}" in out.stderr
        assert f"worldloom {command}: error: expected" not in out.stderr


def test_version_and_help_show_defaults(capsys, monkeypatch):
    from importlib.metadata import version

    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps help as a terminal of 80 columns would
    out = _run(capsys, "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"worldloom {version('worldloom')}"
    for command in ("train", "collect", "agent"):
        options = _run(capsys, command, "--help").stdout.split("options:", 1)[1]
        for flag in ("--seed", "--env"):
            block = options.split(f"\n  {flag}", 1)[1].split("\n  -", 1)[0]
            assert "default:" in block, (command, flag, block)
    agent_help = _run(capsys, "agent", "--help").stdout
    assert "--device" in agent_help and "--log-every" in agent_help and "--episodic" in agent_help


@pytest.mark.parametrize("args, message", [
    (("train", "--steps", "0"), "total_steps must be >= 1, got 0"),
    (("train", "--device", "cuda"), "Device 'cuda' is not available"),
    (("agent", "--device", "cuda"), "Device 'cuda' is not available"),
    (("train", "--context", "0"), "--context: expected at least 1 step, got 0"),
])
def test_bad_settings_fail_before_collecting(tmp_path, capsys, args, message):
    out = _run(capsys, *args, "--out", str(tmp_path / "run"))
    assert out.returncode == 2 and message in out.stderr
    assert "Collecting" not in out.stdout and not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (("--seq-len", "400"), "fewer than --seq-len 400"),
    (("--seq-len", "4", "--context", "500"), "--context 500: the open-loop plot observes that many steps"),
])
def test_settings_the_held_out_episodes_cannot_meet_fail_before_training(tmp_path, capsys, args, message):
    out = _run(capsys, "train", "--episodes", "1", "--test-episodes", "1", *args, "--out", str(tmp_path / "run"))
    assert out.returncode == 2 and message in out.stderr
    assert "Model" not in out.stdout and not (tmp_path / "run").exists()  # nothing trained, nothing left


AGENT_SETS = ["--set", "deter=64", "--set", "hidden=32", "--set", "units=32", "--set", "classes=4", "--set",
              "stoch=4"]


@pytest.fixture(scope="module")
def agent_runs(tmp_path_factory):
    """Two tiny DreamerV3 agent runs with the same ``--out``: the second goes to ``run-2``.

    The second takes 8 steps, fewer than a window (T + 1 = 9 rows): it saves an agent that never updated.
    """
    root = tmp_path_factory.mktemp("agent")
    args = ["agent", "--steps", "30", "--train-ratio", "8", "--batch-size", "2", "--seq-len", "8", "--eval-every",
            "30", "--eval-episodes", "1", "--checkpoint-every", "0", "--out", str(root / "run"), "--no-progress",
            *AGENT_SETS]
    assert main(args) == 0 and main([*args, "--steps", "8"]) == 0
    return root


@pytest.mark.slow(reason="two agent runs and a resume")
def test_each_run_gets_its_own_directory_and_resume_names_one(agent_runs, capsys):
    first, second = agent_runs / "run", agent_runs / "run-2"
    for run in (first, second):
        assert {"config.yaml", "summary.json", "logs", "checkpoints", "agent"} <= {p.name for p in run.iterdir()}
    import yaml

    saved = yaml.safe_load((second / "config.yaml").read_text())
    assert saved["out_dir"] == str(second) and saved["world_model"]["deter"] == 64
    # Only the new step count is typed: the rest (the tiny model among it) comes from the run's config.yaml.
    resumed = _run(capsys, "agent", "--steps", "60", "--no-progress", "--resume", str(first))
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming {first} from environment step 30" in resumed.stdout
    assert not (agent_runs / "run-3").exists()
    missing = _worldloom("agent", "--resume", str(agent_runs / "nothing"))  # the exit status of a real process
    assert missing.returncode == 2 and "expected a run directory that worldloom wrote (config.yaml and " \
        "checkpoints/)" in missing.stderr
    # A run of the other command is named as such, not read as a run file of this one.
    other = _run(capsys, "train", "--resume", str(first))
    assert other.returncode == 2 and f"expected a run of `worldloom train`, got '{first}', a run of `worldloom " \
        f"agent` (its config.yaml): resume it with `worldloom agent --resume {first}`" in other.stderr


def test_output_paths_are_checked_before_the_work(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    result = _run(capsys, "collect", "--episodes", "1", "--out", str(notes))
    assert result.returncode == 1 and "expected a new file name or a file worldloom wrote" in result.stderr
    assert "Wrote" not in result.stdout and notes.read_text() == "my notes"
    for flags, message in ((["--out", str(tmp_path)], "is a directory"),
                           (["--video", str(tmp_path / "v.avi")], "--video: expected a .gif or .mp4 file")):
        result = _run(capsys, "imagine", "--model", str(tmp_path / "none"), "--buffer", str(notes), *flags)
        assert result.returncode == 2 and message in result.stderr, result.stderr  # before the model is read


def test_a_missing_wandb_is_said_before_anything_runs(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed")
    for command in ("train", "agent"):
        result = _run(capsys, command, "--logger", "wandb", "--out", str(tmp_path / command))
        assert result.returncode == 2 and "logger='wandb' needs the wandb package" in result.stderr, result.stderr
        assert "Collecting" not in result.stdout and not (tmp_path / command).exists()  # no run directory left


def test_resume_refuses_a_directory_worldloom_did_not_write(tmp_path, capsys):
    """A directory of the user's that happens to hold checkpoints/ is not resumed (nor its files written over)."""
    mine = tmp_path / "mine"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "checkpoints" / "thesis.tex").write_text("my thesis")
    (mine / "buffer.npz").write_text("my data")
    for command in ("train", "agent"):
        result = _run(capsys, command, "--resume", str(mine), "--steps", "4")
        assert result.returncode == 2 and f"got '{mine}', which has no config.yaml" in result.stderr, result.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["buffer.npz", "checkpoints"]
    assert (mine / "buffer.npz").read_text() == "my data"
    # With a config.yaml of its own (a Hydra project's), or of the other command, and --config given too.
    (tmp_path / "run.yaml").write_text("steps: 4\n")
    for text, message in (("lr: 0.1\n", "whose config.yaml is not a worldloom run file"),
                          ("env: CartPole-v1\nalgo: dreamerv3\n", "a run of `worldloom agent`")):
        (mine / "config.yaml").write_text(text)
        result = _run(capsys, "train", "--resume", str(mine), "--config", str(tmp_path / "run.yaml"))
        assert result.returncode == 2 and message in result.stderr, result.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["buffer.npz", "checkpoints", "config.yaml"]


@pytest.mark.slow
def test_play_evaluates_a_saved_agent_and_writes_a_gif(agent_runs, tmp_path, capsys):
    from PIL import Image

    run = agent_runs / "run-2"
    out = _run(capsys, "play", str(run), "--episodes", "2", "--seed", "3", "--video", str(tmp_path / "v.gif"))
    assert out.returncode == 0, out.stderr
    assert "2 episodes from seed 3: return" in out.stdout
    with Image.open(tmp_path / "v.gif") as gif:
        assert gif.n_frames >= 9 and gif.size == (600, 400)  # CartPole: at least 9 steps, rendered 600x400
    from worldloom.agents.play import play

    again = play(run, episodes=2, seed=3)
    assert len(again["returns"]) == 2 and again["video"] is None
    bad = _run(capsys, "play", str(tmp_path), "--episodes", "1")
    assert bad.returncode == 1 and "config.yaml" in bad.stderr  # a CheckpointError: one line, exit status 1


@pytest.mark.slow(reason="two DreamerV3 agent runs, one from the other's run file")
def test_a_run_file_reproduces_a_run_and_set_reaches_every_field(tmp_path, capsys):
    import yaml

    from worldloom.agents.run_file import resolve_run

    run_file = tmp_path / "run.yaml"
    run_file.write_text(yaml.safe_dump({"env": "CartPole-v1", "total_steps": 30, "train_ratio": 8, "batch_size": 2,
                                        "sequence_length": 8, "eval_episodes": 0, "checkpoint_every": 0,
                                        "out_dir": str(tmp_path / "run"), "seed": 4,
                                        "world_model": dict(deter=64, hidden=32, units=32, classes=4, stoch=4)}))
    assert main(["agent", "--config", str(run_file), "--no-progress"]) == 0
    saved = tmp_path / "run" / "config.yaml"
    again, overrides = resolve_run(saved)
    first, _ = resolve_run(run_file)
    assert again == first.resolve() and overrides["deter"] == 64  # the saved file holds the resolved settings
    # 8 steps: fewer rows than a window (T + 1 = 9), so this run compiles no update for its new batch and model.
    assert main(["agent", "--config", str(saved), "--seed", "9", "--steps", "8", "--set", "batch_size=3", "--set",
                 "stoch=2", "--no-progress"]) == 0
    rerun = yaml.safe_load((tmp_path / "run-2" / "config.yaml").read_text())
    assert (rerun["seed"], rerun["total_steps"], rerun["batch_size"]) == (9, 8, 3)  # typed flags and --set > file
    assert (rerun["train_ratio"], rerun["sequence_length"]) == (8, 8)  # the rest from the file (quick has 64, 32)
    assert rerun["world_model"]["stoch"] == 2 and rerun["world_model"]["deter"] == 64
    for bad, message in ((["--set", "batch_size=many"], "batch_size: expected an int or None, got str 'many'"),
                         (["--set", "total_step=5"], "Did you mean"),):
        out = _run(capsys, "agent", "--config", str(saved), *bad)
        assert out.returncode == 2 and message in out.stderr, out.stderr


@pytest.mark.slow(reason="a training run from run_dir's run file (its programs, from the compilation cache)")
def test_train_run_file_reproduces_and_set_reaches_training_fields(run_dir, tmp_path, capsys):
    import yaml

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["steps"] == 8 and saved["world_model"]["deter"] == 64 and "grad_clip" in saved["training"]
    out = tmp_path / "again"
    # A field that leaves the update program as it was: the rerun finds run_dir's in the compilation cache.
    assert main(["train", "--config", str(run_dir / "config.yaml"), "--set", "total_steps=4", "--out", str(out),
                 "--set", "keep_checkpoints=5", "--set", "log_interval=2", "--no-progress"]) == 0
    again = yaml.safe_load((out / "config.yaml").read_text())
    assert (again["steps"], again["episodes"], again["training"]["keep_checkpoints"]) == (4, 8, 5)
    assert again["log_interval"] == 2 and "log_interval" not in again["training"]  # a flag's field, as if typed
    assert "total_steps" not in again["training"]  # a field under its flag's name (steps), as the run did it
    assert again["training"]["grad_clip"] == saved["training"]["grad_clip"]
    assert again["world_model"] == saved["world_model"]
    assert json.loads((out / "summary.json").read_text())["steps"] == 4
    (tmp_path / "bad.yaml").write_text("episode: 3\n")
    bad = _run(capsys, "train", "--config", str(tmp_path / "bad.yaml"))
    assert bad.returncode == 2 and "Did you mean 'episodes'" in bad.stderr
    bad = _run(capsys, "train", "--config", str(run_dir / "config.yaml"), "--set", "learning_rat=1e-3")
    assert bad.returncode == 2 and "--set learning_rat: not a setting of worldloom train, a DreamerV3Config field " \
        "or a TrainingConfig field. Did you mean 'learning_rate'?" in bad.stderr, bad.stderr


@pytest.mark.slow(reason="a training run (run_dir's program) stopped by SIGTERM, then resumed from its run file")
def test_sigterm_saves_a_train_run_says_how_to_resume_and_the_resume_finishes_it(run_dir, tmp_path, capsys,
                                                                                  monkeypatch):
    from worldloom.training.callbacks import LoggingCallback

    original = LoggingCallback.on_step_end

    def terminate_at_step_4(self, step, losses):
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, step, losses)

    monkeypatch.setattr(LoggingCallback, "on_step_end", terminate_at_step_4)
    out = tmp_path / "run"
    stopped = _run(capsys, *_train_args(out))
    assert stopped.returncode == 143, stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == (f"worldloom train: SIGTERM: saved {out} at update 4 of 8; "
                                                       f"resume with: worldloom train --resume {out}")
    assert (out / "model" / "config.json").is_file() and (out / "checkpoints" / "step_00000004").is_dir()
    monkeypatch.undo()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = _run(capsys, "train", "--resume", str(out))  # the run's own config.yaml supplies its settings
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming {out} from step 4" in resumed.stdout
    assert f"Reading the run's episodes from {out / 'buffer.npz'}" in resumed.stdout  # not collected again
    assert not [w for w in caught if "another buffer" in str(w.message)]  # the episodes it was trained on
    summary = (out / "summary.json").read_text()
    assert json.loads(summary)["steps"] == 8
    assert [step for step, _ in json.loads(summary)["eval_history"]] == [4, 8]  # the one before step 4 kept
    again = _run(capsys, "train", "--resume", str(out))  # finished: nothing to train, nothing rewritten
    assert again.returncode == 0 and f"{out} has done its 8 updates; nothing to train" in again.stdout
    assert (out / "summary.json").read_text() == summary


def test_the_open_loop_report_names_its_baseline_and_the_constant_reward():
    from worldloom.cli import _report_open_loop

    result = {"num_episodes": 1, "context": 2, "horizon": 3, "reward_mae": 0.5, "reward_baseline": 1.5,
              "reward_mae_baseline": 0.5, "reward_baseline_in_sample": True, "rewards_constant": True,
              "constant_reward": 1.0, "real_rewards": np.array([[5.0, 1.0, 1.0, 1.0, 1.0]])}
    line = _report_open_loop(result)[-1]
    # The first reward (5) is observed, not predicted: the predicted steps' reward is 1.
    assert "predict the mean reward of these episodes 1.5" in line and "real reward is 1," in line
    assert "the training mean reward" in _report_open_loop(dict(result, reward_baseline_in_sample=False))[-1]
