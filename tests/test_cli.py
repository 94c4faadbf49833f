"""The worldloom command: train end to end on CartPole, collect, evaluate, imagine, list-models.

The training run uses the tiny model and optimiser setting of test_trainer.py
(so one pytest session compiles its update program once).
"""

import json
import os
import subprocess
import sys

import pytest

from worldloom.cli import main
from worldloom.training import ReplayBuffer

SMALL = ["deter=64", "hidden=32", "units=32", "classes=4", "stoch=4", "enc_layers=1", "dec_layers=1", "img_layers=1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cartpole")
    args = ["train", "--env", "CartPole-v1", "--model", "dreamerv3:size1m", "--episodes", "8", "--test-episodes", "6",
            "--steps", "8", "--batch-size", "4", "--seq-len", "8", "--steps-per-dispatch", "4", "--warmup-steps", "2",
            "--eval-interval", "4", "--log-interval", "4", "--context", "3", "--horizon", "5", "--device", "cpu",
            "--seed", "0", "--no-progress", "--out", str(out)]
    for override in SMALL:
        args += ["--set", override]
    assert main(args) == 0
    return out


def test_train_writes_model_buffers_logs_plot_and_summary(run_dir, capsys):
    names = set(os.listdir(run_dir))
    assert {"model", "buffer.npz", "test_buffer.npz", "logs", "checkpoints", "imagination.png", "summary.json"} <= names
    assert (run_dir / "model" / "config.json").is_file()
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(run_dir / "logs"))
    assert (run_dir / "imagination.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["best", "step_00000008"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 8 and not summary["interrupted"]
    assert summary["heldout_loss_after"]["loss"] < summary["heldout_loss_before"]["loss"]
    assert summary["open_loop"]["horizon"] == 5 and summary["open_loop"]["obs_mse"] >= 0
    assert [step for step, _ in summary["eval_history"]] == [4, 8]
    buffer = ReplayBuffer.load(run_dir / "buffer.npz")
    assert buffer.num_episodes == 8 and buffer.obs_shape == (4,) and buffer.action_dim == 2


def test_evaluate_and_imagine_a_saved_model(run_dir, tmp_path, capsys):
    capsys.readouterr()
    common = ["--model", str(run_dir / "model"), "--buffer", str(run_dir / "test_buffer.npz"), "--device", "cpu"]
    assert main(["evaluate", *common, "--batch-size", "4", "--seq-len", "8", "--batches", "2"]) == 0
    out = capsys.readouterr().out
    assert "loss/rec:" in out and "loss:" in out
    plot = tmp_path / "plot.png"
    assert main(["imagine", *common, "--context", "3", "--horizon", "5", "--out", str(plot)]) == 0
    assert plot.read_bytes()[:4] == b"\x89PNG" and "obs MSE" in capsys.readouterr().out


def test_collect_and_errors(tmp_path, capsys):
    path = tmp_path / "data.npz"
    assert main(["collect", "--env", "CartPole-v1", "--episodes", "3", "--out", str(path), "--seed", "1"]) == 0
    assert ReplayBuffer.load(path).num_episodes == 3 and "Wrote" in capsys.readouterr().out
    assert main(["evaluate", "--model", str(tmp_path), "--buffer", str(path)]) == 2
    assert "error" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--set", "no-equals-sign"])


def test_list_models_through_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "worldloom", "list-models"], capture_output=True, text=True,
                         check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}).stdout.split()
    assert "dreamerv3:size1m" in out and "dreamerv3:size12m" in out


def test_list_models_verbose(capsys):
    assert main(["list-models", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "dreamerv3:size12m" in out and "8,852,675 params" in out
