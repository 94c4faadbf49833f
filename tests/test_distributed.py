"""Training across real processes on 127.0.0.1: jax.distributed with CPU collectives over Gloo.

Each run starts ``tests/distributed_worker.py`` once per process. The runs
share the test session's JAX compilation cache (tests/conftest.py), so the
update program of each device count compiles once.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("distributed_worker.py")
# Reduction order differs between device counts (the all-reduce sums per-device partial sums); over 16
# updates of this tiny model the params then differ by ~1e-7 (measured), far below any real difference
# (a batch sampled or averaged on one shard only moves them by ~1e-3).
TOLERANCE = dict(rtol=1e-4, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(processes: int, out: Path, timeout: float = 400, **spec) -> dict:
    """Run one training run as ``processes`` worker processes; their exit codes, logs and results."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")  # and the session's compilation cache
    env.pop("XLA_FLAGS", None)
    port = _free_port()
    started = time.monotonic()
    workers = []
    for index in range(processes):
        args = dict(spec, processes=processes, process_id=index, port=port, out=str(out))
        log = open(f"{out}.{index}.log", "w")
        workers.append((subprocess.Popen([sys.executable, str(WORKER), json.dumps(args)], env=env, stdout=log,
                                         stderr=subprocess.STDOUT), log))
    codes, ended = [], []
    try:
        for proc, _ in workers:
            codes.append(proc.wait(timeout=max(1.0, timeout - (time.monotonic() - started))))
            ended.append(time.time())  # exact for the last process to end, late for the others
    finally:
        for proc, log in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    result = {"codes": codes, "ended": ended, "logs": [Path(f"{out}.{i}.log").read_text() for i in range(processes)]}
    for index in range(processes):
        base = Path(f"{out}.{index}")
        if Path(f"{base}.json").exists():
            result.setdefault("json", []).append(json.loads(Path(f"{base}.json").read_text()))
        if Path(f"{base}.npz").exists():
            arrays = np.load(f"{base}.npz")
            result.setdefault("params", []).append([arrays[f"arr_{i}"] for i in range(len(arrays.files))])
        if Path(f"{base}.error").exists():
            result.setdefault("errors", {})[index] = Path(f"{base}.error").read_text()
    return result


def ok(run: dict) -> dict:
    assert run["codes"] == [0] * len(run["codes"]), "\n---\n".join(log[-3000:] for log in run["logs"])
    return run


def assert_params_close(actual, expected, **tolerance):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, **(tolerance or TOLERANCE))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process, 2 and 4 processes: 16 updates of B=8, evaluations every 8, checkpoints every 8."""
    root = tmp_path_factory.mktemp("distributed")
    spec = dict(steps=16, eval_interval=8)
    one = ok(launch(1, root / "one", checkpoint_dir=str(root / "ckpt-one"), save_every=8, **spec))
    two = ok(launch(2, root / "two", checkpoint_dir=str(root / "ckpt-two"), save_every=8, **spec))
    four = ok(launch(4, root / "four", **spec))
    return {"root": root, "one": one, "two": two, "four": four}


@pytest.mark.slow
def test_processes_train_one_model_as_one_process_does(runs):
    one = runs["one"]
    assert one["json"][0]["devices"] == 1 and one["json"][0]["local_batch"] == [[4, 8, 8, 4]]
    for name, count in (("two", 2), ("four", 4)):
        run = runs[name]
        reports = run["json"]
        assert [r["process_count"] for r in reports] == [count] * count
        assert all(r["devices"] == count for r in reports)
        # Each process places only its own share of every global batch: [K, B / count, T, obs].
        assert all(r["local_batch"] == [[4, 8 // count, 8, 4]] for r in reports)
        for report in reports:
            np.testing.assert_allclose(report["losses"], one["json"][0]["losses"], rtol=1e-4)
            assert report["evals"] == one["json"][0]["evals"] == [8, 16]
        for params in run["params"][1:]:  # every process ends with the same params, bit for bit
            assert_params_close(params, run["params"][0], rtol=0, atol=0)
        assert_params_close(run["params"][0], one["params"][0])


@pytest.mark.slow
def test_checkpoints_restore_on_another_process_count_and_bit_exactly_on_the_same(runs):
    root, one, two = runs["root"], runs["one"], runs["two"]
    # Process 0 wrote one checkpoint per step; the other process wrote nothing.
    assert sorted(p.name for p in (root / "ckpt-two").iterdir() if p.name.startswith("step_")) == [
        "step_00000008", "step_00000016"]
    resumes = {
        "2->1": launch(1, root / "two-to-one", steps=16, eval_interval=8,
                       resume_from=str(root / "ckpt-two" / "step_00000008")),
        "1->2": launch(2, root / "one-to-two", steps=16, eval_interval=8,
                       resume_from=str(root / "ckpt-one" / "step_00000008")),
        "2->2": launch(2, root / "two-to-two", steps=16, eval_interval=8,
                       resume_from=str(root / "ckpt-two" / "step_00000008")),
    }
    for name, run in resumes.items():
        ok(run)
        assert all(r["steps"] == 16 and len(r["losses"]) == 8 for r in run["json"]), name
        np.testing.assert_allclose(run["json"][0]["losses"], one["json"][0]["losses"][8:], rtol=1e-4)
        assert_params_close(run["params"][0], one["params"][0])
    same = resumes["2->2"]
    assert same["json"][0]["losses"] == two["json"][0]["losses"][8:]
    for params in same["params"]:
        assert_params_close(params, two["params"][0], rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("dies", [1, 0], ids=["worker-dies", "coordinator-dies"])
def test_a_lost_process_stops_the_others_with_a_clear_error(tmp_path, runs, dies):
    from worldloom.models.checkpoint import check_files
    from worldloom.training._checkpoint import list_checkpoints, read_meta

    run = launch(2, tmp_path / "run", timeout=200, steps=16, checkpoint_dir=str(tmp_path / "ckpt"), save_every=4,
                 die_at=10, die_process=dies)
    survivor = 1 - dies
    assert run["codes"][dies] == 3, run["logs"][dies][-2000:]
    assert run["codes"][survivor] == 2, run["logs"][survivor][-3000:]
    error = run["errors"][survivor]
    assert f"Process {survivor} of 2 lost another process of the run" in error
    assert "newest complete checkpoint is intact" in error
    died = float(Path(f"{tmp_path / 'run'}.{dies}.died").read_text())
    assert run["ended"][survivor] - died < 60  # stopped within a bounded time, not at a collective's timeout
    # Process 0 writes the checkpoints: those listed are complete (every file of the manifest, intact).
    saved = [step for step, _ in list_checkpoints(tmp_path / "ckpt")]
    if dies == 1:
        assert saved[:2] == [4, 8] and set(saved) <= {4, 8, 12}, saved
    for _, path in list_checkpoints(tmp_path / "ckpt"):
        check_files(path / "state", read_meta(path)["state_files"], "train state files")


@pytest.mark.slow
def test_each_process_can_hold_only_its_own_episodes(tmp_path):
    """replay_sharding="process": each process draws its share of every batch from its own buffer."""
    spec = dict(steps=8, replay="process")
    two = ok(launch(2, tmp_path / "two", **spec))
    # The same updates in one process on one device, on the batches the two processes drew together.
    reference = ok(launch(1, tmp_path / "alone", reference_shards=2, **spec))
    alone = reference["json"][0]
    assert alone["local_batch"] == [[4, 8, 8, 4]]
    for report in two["json"]:
        assert report["local_batch"] == [[4, 4, 8, 4]] and report["steps"] == 8
        np.testing.assert_allclose(report["losses"], alone["losses"], rtol=1e-4)
    assert_params_close(two["params"][1], two["params"][0], rtol=0, atol=0)
    assert_params_close(two["params"][0], reference["params"][0])


@pytest.mark.slow
def test_processes_with_different_buffers_refuse_to_train(tmp_path):
    run = launch(2, tmp_path / "run", timeout=200, steps=4, extra_length=1)
    assert run["codes"] != [0, 0]
    for index in (0, 1):
        assert "Processes [1] hold buffers with another episode layout than process 0" in run["errors"][index]


@pytest.mark.slow
def test_worldloom_train_runs_as_two_processes(tmp_path):
    """The command line: process 0 chooses and writes the run directory; process 1 writes nothing.

    With replay_sharding=process each process collects and holds its own half of the training episodes.
    """
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "earlier.txt").write_text("an earlier run")  # taken: the run goes to out-2
    command = [sys.executable, "-m", "worldloom", "train", "--env", "CartPole-v1", "--episodes", "6",
               "--test-episodes", "2", "--steps", "4", "--batch-size", "4", "--seq-len", "8",
               "--steps-per-dispatch", "2", "--eval-interval", "0", "--no-progress", "--device", "cpu",
               "--out", str(tmp_path / "out"), "--set", "deter=64", "--set", "hidden=32", "--set", "units=32",
               "--set", "replay_sharding=process", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
    procs = [subprocess.Popen([*command, "--process-id", str(index)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for index in range(2)]
    outputs = [proc.communicate(timeout=400)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], "\n---\n".join(o[-3000:] for o in outputs)
    assert "Trained 4 updates" in outputs[0]
    assert "this process: training episodes 0 to 2" in outputs[0]
    assert "this process: training episodes 3 to 5" in outputs[1]
    assert "Process 1: trained 4 updates; process 0 writes" in outputs[1] and "out-2" in outputs[1]
    run_dir = tmp_path / "out-2"
    assert {"model", "checkpoints", "logs", "config.yaml", "summary.json"} <= {p.name for p in run_dir.iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out-2"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["earlier.txt"]


@pytest.mark.parametrize("flags, message", [
    (["--coordinator", "127.0.0.1:1"], "--coordinator needs --num-processes, --process-id too"),
    (["--distributed", "--coordinator", "h:1", "--num-processes", "2", "--process-id", "0"],
     "--distributed reads the cluster's environment"),
])
def test_train_checks_the_process_flags(tmp_path, capsys, flags, message):
    from worldloom.cli import main

    assert main(["train", "--out", str(tmp_path / "run"), "--steps", "1", *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


ONLINE = {
    "dreamerv3": (dict(env="CartPole-v1", algo="dreamerv3", total_steps=160, batch_size=4, sequence_length=8,
                       train_ratio=4.0, eval_every=80, eval_episodes=1, checkpoint_every=80),
                  dict(deter=64, hidden=32, units=32, classes=4, stoch=4, enc_layers=1, dec_layers=1, img_layers=1)),
    "tdmpc2": (dict(env="CartPole-v1", algo="tdmpc2", model="tdmpc2:1m", total_steps=120, batch_size=4,
                    sequence_length=3, seed_steps=40, updates_per_step=0.25, eval_every=60, eval_episodes=1,
                    checkpoint_every=60, episodic=True),
               dict(enc_dim=32, mlp_dim=32, latent_dim=16, num_q=2, num_samples=32, num_elites=8, num_pi_trajs=4,
                    iterations=2)),
}


@pytest.mark.slow
@pytest.mark.parametrize("algo", sorted(ONLINE))
def test_online_agent_collects_in_each_process_and_learns_as_one(tmp_path, algo):
    """Two processes: each steps its own environment into its own replay; one update spans both."""
    config, model = ONLINE[algo]
    out_dir = tmp_path / "run"
    run = ok(launch(2, tmp_path / "agent", timeout=500, agent=dict(config, out_dir=str(out_dir)), model=model))
    first, second = run["json"]
    assert first["env_steps"] == second["env_steps"] >= config["total_steps"]  # counted over both processes
    assert first["updates"] == second["updates"] > 0
    assert first["eval"] == second["eval"] and len(first["eval"]) == 2  # the same params act the same
    # Process 0 writes the run; process 1 keeps only its replay and counters, beside process 0's checkpoint.
    names = {p.name for p in out_dir.iterdir()}
    assert {"agent", "logs", "config.yaml", "summary.json", "checkpoints", "checkpoints.process1"} <= names
    assert first["params_sha256"] == second["params_sha256"]  # the same params in both processes
    assert "train_state" in {p.name for p in (out_dir / "checkpoints").iterdir()}
    assert "train_state" not in {p.name for p in (out_dir / "checkpoints.process1").iterdir()}
    replays = [np.load(out_dir / name / "replay.npz") for name in ("checkpoints", "checkpoints.process1")]
    obs = [r["obs"].reshape(-1) for r in replays]
    size = min(obs[0].size, obs[1].size)
    assert size > 40 and not np.array_equal(obs[0][:size], obs[1][:size])  # each its own experience
