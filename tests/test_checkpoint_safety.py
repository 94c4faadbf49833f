"""Nothing lost, nothing silently wrong: saved models, train-state checkpoints and checkpoint callbacks.

The trainer runs use the tiny model and optimiser setting of test_trainer.py,
so in one pytest session they reuse its compiled program.
"""

import glob
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import types
import warnings

import jax
import numpy as np
import pytest

from worldloom import create_world_model
from worldloom.core import files, persist
from worldloom.core.errors import CheckpointError, ConfigError
from worldloom.core.files import host_tag
from worldloom.models.checkpoint import is_saved_model
from worldloom.training import Trainer, TrainingConfig, _checkpoint
from worldloom.training.callbacks import (
    Callback,
    CheckpointCallback,
    EarlyStoppingCallback,
    LoggingCallback,
)
from worldloom.training.data import create_random_buffer

SMALL = dict(deter=64, hidden=32, units=32, classes=4, stoch=4, enc_layers=1, dec_layers=1, img_layers=1,
             action_type="discrete")
CHILD_ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def make_model(seed=0, **changes):
    return create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, device="cpu", seed=seed,
                              **{**SMALL, **changes})


def make_config(**changes):
    values = dict(total_steps=8, batch_size=4, sequence_length=8, steps_per_dispatch=4, device="cpu",
                  eval_interval=0, warmup_steps=2)
    values.update(changes)
    return TrainingConfig(**values)


def leaves(params):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


class Record(Callback):
    def __init__(self):
        self.losses = []

    def on_step_end(self, step, losses):
        self.losses.append(losses)


@pytest.fixture(scope="module")
def buffer():
    return create_random_buffer(2000, (4,), 2, num_episodes=30, episode_length=12, seed=0)


@pytest.fixture(scope="module")
def dead_pid():
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture(scope="module")
def reference(buffer, tmp_path_factory):
    """An uninterrupted 8-update run with a checkpoint every 2 (all kept) and its final params."""
    directory = tmp_path_factory.mktemp("reference") / "ckpt"
    record = Record()
    trainer = Trainer(make_model(), make_config(),
                      [CheckpointCallback(directory, save_every=2, keep_last=None, save_best=False), record])
    model = trainer.train(buffer)
    return {"dir": directory, "params": leaves(model.params), "run_id": trainer.run_id, "losses": record.losses}


def copy_run(reference, tmp_path, keep=("step_00000002", "step_00000004", "step_00000006", "step_00000008")):
    target = tmp_path / "ckpt"
    target.mkdir()
    for name in keep:
        shutil.copytree(reference["dir"] / name, target / name)
    return target


def corrupt_largest_state_file(step_dir):
    files = [p for p in glob.glob(str(step_dir / "state" / "**"), recursive=True) if os.path.isfile(p)]
    with open(max(files, key=os.path.getsize), "r+b") as handle:
        handle.seek(os.path.getsize(handle.name) // 2)
        handle.write(b"\xff" * 64)


def run_child(code, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=CHILD_ENV,
                          cwd=tmp_path, timeout=300)


# ------------------------------------------------------------ saved models


def test_save_refuses_what_is_not_a_saved_model(tmp_path):
    model = make_model()
    user_dir = tmp_path / "mine"
    user_dir.mkdir()
    (user_dir / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match=r"expected a new path, an empty directory or a saved model, got a "
                                              r"directory that is not a saved worldloom model \(it holds notes.txt\)"
                                              r".*overwrite=True"):
        model.save_pretrained(user_dir)
    with pytest.raises(ConfigError, match=r"overwrite: expected True or False, got str 'no'"):
        model.save_pretrained(user_dir, overwrite="no")  # not taken for a yes
    assert (user_dir / "notes.txt").read_text() == "keep me"

    saved = tmp_path / "some_model"
    model.save_pretrained(saved)
    config_text = (saved / "config.json").read_text()
    with pytest.raises(CheckpointError, match=r"got a file \(\d+ bytes\)"):
        model.save_pretrained(saved / "config.json")
    assert (saved / "config.json").read_text() == config_text and is_saved_model(saved)

    empty = tmp_path / "empty"
    empty.mkdir()
    model.save_pretrained(empty)  # an empty directory holds nothing to lose
    model.save_pretrained(saved)  # nor does an earlier saved model
    model.save_pretrained(user_dir, overwrite=True)  # asked for
    assert not (user_dir / "notes.txt").exists()
    assert same(leaves(create_world_model(str(user_dir)).params), leaves(model.params))
    assert sorted(os.listdir(tmp_path)) == ["empty", "mine", "some_model"]  # no temporary leftovers


def test_an_overwritten_model_is_loadable_at_every_moment(tmp_path, monkeypatch):
    path = tmp_path / "model"
    make_model(seed=1).save_pretrained(path)
    swaps, exchange = [], files._exchange
    monkeypatch.setattr(files, "_exchange", lambda a, b: swaps.append(exchange(a, b)) or swaps[-1])
    seen, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            seen.append(is_saved_model(path) and (path / "weights").is_dir())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for seed in (2, 3, 4):
            make_model(seed=seed).save_pretrained(path)
    finally:
        stop.set()
        watcher.join()
    assert seen and all(seen), f"{seen.count(False)} of {len(seen)} looks found no model"
    if sys.platform.startswith("linux"):
        assert swaps == [True, True, True]  # each replace was one atomic exchange
    assert same(leaves(create_world_model(str(path)).params), leaves(make_model(seed=4).params))


@pytest.mark.slow
def test_a_kill_between_the_renames_of_a_replace_leaves_the_old_model(tmp_path):
    """Without an atomic exchange, a replace renames the old model away, then the new one in; kill -9 between."""
    result = run_child(f"""
        import os, signal
        from worldloom import create_world_model
        from worldloom.core import files
        model = lambda seed: create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, device="cpu",
                                                seed=seed, **{SMALL!r})
        model(1).save_pretrained("model")
        files._exchange = lambda a, b: False
        rename = os.rename
        def rename_then_die(src, dst):
            if os.path.basename(str(dst)) == "model":  # the second rename: the new model into place
                os.kill(os.getpid(), signal.SIGKILL)
            rename(src, dst)
        files.os.rename = rename_then_die
        model(2).save_pretrained("model")
        print("not killed")
        """, tmp_path)
    assert result.returncode == -9, result.stderr
    names = os.listdir(tmp_path)
    assert "model" not in names and any(n.startswith(".model.old-") for n in names), names
    loaded = create_world_model(str(tmp_path / "model"))  # the next open puts the old model back
    assert same(leaves(loaded.params), leaves(make_model(seed=1).params))
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith(".")) == []


def test_leftovers_of_killed_writes_are_cleaned_and_nothing_else(tmp_path, dead_pid):
    make_model().save_pretrained(tmp_path / "model")
    host = host_tag()
    ours = [f".model.tmp-{host}-{dead_pid}-0123abcd", f".step_00000004.trash-{host}-{dead_pid}-89abcdef",
            f".model.old-{host}-{dead_pid}-00ff00ff", ".model.tmp-fedcba98"]
    for name in ours:
        (tmp_path / name / "weights").mkdir(parents=True)
    old = time.time() - 3600
    os.utime(tmp_path / ".model.tmp-fedcba98", (old, old))  # an earlier version's name, an hour old
    (tmp_path / f".other.tmp-{host}-{dead_pid}-11112222").write_bytes(b"half")
    # This process writes nothing now: its own temporary directory is a leftover too (a failed write's).
    (tmp_path / f".model.tmp-{host}-{os.getpid()}-44445555").mkdir()
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    live = f".model.tmp-{host}-{writer.pid}-33334444"  # a write in progress (a live process)
    elsewhere = f".model.tmp-{'000000' if host != '000000' else '111111'}-{dead_pid}-99990000"  # another machine's
    theirs = [".model.tmp-notes", "model.tmp-12345678", ".young.tmp-55556666", elsewhere, ".buffer.npz.tmp-77778888",
              live]
    for name in theirs[:-2]:
        (tmp_path / name).mkdir()
    (tmp_path / ".buffer.npz.tmp-77778888").write_bytes(b"PK\x03\x04")  # the buffer cleaner's business
    (tmp_path / live).mkdir()

    try:
        create_world_model(str(tmp_path / "model"))  # opening the directory cleans it
    finally:
        writer.kill()
        writer.wait()
    assert sorted(os.listdir(tmp_path)) == sorted(["model", *theirs])


def test_config_and_weights_are_checked_against_each_other(tmp_path):
    path = tmp_path / "model"
    make_model().save_pretrained(path)
    with pytest.raises(ConfigError, match=r"Overrides deter=128 \(saved: 64\) do not fit the weights.*"
                                          r"\S+: the config expects \[[\d, ]+\] float32, the weights hold "
                                          r"\[[\d, ]+\] float32"):
        create_world_model(str(path), deter=128)
    meta = json.loads((path / "config.json").read_text())
    meta["hidden"] = 48
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"saved model .* is damaged: config.json holds \d+ bytes, expected "):
        create_world_model(str(path))  # the manifest names the edited file
    persist.write_manifest(path, "worldloom-model", 3)  # edited and listed so: the shapes still disagree
    with pytest.raises(CheckpointError, match=r"config.json does not match the weights .*\(was the config edited\?\)"
                                              r".*: the config expects \[[\d, ]*48[\d, ]*\] float32, the weights "
                                              r"hold \[[\d, ]*32[\d, ]*\] float32"):
        create_world_model(str(path))


@pytest.mark.slow
def test_damaged_weights_name_the_file_and_print_no_tracebacks(tmp_path):
    result = run_child(f"""
        import gc, glob, json, os, time
        from worldloom import create_world_model
        from worldloom.core.errors import CheckpointError
        create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, device="cpu",
                           **{SMALL!r}).save_pretrained("model")
        largest = max(glob.glob("model/weights/**/d/*", recursive=True), key=os.path.getsize)
        with open(largest, "r+b") as handle:  # cut in half, as by a full disk
            handle.truncate(os.path.getsize(largest) // 2)
        for drop_manifest in (False, True):
            if drop_manifest:  # as an earlier version wrote it, with no file list: orbax itself meets the damage
                fields = json.load(open("model/config.json"))
                del fields["model_type"]
                meta = dict(json.load(open("model/worldloom.json")), version=1, config=fields)
                json.dump(meta, open("model/config.json", "w"))
                os.remove("model/worldloom.json")
                os.remove("model/manifest.json")
            try:
                create_world_model("model")
            except CheckpointError as err:
                print("CheckpointError:", str(err)[:200])
        time.sleep(1.0)  # orbax's abandoned reads report late: through sys.unraisablehook, or through asyncio's
        gc.collect()     # logger when their never-retrieved tasks are collected
        # How many reads orbax abandons depends on timing; these two tasks' reports reach asyncio's logger for sure:
        # one about the damaged weights (dropped), one about another directory's file (kept).
        import asyncio, sys
        sys.stderr.write("--- late reports\\n")
        async def read(path):
            raise ValueError(f'Error reading "a/0.0" in OCDBT database at local file "{{path}}/": byte range')
        loop = asyncio.new_event_loop()
        for path in (os.path.abspath("model/weights"), os.path.abspath("elsewhere")):
            task = loop.create_task(read(path))
            loop.run_until_complete(asyncio.sleep(0))
            del task
            gc.collect()
        loop.close()
        """, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    assert re.search(r"is damaged: weights/\S+ holds (\d+) bytes, expected (\d+)", lines[0]), lines[0]
    assert "Could not read the weights" in lines[1]
    restore, late = result.stderr.split("--- late reports\n")
    assert "Event loop is closed" not in restore and "Traceback" not in restore, restore[-2000:]
    assert "Task exception was never retrieved" in late and 'elsewhere/"' in late and 'weights/"' not in late, late


# ------------------------------------------------------------ train-state checkpoints


def test_a_fresh_run_refuses_a_directory_holding_another_run(buffer, reference, tmp_path):
    directory = copy_run(reference, tmp_path, keep=("step_00000006", "step_00000008"))
    before = sorted(os.listdir(directory))
    trainer = Trainer(make_model(), make_config(total_steps=4), [CheckpointCallback(directory, save_every=2,
                                                                                    keep_last=1)])
    with pytest.raises(CheckpointError, match=r"holds checkpoints of another run \(step_00000006, step_00000008\)"
                                              r".*Pass resume=True .* or choose another directory"):
        trainer.train(buffer)
    assert trainer.step == 0 and sorted(os.listdir(directory)) == before  # nothing trained, nothing deleted
    # The same directory continues that run, and keep_last then deletes its older checkpoints.
    resumed = Trainer(make_model(), make_config(total_steps=10), [CheckpointCallback(directory, save_every=2,
                                                                                     keep_last=1, save_best=False)])
    resumed.train(buffer, resume=True)
    assert resumed.run_id == reference["run_id"]
    assert sorted(os.listdir(directory)) == ["step_00000010"]


def test_a_user_folder_named_best_is_named_as_what_it_is_and_kept(buffer, tmp_path):
    (tmp_path / "ckpt" / "best").mkdir(parents=True)
    (tmp_path / "ckpt" / "best" / "user.txt").write_text("mine")
    trainer = Trainer(make_model(), make_config(total_steps=4), [CheckpointCallback(tmp_path / "ckpt", save_every=2)])
    with pytest.raises(CheckpointError, match=r"best' holds files that are not a saved worldloom model.*"
                                              r"move those files, or pass save_best=False"):
        trainer.train(buffer)
    assert (tmp_path / "ckpt" / "best" / "user.txt").read_text() == "mine" and trainer.step == 0
    assert not (tmp_path / "ckpt" / ".worldloom-writer.lock").exists()  # the failed run holds the directory no more


def test_keep_last_deletes_only_this_runs_checkpoints(tmp_path):
    tree = {"x": np.arange(4.0)}
    for step in (1, 2, 3):
        _checkpoint.save_checkpoint(tmp_path / "a", step, tree, {"run_id": "run-a"}, keep_last=2)
    assert [s for s, _ in _checkpoint.list_checkpoints(tmp_path / "a")] == [2, 3]
    _checkpoint.save_checkpoint(tmp_path / "b", 9, tree, {"run_id": "run-b"})
    shutil.copytree(tmp_path / "b" / "step_00000009", tmp_path / "a" / "step_00000009")
    with pytest.raises(CheckpointError, match=r"holds checkpoints of another run \(step_00000009\)"):
        _checkpoint.save_checkpoint(tmp_path / "a", 4, tree, {"run_id": "run-a"}, keep_last=1)
    assert [s for s, _ in _checkpoint.list_checkpoints(tmp_path / "a")] == [2, 3, 9]
    assert [s for s, _ in _checkpoint.list_checkpoints(tmp_path / "a", "run-a")] == [2, 3]


def test_a_checkpoint_is_not_written_over_what_this_run_did_not_write(tmp_path):
    tree = {"x": np.arange(4.0)}
    (tmp_path / "a" / "step_00000002").mkdir(parents=True)
    (tmp_path / "a" / "step_00000002" / "mine.txt").write_text("mine")
    (tmp_path / "a" / "step_00000003").write_text("a file")
    for step in (2, 3):
        with pytest.raises(CheckpointError, match=rf"Cannot write the checkpoint .*step_0000000{step}': expected "
                                                  r"nothing there or a checkpoint of this run, got a"):
            _checkpoint.save_checkpoint(tmp_path / "a", step, tree, {"run_id": "run-a"})
    assert (tmp_path / "a" / "step_00000002" / "mine.txt").read_text() == "mine"
    assert (tmp_path / "a" / "step_00000003").read_text() == "a file"
    _checkpoint.save_checkpoint(tmp_path / "a", 4, tree, {"run_id": "run-a"})
    _checkpoint.save_checkpoint(tmp_path / "a", 4, {"x": np.ones(4)}, {"run_id": "run-a"})  # its own: replaced
    assert _checkpoint.list_checkpoints(tmp_path / "a", "run-a")[0][0] == 4


def test_a_damaged_meta_file_is_skipped_on_resume_and_written_again(buffer, reference, tmp_path):
    directory = copy_run(reference, tmp_path, keep=("step_00000002", "step_00000004", "step_00000006"))
    (directory / "step_00000006" / "meta.json").write_text('{"format": "worldloom-train-st')  # cut short
    trainer = Trainer(make_model(), make_config(), [CheckpointCallback(directory, save_every=2, keep_last=None,
                                                                       save_best=False)])
    with pytest.warns(RuntimeWarning, match=r"Resuming from .*step_00000004, the newest checkpoint that loads"):
        model = trainer.train(buffer, resume=True)  # not "checkpoints of another run"
    assert same(leaves(model.params), reference["params"])
    assert _checkpoint.read_meta(directory / "step_00000006")["run_id"] == reference["run_id"]  # written again


@pytest.mark.parametrize("field, value", [("step", "abc"), ("step", -1), ("sampler", "abc"),
                                          ("sampler", {"seed": "x"}), ("run_id", 5), ("eval_history", {})])
def test_an_edited_meta_file_is_named_not_a_traceback(tmp_path, field, value):
    """A meta.json edited by hand (and its manifest made to match) is a CheckpointError naming the field."""
    path = _checkpoint.save_checkpoint(tmp_path / "a", 2, {"x": np.arange(4.0)},
                                       {"run_id": "run-a", "sampler": {"seed": 0}, "eval_history": []})
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps(dict(meta, **{field: value})))
    persist.write_manifest(path, _checkpoint.FORMAT, _checkpoint.VERSION)
    with pytest.raises(CheckpointError, match=rf"meta.json: expected {field}\S* to be .*, got .*; the checkpoint "
                                              r"is damaged or was edited"):
        _checkpoint.read_meta(path)


def test_an_interrupted_deletion_is_no_checkpoint_and_is_removed(buffer, reference, tmp_path, dead_pid):
    directory = copy_run(reference, tmp_path, keep=("step_00000004", "step_00000006"))
    shutil.rmtree(directory / "step_00000006" / "state")  # meta.json left, state/ gone
    (directory / f".step_00000002.trash-{host_tag()}-{dead_pid}-0a0b0c0d" / "state").mkdir(parents=True)
    assert [p.name for _, p in _checkpoint.list_checkpoints(directory)] == ["step_00000004"]
    callback = CheckpointCallback(directory, save_every=None, save_best=False)
    assert [p.name for p in callback.checkpoints()] == ["step_00000004"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # nothing to fall back from: no warning
        model = Trainer(make_model(), make_config(), [callback]).train(buffer, resume=True)
    assert same(leaves(model.params), reference["params"])
    assert sorted(os.listdir(directory)) == ["step_00000004", "step_00000008"]


def test_resume_falls_back_to_the_newest_good_checkpoint_and_says_so(buffer, reference, tmp_path):
    directory = copy_run(reference, tmp_path, keep=("step_00000002", "step_00000004", "step_00000006"))
    corrupt_largest_state_file(directory / "step_00000006")
    with pytest.warns(RuntimeWarning, match=r"step_00000004, the newest checkpoint that loads"):
        step, params = Trainer(make_model(), make_config()).checkpoint_params(directory)  # the same fallback
    assert step == 4
    trainer = Trainer(make_model(), make_config(), [CheckpointCallback(directory, save_every=2, keep_last=None,
                                                                       save_best=False)])
    with pytest.warns(RuntimeWarning, match=r"Resuming from .*step_00000004, the newest checkpoint that loads; "
                                            r"skipped newer ones that do not: step_00000006 \(The training checkpoint "
                                            r"at .* is damaged: state/.*different content"):
        model = trainer.train(buffer, resume=True)
    assert same(leaves(model.params), reference["params"])  # bit for bit from the good one
    for _, path in _checkpoint.list_checkpoints(directory):  # step 6 was written again, whole
        _checkpoint.check_files(path / "state", _checkpoint.read_meta(path)["state_files"], "state")


def test_a_second_writer_gets_a_checkpoint_error(buffer, tmp_path):
    directory = tmp_path / "ckpt"
    directory.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": other.pid, "host": socket.gethostname(), "token": "t", "since": "now"}
        (directory / ".worldloom-writer.lock").write_text(json.dumps(lock))
        trainer = Trainer(make_model(), make_config(total_steps=2), [CheckpointCallback(directory)])
        with pytest.raises(CheckpointError, match=rf"being written by process {other.pid} on .*expected one writer "
                                                  r"per directory"):
            trainer.train(buffer)
        with pytest.raises(CheckpointError, match="being written by process"):
            _checkpoint.save_checkpoint(directory, 1, {"x": np.zeros(2)}, {"run_id": "r"})
        assert os.listdir(directory) == [".worldloom-writer.lock"]
    finally:
        other.kill()
        other.wait()
    trainer.train(buffer)  # the lock of a process that is gone is stale: taken over
    assert sorted(os.listdir(directory)) == ["best", "step_00000002"]  # and released at the end


def test_a_directory_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    import errno

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.os, "open", read_only)
    with pytest.raises(CheckpointError, match=r"Cannot write in '.*ro': expected a directory this process can write, "
                                              r"got \[Errno 30\] Read-only file system"):
        files.WriterLock(tmp_path / "ro").acquire()


def test_resume_checks_the_buffer_and_total_steps(buffer, reference):
    newest = reference["dir"] / "step_00000008"
    bigger = create_random_buffer(2000, (4,), 2, num_episodes=40, episode_length=12, seed=0)
    with pytest.warns(RuntimeWarning, match=r"on another buffer than the checkpoint was trained on "
                                            r"\(num_transitions: checkpoint 360, this run 480"):
        Trainer(make_model(), make_config(total_steps=9), resume_from=newest).train(bigger)
    other = create_random_buffer(2000, (4,), 2, num_episodes=30, episode_length=12, seed=7)  # same size, other data
    assert other.num_transitions == buffer.num_transitions
    with pytest.warns(RuntimeWarning, match=r"on another buffer .*buffer_digest: checkpoint"):
        Trainer(make_model(), make_config(total_steps=9), resume_from=newest).train(other)
    with pytest.raises(ConfigError, match=r"is at step 8: expected total_steps >= 8, got total_steps=6"):
        Trainer(make_model(), make_config(total_steps=6), resume_from=newest).train(buffer)
    with pytest.warns(RuntimeWarning, match="already at total_steps=8: nothing is left to train"):
        Trainer(make_model(), make_config(total_steps=8), resume_from=newest).train(buffer)


# ------------------------------------------------------------ callbacks


def test_checkpoint_callback_rejects_a_file_at_construction(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=r"save_dir=.*file': expected a directory .*got an existing file"):
        CheckpointCallback(save_dir=blocker)
    with pytest.raises(ConfigError, match=r"got the file .*file' in the way"):
        CheckpointCallback(save_dir=blocker / "sub")
    with pytest.raises(ConfigError, match="mode must be 'min' or 'max'"):
        CheckpointCallback(tmp_path, mode="best")


def fake_trainer(eval_interval=0):
    return types.SimpleNamespace(step=0, stop_training=False, run_id=None,
                                 config=TrainingConfig(total_steps=100, eval_interval=eval_interval, log_interval=2))


def test_a_monitor_that_never_appears_warns_once_with_close_matches():
    losses = {"loss": 1.0, "loss/rec": 0.5, "lr": 1e-3}
    for callback, expected in ((EarlyStoppingCallback(monitor="losss"), r"Did you mean 'loss'"),
                               (EarlyStoppingCallback(monitor="eval/loss"), r"does not evaluate \(eval_interval=0\)"),
                               (CheckpointCallback(monitor="loss/recc", save_every=None), r"'loss/rec'")):
        callback.on_train_begin(fake_trainer())
        with pytest.warns(RuntimeWarning, match=rf"\(monitor='{callback.monitor}'\) will never see its metric.*"
                                                rf"{expected}"):
            callback.on_step_end(1, losses)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            callback.on_step_end(2, losses)  # once only
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fine = EarlyStoppingCallback(monitor="eval/loss", mode="max")
        fine.on_train_begin(fake_trainer(eval_interval=5))
        fine.on_step_end(1, losses)
    # Evaluations asked for, but the trainer holds nothing out (eval_fraction=0 or too small a buffer)
    nothing_held = fake_trainer(eval_interval=5)
    nothing_held.evaluates = False
    callback = CheckpointCallback(monitor="eval/loss", save_every=None)
    callback.on_train_begin(nothing_held)
    with pytest.warns(RuntimeWarning, match=r"does not evaluate \(eval_fraction=0.05 holds no transitions out"):
        callback.on_step_end(1, losses)
    with pytest.raises(ConfigError, match="mode must be 'min' or 'max', got 'best'"):
        EarlyStoppingCallback(mode="best")


@pytest.mark.slow
def test_save_best_keeps_the_best_model_apart_from_keep_last(buffer, reference, tmp_path):
    directory = tmp_path / "ckpt"
    trainer = Trainer(make_model(), make_config(), [CheckpointCallback(directory, save_every=2, keep_last=1)])
    trainer.train(buffer)
    assert sorted(os.listdir(directory)) == ["best", "step_00000008"]
    # The training loss averaged over the updates since the previous checkpoint, at each checkpoint.
    means = {step: np.mean([r["loss"] for r in reference["losses"][step - 2:step]]) for step in (2, 4, 6, 8)}
    best_step = min(means, key=means.get)
    info = json.loads((directory / "best" / "worldloom.json").read_text())["info"]
    assert (info["step"], info["metric"], info["mode"]) == (best_step, "loss", "min")
    assert info["value"] == pytest.approx(means[best_step]) and info["run_id"] == trainer.run_id
    best = create_world_model(str(directory / "best"))
    shorter = Trainer(make_model(), make_config(total_steps=best_step)).train(buffer)
    assert same(leaves(best.params), leaves(shorter.params))  # the params of that step, bit for bit

    evaluated = tmp_path / "evaluated"
    trainer = Trainer(make_model(), make_config(eval_interval=4, eval_fraction=0.1, eval_batches=1),
                      [CheckpointCallback(evaluated, save_every=2, keep_last=3, mode="max")])
    trainer.train(buffer)
    info = json.loads((evaluated / "best" / "worldloom.json").read_text())["info"]
    history = dict((step, metrics["eval/loss"]) for step, metrics in trainer.eval_history)
    assert info["metric"] == "eval/loss" and info["step"] == max(history, key=history.get)
    # A run resumed from step 6 keeps the evaluation before it (at 4) and adds its own (at 8, the end); one
    # resumed from step 4, whose checkpoint was written before that step's evaluation, runs it first.
    for start in ("step_00000006", "step_00000004"):
        resumed = Trainer(make_model(), make_config(eval_interval=4, eval_fraction=0.1, eval_batches=1),
                          resume_from=evaluated / start)
        resumed.train(buffer)
        assert [step for step, _ in resumed.eval_history] == [4, 8], start
        assert resumed.eval_history[0] == trainer.eval_history[0]
        assert resumed.eval_history[1][1]["eval/loss"] == pytest.approx(trainer.eval_history[1][1]["eval/loss"])


def test_logging_callback_tensorboard_switch(tmp_path, capsys, monkeypatch):
    assert LoggingCallback(log_dir=tmp_path / "a").log_to_tensorboard  # the spec's LoggingCallback(log_dir=...)
    assert not LoggingCallback(log_to_console=True).log_to_tensorboard
    monkeypatch.chdir(tmp_path)
    assert LoggingCallback().log_dir.resolve() == (tmp_path / "logs").resolve()
    console_only = LoggingCallback(log_dir=tmp_path / "b", log_to_console=True, log_to_tensorboard=False)
    trainer = fake_trainer()
    console_only.on_train_begin(trainer)
    for step in (1, 2):
        console_only.on_step_end(step, {"loss": 1.0})
    console_only.on_eval_end(2, {"eval/loss": 2.0})
    console_only.on_train_end(trainer)
    out = capsys.readouterr().out
    assert "[train] step 2 | loss 1" in out and "[eval] step 2 | loss 2" in out
    assert not (tmp_path / "b").exists()
    with pytest.raises(ConfigError, match="logs nothing"):
        LoggingCallback(log_dir=tmp_path / "c", log_to_tensorboard=False)
