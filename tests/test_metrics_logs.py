"""metrics.jsonl beside TensorBoard in every run, W&B offline, and sinks that fail on their own.

The online run's metrics.jsonl is checked in test_videos_plots.py, on the short runs its videos and plots share.
"""

import glob
import json
import os
import struct
import sys

import pytest

from worldloom.core.errors import ConfigError
from worldloom.training.logs import JsonlWriter, LogSink, LogSinks, run_sinks


def read_events(log_dir) -> dict:
    """``{tag: [(step, value), ...]}`` of the event files in ``log_dir`` (images: their encoded bytes)."""
    from tensorboardX.proto import event_pb2

    events: dict = {}
    for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        data, pos = open(path, "rb").read(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                kind = value.WhichOneof("value")
                item = value.image.encoded_image_string if kind == "image" else value.simple_value
                events.setdefault(value.tag, []).append((event.step, item))
    return events


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def jsonl_values(rows) -> dict:
    """``{tag: [(step, value), ...]}`` of metrics.jsonl rows, in the order written."""
    values: dict = {}
    for row in rows:
        for tag, value in row.items():
            if tag != "step":
                values.setdefault(tag, []).append((row["step"], value))
    return values


def test_every_value_goes_to_both_files_one_line_per_step(tmp_path):
    sinks = run_sinks(tmp_path)
    sinks.add_scalar("train/loss", 1.5, 10)
    sinks.add_scalar("train/lr", 1e-4, 10)
    sinks.add_scalar("train/loss", 1.25, 10)  # the same tag again at the same step: a new line, nothing lost
    sinks.add_scalar("eval/return", float("nan"), 20)
    sinks.flush()
    assert [row["step"] for row in read_jsonl(tmp_path / "metrics.jsonl")] == [10, 10]  # step 20 still open
    sinks.close()
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert rows == [{"step": 10, "train/loss": 1.5, "train/lr": 1e-4}, {"step": 10, "train/loss": 1.25},
                    {"step": 20, "eval/return": None}]  # NaN is strict JSON's null
    events = read_events(tmp_path / "logs")
    assert set(jsonl_values(rows)) == set(events)
    assert [step for step, _ in events["train/loss"]] == [10, 10]


def test_the_files_are_flushed_every_flush_secs_while_a_run_goes_on(tmp_path):
    """A run's logs can be read as it trains (TensorBoard, ``tail -f``): flushed every ``flush_secs``, unclosed."""
    from worldloom.training.logs import TensorBoardWriter

    board, lines = TensorBoardWriter(tmp_path / "logs", flush_secs=0.0), JsonlWriter(tmp_path / "m.jsonl", 0.0)
    for step in (1, 2, 3):
        board.add_scalar("train/loss", float(step), step)
        lines.add_scalar("train/loss", float(step), step)
    assert [step for step, _ in read_events(tmp_path / "logs")["train/loss"]] == [1, 2, 3]
    assert [row["step"] for row in read_jsonl(tmp_path / "m.jsonl")] == [1, 2]  # step 3's line is still open
    board.close(), lines.close()


@pytest.mark.slow(reason="a fresh interpreter imports worldloom, then torch (about 3.5 s)")
def test_tensorboard_logs_load_no_torch_in_a_jax_process(tmp_path):
    """tensorboardX would import torch (installed with the ``torch`` extra) for nothing: a JAX run's logs do not."""
    import subprocess

    script = (
        "import sys\n"
        "from worldloom.training.logs import TensorBoardWriter\n"
        f"board = TensorBoardWriter({str(tmp_path / 'logs')!r}, flush_secs=0.0)\n"
        "board.add_scalar('train/loss', 0.5, 3)\n"
        "board.close()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "import torch\n"  # still importable afterwards, where it is installed
        "print(torch.ones(2).sum().item())\n")
    pytest.importorskip("torch")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "2.0", done.stderr
    assert read_events(tmp_path / "logs")["train/loss"] == [(3, 0.5)]


def test_a_resumed_run_appends(tmp_path):
    for step in (1, 2):
        writer = JsonlWriter(tmp_path / "metrics.jsonl")
        writer.add_scalar("train/loss", step, step)
        writer.close()
    assert [row["step"] for row in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]


def test_a_failing_sink_warns_once_and_the_others_go_on(tmp_path):
    class Broken:
        def add_scalar(self, *args):
            raise ValueError("the service went away")

        def flush(self):
            pass

        def close(self):
            pass

    good = JsonlWriter(tmp_path / "metrics.jsonl")
    sinks = LogSinks([LogSink(Broken, "W&B"), LogSink(lambda: good, tmp_path / "metrics.jsonl")])
    with pytest.warns(RuntimeWarning, match="Logging to W&B stopped: the service went away") as caught:
        for step in range(3):
            sinks.add_scalar("train/loss", 1.0, step)
        sinks.close()
    assert len([w for w in caught if "Logging to" in str(w.message)]) == 1
    assert [row["step"] for row in read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1, 2]


def test_an_unknown_logger_or_a_missing_wandb_is_refused(tmp_path, monkeypatch):
    from worldloom.training.callbacks import LoggingCallback

    with pytest.raises(ConfigError, match="logger: expected one of 'tensorboard', 'wandb', got 'mlflow'"):
        run_sinks(tmp_path, logger="mlflow")
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"needs the wandb package: pip install 'worldloom\[wandb\]'"):
        run_sinks(tmp_path, logger="wandb")
    with pytest.raises(ConfigError, match="needs the wandb package"):
        LoggingCallback(log_dir=tmp_path / "logs", logger="wandb")
    assert not (tmp_path / "logs").exists()


@pytest.mark.slow(reason="W&B starts its service process (about 5 s here)")
def test_a_wandb_offline_run_leaves_its_run_directory(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed (the optional `wandb` extra)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sinks = run_sinks(tmp_path, logger="wandb", config={"env": "CartPole-v1"})
    for step in range(3):
        sinks.add_scalar("train/loss", 1.0 / (step + 1), step)
    sinks.close()
    runs = glob.glob(str(tmp_path / "wandb" / "offline-run-*"))
    assert len(runs) == 1 and glob.glob(os.path.join(runs[0], "run-*.wandb"))
    assert (tmp_path / "metrics.jsonl").is_file() and read_events(tmp_path / "logs")  # the other sinks too


@pytest.mark.slow(reason="a short `worldloom train` run (8 updates of the tiny model)")
def test_a_train_run_writes_metrics_jsonl_with_the_tensorboard_tags(tmp_path):
    from worldloom.cli import main

    args = ["train", "--env", "CartPole-v1", "--model", "dreamerv3:size1m", "--episodes", "8", "--test-episodes", "6",
            "--steps", "8", "--batch-size", "4", "--seq-len", "8", "--steps-per-dispatch", "4", "--warmup-steps", "2",
            "--eval-interval", "4", "--log-interval", "4", "--context", "3", "--horizon", "5", "--device", "cpu",
            "--seed", "0", "--no-progress", "--out", str(tmp_path / "run")]
    for override in ("deter=64", "hidden=32", "units=32", "classes=4", "stoch=4", "enc_layers=1", "dec_layers=1",
                     "img_layers=1"):
        args += ["--set", override]
    assert main(args) == 0
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    events = read_events(tmp_path / "run" / "logs")
    assert set(jsonl_values(rows)) == set(events)
    assert {"train/loss", "train/updates_per_sec", "eval/loss"} <= set(events)
    assert [row["step"] for row in rows] == [4, 8]  # one line per logged step: the losses and the evaluation


def test_two_tensorboard_writers_of_one_directory_keep_both_files(tmp_path):
    # A callback's own writer beside the run's, opened in the same second: neither truncates the other's file.
    first, second = run_sinks(tmp_path, jsonl=False), run_sinks(tmp_path, jsonl=False)
    first.add_scalar("train/loss", 1.0, 1)
    second.add_scalar("custom/metric", 2.0, 1)
    first.close()
    second.close()
    assert len(glob.glob(str(tmp_path / "logs" / "events.out.tfevents.*"))) == 2
    assert {"train/loss", "custom/metric"} <= set(read_events(tmp_path / "logs"))
