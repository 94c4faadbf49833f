"""Callbacks: TensorBoard logging, checkpoints (keep_last, corruption), early stopping, progress bar.

The trainer runs use the tiny model and optimiser setting of test_trainer.py,
so in one pytest session they reuse its compiled program.
"""

import glob
import json
import os
import types

import numpy as np
import pytest
from test_metrics_logs import read_events

from worldloom import create_world_model
from worldloom.core.errors import CheckpointError, ConfigError, UnknownModelError
from worldloom.training import Trainer, TrainingConfig
from worldloom.training.callbacks import (
    Callback,
    CheckpointCallback,
    EarlyStoppingCallback,
    LoggingCallback,
    ProgressCallback,
)
from worldloom.training.data import create_random_buffer

SMALL = dict(deter=64, hidden=32, units=32, classes=4, stoch=4, enc_layers=1, dec_layers=1, img_layers=1,
             action_type="discrete")


def make_model(**changes):
    return create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, device="cpu", **{**SMALL, **changes})


def make_config(**changes):
    values = dict(total_steps=8, batch_size=4, sequence_length=8, steps_per_dispatch=4, device="cpu",
                  eval_interval=0, warmup_steps=2)
    values.update(changes)
    return TrainingConfig(**values)


@pytest.fixture(scope="module")
def buffer():
    return create_random_buffer(2000, (4,), 2, num_episodes=30, episode_length=12, seed=0)


@pytest.mark.slow
def test_logging_checkpoints_and_progress_in_one_run(buffer, tmp_path, capsys, monkeypatch):
    logs, ckpt = tmp_path / "logs", tmp_path / "ckpt"
    checkpoint = CheckpointCallback(save_dir=ckpt, save_every=2, keep_last=2)
    trainer = Trainer(make_model(), make_config(eval_interval=4, eval_fraction=0.1, eval_batches=1, log_interval=8))
    trainer.add_callback(ProgressCallback(refresh_every=2, desc="fit"))
    trainer.add_callback(LoggingCallback(log_dir=logs, log_to_console=True, log_interval=2))
    trainer.add_callback(LoggingCallback(log_dir=tmp_path / "config_interval"))
    trainer.add_callback(checkpoint)
    trainer.train(buffer)

    scalars = read_events(logs)
    assert [step for step, _ in scalars["train/loss"]] == [2, 4, 6, 8]
    assert [step for step, _ in scalars["eval/loss"]] == [4, 8]
    assert {"train/loss/rec", "train/lr", "train/updates_per_sec", "eval/loss/rew"} <= set(scalars)
    assert all(np.isfinite(v) for _, v in scalars["train/loss"])
    assert [v for _, v in scalars["train/lr"]] == pytest.approx([0.75e-4, 3e-4, 3e-4, 3e-4])  # means of steps
    assert [step for step, _ in read_events(tmp_path / "config_interval")["train/loss"]] == [8]  # log_interval
    out, err = capsys.readouterr()
    assert "[train] step 2 | " in out and "[eval] step 8 | " in out
    assert "loss=" in err and "upd/s=" in err and "8/8" in err and "fit" in err  # the tqdm bar, labelled
    final = [line for line in err.replace("\r", "\n").splitlines() if "8/8" in line][-1]
    assert f"eval={trainer.eval_history[-1][1]['eval/loss']:.4f}" in final  # the last evaluation's, not the one before

    # Exactly the newest two of the checkpoints at 2, 4, 6 and 8, and nothing half-written.
    assert sorted(os.listdir(ckpt)) == ["best", "step_00000006", "step_00000008"]
    assert [p.name for p in checkpoint.checkpoints()] == ["step_00000006", "step_00000008"]
    meta = json.loads((ckpt / "step_00000008" / "meta.json").read_text())
    assert meta["step"] == 8 and meta["family"] == "dreamerv3" and meta["sampler"]["next_step"] == 8
    assert meta["data"]["eval_segments"] is not None
    # A step's checkpoint is a train state, not a saved model: loading it by path says where the model is
    with pytest.raises(CheckpointError, match=r"is a training checkpoint .*resume_from=path.*save_dir/best"):
        create_world_model(str(ckpt / "step_00000008"))
    with monkeypatch.context() as patch:  # named relative to the working directory, where a name is a preset's
        patch.chdir(ckpt)
        with pytest.raises(UnknownModelError, match=r"'step_00000008' here is a training checkpoint .*resume_from"):
            create_world_model("step_00000008")
    assert create_world_model(str(ckpt / "best")).num_parameters() > 0


def test_updates_per_sec_is_the_rate_of_the_dispatch_when_logged_inside_one(buffer, tmp_path):
    # K=4 updates per dispatch reach the callbacks together; a rate over the instants they are handed over
    # would be the dispatch's time for its first update and next to nothing for the other three.
    metrics = tmp_path / "metrics.jsonl"
    trainer = Trainer(make_model(), make_config(total_steps=12),
                      [LoggingCallback(metrics_file=metrics, log_interval=1, log_to_tensorboard=False)])
    trainer.train(buffer)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    # The first dispatch's updates carry the compilation: logged without a rate.
    assert len(rows) == 12 and not any("train/updates_per_sec" in row for row in rows[:4])
    rates = [row["train/updates_per_sec"] for row in rows[4:]]
    assert all(rate > 0 for rate in rates)
    for dispatch in (rates[0:4], rates[4:8]):
        assert dispatch == [dispatch[0]] * 4, rates
    assert trainer.step_seconds == pytest.approx(1 / rates[-1])


@pytest.mark.slow
def test_resume_rejects_corrupt_or_foreign_checkpoints(buffer, tmp_path):
    Trainer(make_model(), make_config(total_steps=4), [CheckpointCallback(tmp_path, save_every=None)]).train(buffer)
    assert sorted(os.listdir(tmp_path)) == ["best", "step_00000004"]  # save_every=None: only at the end
    with pytest.raises(CheckpointError, match="was written for a dreamerv3 model"):
        Trainer(make_model(deter=128), make_config(), resume_from=tmp_path).train(buffer)
    state_files = [p for p in glob.glob(str(tmp_path / "step_00000004" / "state" / "**"), recursive=True)
                   if os.path.isfile(p) and os.path.getsize(p) > 100]
    with open(max(state_files, key=os.path.getsize), "r+b") as handle:  # flip bytes of the largest array file
        handle.seek(os.path.getsize(handle.name) // 2)
        handle.write(b"\xff" * 64)
    with pytest.raises(CheckpointError):
        Trainer(make_model(), make_config(), resume_from=tmp_path).train(buffer)
    (tmp_path / "step_00000004" / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Trainer(make_model(), make_config(), resume_from=tmp_path / "step_00000004").train(buffer)


@pytest.mark.slow
def test_early_stopping_stops_training(buffer):
    stopper = EarlyStoppingCallback(monitor="loss", patience=2, min_delta=1e9)  # nothing counts as better
    trainer = Trainer(make_model(), make_config(total_steps=40), [stopper])
    trainer.train(buffer)
    assert stopper.stopped_step == 3  # best at step 1, two steps without improvement
    assert trainer.step == 4  # the dispatch in flight finishes


def fake_trainer(step=0, total=100):
    return types.SimpleNamespace(step=step, stop_training=False, config=TrainingConfig(total_steps=total))


def test_early_stopping_semantics(capsys):
    trainer = fake_trainer()
    stopper = EarlyStoppingCallback(monitor="loss", patience=3, min_delta=0.1)
    stopper.on_train_begin(trainer)
    for step, loss in enumerate([5.0, 4.0, 3.95, 3.92, 3.91], start=1):  # improves by < 0.1 after step 2
        stopper.on_step_end(step, {"loss": loss})
        assert trainer.stop_training == (step >= 5)
    maximise = EarlyStoppingCallback(monitor="eval/reward", patience=15, mode="max")
    trainer = fake_trainer()
    maximise.on_train_begin(trainer)
    maximise.on_step_end(5, {"loss": 1.0})  # no eval metric: ignored
    maximise.on_eval_end(10, {"eval/reward": 1.0})
    maximise.on_eval_end(20, {"eval/reward": 2.0})
    maximise.on_eval_end(30, {"eval/reward": 1.5})
    assert not trainer.stop_training
    maximise.on_eval_end(35, {"eval/reward": 1.9})  # 15 steps since the best
    assert trainer.stop_training and maximise.stopped_step == 35
    assert (maximise.best, maximise.best_step) == (2.0, 20)  # the metric's own value, in either mode
    assert ("Early stopping at step 35: eval/reward has not improved by more than 0.0001 in 15 steps (patience 15); "
            "best 2 at step 20.") in capsys.readouterr().err
    for bad in (dict(patience=0), dict(min_delta=-1.0), dict(mode="best")):
        with pytest.raises(ConfigError):
            EarlyStoppingCallback(**bad)


def test_custom_callback_hooks_order():
    calls = []

    class Spy(Callback):
        def on_train_begin(self, trainer):
            super().on_train_begin(trainer)
            calls.append("begin")

        def on_step_end(self, step, losses):
            calls.append(step)

        def on_train_end(self, trainer):
            calls.append("end")

    spy, trainer = Spy(), fake_trainer()
    spy.on_train_begin(trainer)
    spy.on_step_end(1, {"loss": 0.5})
    spy.on_eval_end(1, {"eval/loss": 0.4})  # the base hook is a no-op
    spy.on_train_end(trainer)
    assert calls == ["begin", 1, "end"] and spy.trainer is trainer and spy.sync_interval() is None
    assert CheckpointCallback("x", save_every=500).sync_interval() == 500
    with pytest.raises(ConfigError):
        CheckpointCallback("x", keep_last=0)
    with pytest.raises(ConfigError):
        LoggingCallback("x", log_interval=0)


def test_progress_off_a_terminal_is_plain_periodic_lines():
    import io

    from worldloom.core.progress import LineProgress, progress

    now = [0.0]
    out = io.StringIO()
    line = LineProgress(100, desc="train", file=out, interval=30.0, clock=lambda: now[0])
    now[0] = 50.0
    line.update(1)  # the first step: 50 s of compilation
    line.restart_clock()
    for _ in range(40):
        now[0] += 1.0
        line.update(1)
        line.set_postfix({"loss": "0.1"})
    line.close()
    text = out.getvalue()
    assert "\r" not in text and len(text.splitlines()) == 3  # at 50 s, after 30 more seconds, at the end
    last = text.splitlines()[-1]
    # 40 steps in 40 s after compiling: 1 step/s and 59 steps to go, whatever the first step cost.
    assert last.startswith("train: 41/100 steps (41%), 1.00 step/s, ETA 00:59") and last.endswith("loss=0.1")
    assert isinstance(progress(10, file=io.StringIO()), LineProgress)


@pytest.mark.slow(reason="a training run (the shared tiny program) with a log directory on a full disk")
def test_a_log_directory_on_a_full_disk_warns_once_and_training_goes_on(buffer, tmp_path, monkeypatch):
    from worldloom.training.logs import TensorBoardWriter

    def full_disk(self, *args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TensorBoardWriter, "add_scalar", full_disk)
    trainer = Trainer(make_model(), make_config(log_interval=2))
    trainer.add_callback(LoggingCallback(log_dir=tmp_path / "logs"))
    with pytest.warns(RuntimeWarning, match="Logging to .*logs stopped: No space left on device") as caught:
        trainer.train(buffer)
    assert trainer.step == 8 and not trainer.interrupted
    assert len([w for w in caught if "Logging to" in str(w.message)]) == 1


@pytest.mark.parametrize("make, message", [
    (lambda d: EarlyStoppingCallback(patience=2.5), r"patience: expected an integer >= 1, got 2.5"),
    (lambda d: EarlyStoppingCallback(patience="7"), r"patience: expected an integer >= 1, got '7'"),
    (lambda d: EarlyStoppingCallback(min_delta=float("inf")), r"min_delta: expected a finite number >= 0"),
    (lambda d: EarlyStoppingCallback(monitor=""), r"monitor must be a metric name"),
    (lambda d: CheckpointCallback(save_dir=d, save_every=True), r"save_every: expected an integer >= 1, got True"),
    (lambda d: CheckpointCallback(save_dir=d, save_best="no"), r"save_best: expected True or False, got str 'no'"),
    (lambda d: CheckpointCallback(save_dir=None), r"save_dir: expected a path, got NoneType None"),
    (lambda d: LoggingCallback(log_interval=2.5), r"log_interval: expected an integer >= 1, got 2.5"),
    (lambda d: LoggingCallback(log_dir=d, log_to_console="no"), r"log_to_console: expected True or False"),
    (lambda d: ProgressCallback(refresh_every=0), r"refresh_every: expected an integer >= 1, got 0"),
])
def test_callback_arguments_are_checked_not_coerced(tmp_path, make, message):
    with pytest.raises(ConfigError, match=message):
        make(tmp_path / "out")
