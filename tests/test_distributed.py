"""Training across real processes on 127.0.0.1: jax.distributed with CPU collectives over Gloo.

Each launch starts ``tests/distributed_worker.py`` once per process; every
process joins the run once and then does the launch's jobs one after the
other. Three launches carry the tests: one of 2 processes with 2 devices each
(4 devices, as on hosts of several accelerators), one of 1 process, and one
of 2 processes with 1 device each. Each of the two multi-process launches
ends with a job in which one process dies, the only way a launch may end
early. Each test asserts on its own jobs' results, so it fails on its own,
with its jobs' errors and the logs. Later jobs of a launch reuse the
programs its earlier jobs compiled. A program that spans the processes is
compiled by process 0 alone, which hands it to the others
(``share_compiled_programs`` in the worker); a program of one process's own
devices compiles in each. The command line runs in a launch of its own, in
which every process compiles its own programs, as users' runs do.
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
# 16 updates of B=8, evaluations every 8; with a checkpoint directory, checkpoints every 8.
TRAIN = dict(steps=16, eval_interval=8)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker_env(devices: int = 1) -> dict:
    """The session's environment (its compilation cache and level-0 XLA flag), with ``devices`` CPU devices per
    process."""
    flags = [flag for flag in os.environ.get("XLA_FLAGS", "").split()
             if not flag.startswith("--xla_force_host_platform_device_count")]
    if not any(flag.startswith("--xla_backend_optimization_level") for flag in flags):
        flags.append("--xla_backend_optimization_level=0")
    if devices > 1:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", XLA_FLAGS=" ".join(flags))


def launch(processes: int, out: Path, jobs: list[dict], timeout: float = 400, devices: int = 1) -> dict:
    """Run ``jobs`` in sequence in each of ``processes`` worker processes of ``devices`` CPU devices each; their
    exit codes, logs and results.

    ``result["jobs"][name]`` holds job ``name``'s ``json`` and ``params`` (one
    per process, None where the process wrote none) and ``errors`` ({process: message}).
    """
    env = _worker_env(devices)
    port = _free_port()
    started = time.monotonic()
    workers = []
    for index in range(processes):
        args = dict(processes=processes, process_id=index, port=port, out=str(out), jobs=jobs)
        log = open(f"{out}.{index}.log", "w")
        workers.append((subprocess.Popen([sys.executable, str(WORKER), json.dumps(args)], env=env, stdout=log,
                                         stderr=subprocess.STDOUT), log))
    codes, ended = [], []
    try:
        for proc, _ in workers:
            codes.append(proc.wait(timeout=max(1.0, timeout - (time.monotonic() - started))))
            ended.append(time.time())  # exact for the last process to end, late for the others
    except subprocess.TimeoutExpired:
        codes += [f"killed after {timeout:.0f} s"] * (processes - len(codes))
    finally:
        for proc, log in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    result = {"processes": processes, "out": str(out), "codes": codes, "ended": ended,
              "seconds": time.monotonic() - started,
              "logs": [Path(f"{out}.{i}.log").read_text() for i in range(processes)], "jobs": {}}
    for job in jobs:
        found = result["jobs"][job["name"]] = {"json": [], "params": [], "errors": {}}
        for index in range(processes):
            base = Path(f"{out}.{job['name']}.{index}")
            found["json"].append(json.loads(Path(f"{base}.json").read_text()) if Path(f"{base}.json").exists()
                                 else None)
            if Path(f"{base}.npz").exists():
                arrays = np.load(f"{base}.npz")
                found["params"].append([arrays[f"arr_{i}"] for i in range(len(arrays.files))])
            else:
                found["params"].append(None)
            if Path(f"{base}.error").exists():
                found["errors"][index] = Path(f"{base}.error").read_text()
    return result


def logs(run: dict) -> str:
    return "\n---\n".join(log[-3000:] for log in run["logs"])


def done(run: dict, name: str) -> dict:
    """Job ``name``'s results, asserting that every process of its launch finished it."""
    job = run["jobs"][name]
    missing = [i for i in range(run["processes"]) if job["json"][i] is None]
    errors = {other: found["errors"] for other, found in run["jobs"].items() if found["errors"]}
    assert not missing, (f"job {name!r} of the {run['processes']}-process launch did not finish in processes "
                         f"{missing} (exit codes {run['codes']}; errors of its jobs {errors}):\n{logs(run)}")
    return job


def assert_params_close(actual, expected, **tolerance):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, **(tolerance or TOLERANCE))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("distributed")


# The online runs take the agents' two ways to dispatch updates across processes: DreamerV3 one update at a time
# (a fraction of an update per environment step), TD-MPC2 K-update programs (its pretraining burst of 90
# updates at step 90, nine programs of 10, and no update after it). Each then compiles one update program.
ONLINE = {
    "dreamerv3": (dict(env="CartPole-v1", algo="dreamerv3", total_steps=160, batch_size=4, sequence_length=8,
                       train_ratio=4.0, eval_every=80, eval_episodes=1, checkpoint_every=80),
                  dict(deter=64, hidden=32, units=32, classes=4, stoch=4, enc_layers=1, dec_layers=1, img_layers=1)),
    "tdmpc2": (dict(env="CartPole-v1", algo="tdmpc2", model="tdmpc2:1m", total_steps=92, batch_size=4, seed_steps=90,
                    updates_per_step=0.25, eval_every=46, eval_episodes=1, checkpoint_every=46, episodic=True),
               dict(enc_dim=32, mlp_dim=32, latent_dim=16, num_q=2, num_samples=32, num_elites=8, num_pi_trajs=4,
                    iterations=2)),
}


LOST = {1: "worker-dies", 0: "coordinator-dies"}


def lost(root: Path, dies: int) -> dict:
    """The last job of a 2-process launch: 16 updates with checkpoints every 4; process ``dies`` dies at step 10.

    It comes after a training job of the same model, so that its programs are compiled: it takes seconds.
    """
    name = LOST[dies]
    return dict(name=name, steps=16, checkpoint_dir=str(root / f"ckpt-{name}"), save_every=4, die_at=10,
                die_process=dies)


@pytest.fixture(scope="module")
def two(root):
    """Two processes of 2 devices each (4 devices): train with checkpoints, resume from their own step 8, refuse
    to train on different buffers, and last lose process 1."""
    return launch(2, root / "two", timeout=400, devices=2, jobs=[
        dict(name="train", checkpoint_dir=str(root / "ckpt-two"), save_every=8, **TRAIN),
        dict(name="resume-2-2", resume_from=str(root / "ckpt-two" / "step_00000008"), **TRAIN),
        dict(name="different-buffers", steps=4, extra_length=1, may_fail=True),
        lost(root, 1),
    ])


@pytest.fixture(scope="module")
def one(root, two):
    """One process, after the two: train with checkpoints, the one-device reference of the agents launch's
    own-episodes job, and resume from the two processes' (4 devices') step 8."""
    return launch(1, root / "one", timeout=400, jobs=[
        dict(name="train", checkpoint_dir=str(root / "ckpt-one"), save_every=8, **TRAIN),
        dict(name="own-episodes-reference", reference_shards=2, steps=8, replay="process"),
        dict(name="resume-2-1", resume_from=str(root / "ckpt-two" / "step_00000008"), **TRAIN),
    ])


@pytest.fixture(scope="module")
def agents(root, one):
    """Two processes of 1 device each, after the one: train on each process's own episodes, resume from the one
    process's step 8, run both online agents, and last lose process 0."""
    return launch(2, root / "agents", timeout=800, jobs=[
        dict(name="own-episodes", steps=8, replay="process"),
        dict(name="resume-1-2", resume_from=str(root / "ckpt-one" / "step_00000008"), **TRAIN),
        *(dict(name=f"online-{algo}", agent=dict(config, out_dir=str(root / f"online-{algo}")), model=model)
          for algo, (config, model) in sorted(ONLINE.items())),
        lost(root, 0),
    ])


@pytest.mark.slow(reason="launches 2 training processes (shared)")
def test_processes_with_different_buffers_refuse_to_train(two):
    job = two["jobs"]["different-buffers"]
    for index in (0, 1):  # every process raises, and none trains
        assert "Processes [1] hold buffers with another episode layout than process 0" in job["errors"].get(
            index, ""), f"errors {job['errors']}:\n{logs(two)}"
        assert job["json"][index] is None and job["params"][index] is None


def _assert_resumed_as_one(run: dict, name: str, one: dict) -> dict:
    """Job ``name`` resumed at step 8 and ended as the one process's uninterrupted run did."""
    job = done(run, name)
    assert all(r["steps"] == 16 and len(r["losses"]) == 8 for r in job["json"]), name
    np.testing.assert_allclose(job["json"][0]["losses"], one["json"][0]["losses"][8:], rtol=1e-4)
    assert_params_close(job["params"][0], one["params"][0])
    return job


@pytest.mark.slow(reason="launches 2 training processes and 1 (shared)")
def test_a_checkpoint_resumes_bit_exactly_on_the_same_process_count(root, two, one):
    # Process 0 wrote one checkpoint per step; the other process wrote nothing.
    assert sorted(p.name for p in (root / "ckpt-two").iterdir() if p.name.startswith("step_")) == [
        "step_00000008", "step_00000016"]
    trained = done(two, "train")
    same = _assert_resumed_as_one(two, "resume-2-2", done(one, "train"))
    assert same["json"][0]["losses"] == trained["json"][0]["losses"][8:]
    for params in same["params"]:
        assert_params_close(params, trained["params"][0], rtol=0, atol=0)


@pytest.mark.slow(reason="launches 2 training processes (shared) and stops one")
@pytest.mark.parametrize("dies", [1, 0], ids=list(LOST.values()))
def test_a_lost_process_stops_the_others_with_a_clear_error(request, root, dies):
    from worldloom.models.checkpoint import check_files
    from worldloom.training._checkpoint import list_checkpoints, read_meta

    run = request.getfixturevalue("two" if dies == 1 else "agents")  # its last job: process `dies` dies
    name = LOST[dies]
    survivor = 1 - dies
    assert run["codes"][dies] == 3, f"errors {run['jobs'][name]['errors']}:\n{run['logs'][dies][-2000:]}"
    assert run["codes"][survivor] == 2, run["logs"][survivor][-3000:]
    error = run["jobs"][name]["errors"].get(survivor, "")
    assert f"Process {survivor} of 2 lost another process of the run" in error, error or logs(run)
    assert "newest complete checkpoint is intact" in error, error
    died = float(Path(f"{run['out']}.{name}.{dies}.died").read_text())
    assert run["ended"][survivor] - died < 60  # stopped within a bounded time, not at a collective's timeout
    # Process 0 writes the checkpoints: those listed are complete (every file of the manifest, intact).
    saved = [step for step, _ in list_checkpoints(root / f"ckpt-{name}")]
    if dies == 1:
        assert saved[:2] == [4, 8] and set(saved) <= {4, 8, 12}, saved
    for _, path in list_checkpoints(root / f"ckpt-{name}"):
        check_files(path / "state", read_meta(path)["state_files"], "train state files")


@pytest.mark.slow(reason="runs an online agent in 2 processes (shared launch)")
@pytest.mark.parametrize("algo", sorted(ONLINE))
def test_online_agent_collects_in_each_process_and_learns_as_one(root, agents, algo):
    """Two processes: each steps its own environment into its own replay; one update spans both."""
    config, _ = ONLINE[algo]
    out_dir = root / f"online-{algo}"
    first, second = done(agents, f"online-{algo}")["json"]
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


@pytest.mark.slow(reason="launches 2 training processes and 1 (shared)")
def test_each_process_can_hold_only_its_own_episodes(agents, one):
    """replay_sharding="process": each process draws its share of every batch from its own buffer."""
    own = done(agents, "own-episodes")
    # The same updates in one process on one device, on the batches the two processes drew together.
    reference = done(one, "own-episodes-reference")
    alone = reference["json"][0]
    assert alone["local_batch"] == [[4, 8, 8, 4]]
    for report in own["json"]:
        assert report["local_batch"] == [[4, 4, 8, 4]] and report["steps"] == 8
        np.testing.assert_allclose(report["losses"], alone["losses"], rtol=1e-4)
    assert_params_close(own["params"][1], own["params"][0], rtol=0, atol=0)
    assert_params_close(own["params"][0], reference["params"][0])


@pytest.mark.slow(reason="launches 2 (of 2 devices each) training processes and 1 (shared)")
def test_processes_train_one_model_as_one_process_does(one, two):
    # Two processes of one device each train as one process does in test_each_process_can_hold_only_its_own_episodes
    # and in the 1 -> 2 resume of test_checkpoints_restore_on_another_process_count.
    alone = done(one, "train")
    assert alone["json"][0]["devices"] == 1 and alone["json"][0]["local_batch"] == [[4, 8, 8, 4]]
    trained = done(two, "train")
    reports = trained["json"]
    assert [r["process_count"] for r in reports] == [2, 2]
    assert all(r["devices"] == 4 for r in reports)
    # Each process places only its own 2 devices' shares of every global batch, [K, B / 4, T, obs] each.
    assert all(r["local_batch"] == [[4, 2, 8, 4]] * 2 for r in reports)
    for report in reports:
        np.testing.assert_allclose(report["losses"], alone["json"][0]["losses"], rtol=1e-4)
        assert report["evals"] == alone["json"][0]["evals"] == [8, 16]
    for params in trained["params"][1:]:  # every process ends with the same params, bit for bit
        assert_params_close(params, trained["params"][0], rtol=0, atol=0)
    assert_params_close(trained["params"][0], alone["params"][0])


@pytest.mark.slow(reason="launches 2 training processes and 1 (shared)")
@pytest.mark.parametrize("resume", ["2->1", "1->2"])
def test_checkpoints_restore_on_another_process_count(request, one, resume):
    run = one if resume == "2->1" else request.getfixturevalue("agents")
    _assert_resumed_as_one(run, f"resume-{resume.replace('->', '-')}", done(one, "train"))


@pytest.mark.slow(reason="launches 1 training process (shared)")
def test_processes_that_end_their_jobs_exit_cleanly(one):
    # (The 2-process launches end with a lost process; the command line's test checks that two exit cleanly.)
    assert one["codes"] == [0], logs(one)


@pytest.mark.slow(reason="runs worldloom train as 2 processes")
def test_worldloom_train_runs_as_two_processes(tmp_path):
    """The command line: process 0 chooses and writes the run directory; process 1 writes nothing.

    With replay_sharding=process each process collects and holds its own half of the training episodes. The
    model and update settings are the worker's (tests/distributed_worker.py): after the shared launches process
    0 finds its programs in the compilation cache.
    """
    port = _free_port()
    env = _worker_env()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "earlier.txt").write_text("an earlier run")  # taken: the run goes to out-2
    model = dict(deter=64, hidden=32, units=32, classes=4, stoch=4, enc_layers=1, dec_layers=1, img_layers=1)
    command = [sys.executable, "-m", "worldloom", "train", "--env", "CartPole-v1", "--episodes", "6",
               "--test-episodes", "2", "--steps", "4", "--batch-size", "8", "--seq-len", "8", "--lr", "1e-3",
               "--warmup-steps", "2", "--steps-per-dispatch", "4", "--eval-interval", "0", "--no-progress",
               "--device", "cpu", "--out", str(tmp_path / "out"), "--set", "replay_sharding=process",
               *(arg for key, value in model.items() for arg in ("--set", f"{key}={value}")),
               "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2"]
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
