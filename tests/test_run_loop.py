"""The online run as a user drives it: resume, refused settings, interrupts, progress, the resolved run file.

The runs are tiny DreamerV3 agents on CartPole (``_agents.DREAMER_TINY``,
windows of 2 x 8); they run no update at all (a train ratio of 0.01 owes
less than one in 1,100 steps), so they cost one compile of the policy step.
"""

import json
import os
import shutil
import signal
import time
import warnings

import numpy as np
import pytest
import yaml
from _agents import DREAMER_TINY, TDMPC_TINY

from worldloom.agents import AgentRunConfig, run_agent
from worldloom.agents.replay import StreamReplay
from worldloom.agents.run_file import resolve_run
from worldloom.cli import main
from worldloom.core.errors import ConfigError
from worldloom.core.progress import LineProgress
from worldloom.training.logs import LogSink

SETS = [arg for key, value in DREAMER_TINY.items() for arg in ("--set", f"{key}={value}")]
# configs=["defaults"]: the reference defaults, not the quick preset a Gymnasium id selects.
QUIET = dict(configs=["defaults"], train_ratio=0.01, batch_size=2, sequence_length=8, eval_episodes=0,
             checkpoint_every=0, seed=1)


def _cli(capsys, *args):
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _replay(run) -> dict:
    with np.load(run / "checkpoints" / "replay.npz") as saved:
        return {key: saved[key] for key in ("obs", "written")}


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A 20-step run (no updates) and its saved replay."""
    run = tmp_path_factory.mktemp("loop") / "run"
    config = AgentRunConfig(total_steps=20, out_dir=str(run), **QUIET)
    run_agent(config, progress=False, **DREAMER_TINY)
    return run, config


@pytest.mark.slow(reason="two short DreamerV3 runs (the policy step compiles) and a resumed one")
def test_resume_with_more_steps_grows_replay_and_keeps_every_row(short_run, tmp_path, capsys):
    run, config = short_run
    first = _replay(run)
    assert first["obs"].shape[1] == 20 + 1000  # capacity: total_steps + 1000
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    result = run_agent(config.replace(total_steps=1100, out_dir=str(copy)), progress=False, resume=True,
                       **DREAMER_TINY)
    assert result["env_steps"] == 1100
    after = _replay(copy)
    assert after["obs"].shape[1] == 1100 + 1000  # capacity follows the run's total steps
    rows = int(after["written"][0])
    assert rows > 1020  # more rows than the first run's capacity held, none of them overwritten
    np.testing.assert_array_equal(after["obs"][0, :20], first["obs"][0, :20])  # the first run's rows stay
    # A capacity smaller than the rows held is an error, not a silent drop.
    with pytest.raises(ConfigError, match="cannot keep"):
        run_agent(config.replace(total_steps=1200, buffer_capacity=600, out_dir=str(copy)), progress=False,
                  resume=True, **DREAMER_TINY)


def test_stream_replay_resize_keeps_rows_in_order_and_refuses_to_drop():
    replay = StreamReplay(8, 2, (1,), np.float32, 2, 3, 2)
    for t in range(11):  # wraps: each stream of 4 rows holds steps 7..10
        replay.add({"obs": np.full((2, 1), t, np.float32), "actions": np.zeros((2, 2)), "rewards": np.zeros(2),
                    "is_first": np.zeros(2, bool), "is_last": np.zeros(2, bool), "is_terminal": np.zeros(2, bool),
                    "deter": np.zeros((2, 3)), "stoch": np.zeros((2, 2))})
    replay.resize(40)
    assert replay.rows == 20 and len(replay) == 8
    batch, _ = replay.sample(16, 4)
    assert sorted(set(batch["obs"][:, 0, 0].tolist())) == [7.0]  # the one window of 4 rows: 7, 8, 9, 10
    np.testing.assert_array_equal(batch["obs"][0, :, 0], [7, 8, 9, 10])
    with pytest.raises(ConfigError, match="at least 8"):
        replay.resize(6)


@pytest.mark.parametrize("changes, message", [
    (dict(buffer_capacity=0), "buffer_capacity must be >= 1"),
    (dict(checkpoint_every=-5), "checkpoint_every must be >= 0"),
    (dict(stop_return=float("nan")), "stop_return must be a return, or inf"),
    (dict(train_ratio=float("inf")), "train_ratio must be a finite number"),
])
def test_run_settings_that_break_a_run_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        AgentRunConfig(**changes)


def test_a_capacity_below_one_window_is_refused_before_anything_is_written(tmp_path):
    config = AgentRunConfig(buffer_capacity=5, out_dir=str(tmp_path / "run"), **QUIET)
    with pytest.raises(ConfigError, match=r"buffer_capacity=5 holds 5 steps per environment; expected at least 9"):
        run_agent(config, progress=False, **DREAMER_TINY)
    assert not (tmp_path / "run").exists()


@pytest.fixture
def no_stepping(monkeypatch):
    """Environments that refuse to be stepped: a setting checked late fails with RuntimeError."""
    from gymnasium.envs.classic_control.cartpole import CartPoleEnv
    from gymnasium.envs.classic_control.pendulum import PendulumEnv

    def refuse(self, action):
        raise RuntimeError("an environment was stepped before every setting was checked")

    monkeypatch.setattr(CartPoleEnv, "step", refuse)
    monkeypatch.setattr(PendulumEnv, "step", refuse)


@pytest.mark.parametrize("args, message", [
    (("agent", "--checkpoint-every", "-5"), "checkpoint_every must be >= 0 (0: only at the end), got -5"),
    (("agent", "--set", "buffer_capacity=0"), "buffer_capacity must be >= 1"),
    (("agent", "--stop-return", "nan"), "stop_return must be a return, or inf"),
    (("agent", "--algo", "tdmpc2", "--env", "Pendulum-v1", "--set", "latent_dim=abc"),
     "latent_dim: expected an int"),
    (("agent", "--algo", "tdmpc2", "--env", "Pendulum-v1", "--set", "no_such_field=3"),
     "has no field 'no_such_field'"),
    (("agent", "--algo", "tdmpc2", "--env", "Pendulum-v1", "--model", "tdmpc2:7m"), "tdmpc2:7m"),
    (("train", "--set", "deter=abc"), "deter: expected an int"),
    (("train", "--set", "no_such_field=3"), "--set no_such_field: not a setting of worldloom train"),
    (("train", "--model", "dreamerv3:size7m"), "dreamerv3:size7m"),
])
def test_every_setting_is_checked_before_any_environment_is_stepped(no_stepping, tmp_path, capsys, args,
                                                                      message):
    code, out, err = _cli(capsys, *args, "--out", str(tmp_path / "run"), "--no-progress")
    assert code == 2 and message in err and err.count("error:") == 1, err
    assert "Collecting" not in out
    assert not (tmp_path / "run").exists()


def test_a_run_directory_being_written_is_refused_before_collecting(no_stepping, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    import socket

    (run / ".worldloom-run.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                                         "token": "another", "since": "now"}))
    for command in ("train", "agent"):
        code, out, err = _cli(capsys, command, "--out", str(run), "--no-progress")
        assert code == 1 and f"is being written by process {os.getppid()}" in err and err.count("error:") == 1, err
        assert "Collecting" not in out
    assert os.listdir(run) == [".worldloom-run.lock"]


@pytest.mark.parametrize("command", ["train", "agent"])
def test_an_oversized_run_file_fails_fast(tmp_path, capsys, command):
    path = tmp_path / "huge.yaml"
    path.write_text("".join(f"key{i}: {i}\n" for i in range(300_000)))
    began = time.perf_counter()
    code, _, err = _cli(capsys, command, "--config", str(path), "--out", str(tmp_path / "run"))
    assert code == 2 and "expected a run file of settings (at most 1,048,576 bytes)" in err, err
    assert time.perf_counter() - began < 5


def test_an_unknown_key_in_a_run_file_is_refused_before_its_values_are_read(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("total_step: 5\n" + "".join(f"k{i}: {i}\n" for i in range(20_000)))
    began = time.perf_counter()
    code, _, err = _cli(capsys, "agent", "--config", str(path), "--out", str(tmp_path / "run"))
    assert code == 2 and "no setting 'total_step'. Did you mean 'total_steps'" in err, err
    assert time.perf_counter() - began < 5


@pytest.mark.slow(reason="a short DreamerV3 run (shared) and a refused resume of it")
def test_resume_below_the_steps_done_is_refused_and_leaves_the_run_file(short_run, capsys):
    run, _ = short_run
    before = (run / "config.yaml").read_bytes(), (run / "config.yaml").stat().st_mtime_ns
    code, out, err = _cli(capsys, "agent", "--resume", str(run), "--steps", "10", "--no-progress")
    assert code == 2 and f"{run} has taken 20 environment steps; expected total_steps (--steps) of at least 20" in err
    assert ((run / "config.yaml").read_bytes(), (run / "config.yaml").stat().st_mtime_ns) == before


@pytest.mark.slow(reason="a short DreamerV3 run (shared)")
def test_the_run_file_holds_the_resolved_settings_and_reproduces_the_run(short_run, tmp_path, capsys):
    run, config = short_run
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["model"], saved["learning_rate"], saved["batch_size"], saved["sequence_length"]) == (
        "dreamerv3:size1m", 4e-5, 2, 8)
    resolved = (saved["grad_clip"], saved["warmup_steps"], saved["seed_steps"], saved["train_ratio"])
    assert resolved == (0.0, 1000, 0, 0.01)
    assert saved["world_model"] == DREAMER_TINY
    again, overrides = resolve_run(run / "config.yaml")
    assert again == config.resolve().replace(out_dir=str(run)) and overrides == DREAMER_TINY
    # The file alone runs the same run: the same params and replay.
    code, out, _ = _cli(capsys, "agent", "--config", str(run / "config.yaml"), "--out", str(tmp_path / "again"),
                        "--no-progress")
    assert code == 0 and "Run settings (saved as" in out and "learning_rate=4e-05" in out
    first = json.loads((run / "summary.json").read_text())
    second = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert first["params_sha256"] == second["params_sha256"]
    np.testing.assert_array_equal(_replay(run)["obs"], _replay(tmp_path / "again")["obs"])


def _interrupt_at(monkeypatch, step: int, signum: int) -> None:
    """Send ``signum`` to this process at the ``step``-th environment step of the run."""
    from worldloom.agents.collect import StreamCollector

    original, calls = StreamCollector.step, []

    def step_then_signal(self, agent, random_actions=None):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signum)
        return original(self, agent, random_actions)

    monkeypatch.setattr(StreamCollector, "step", step_then_signal)


@pytest.mark.slow(reason="two interrupted DreamerV3 runs and a resumed one")
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_ctrl_c_and_sigterm_save_say_how_to_resume_and_exit(tmp_path, capsys, monkeypatch, signum, code):
    from worldloom.training.logs import TensorBoardWriter

    def full_disk(self, *args):
        raise OSError(28, "No space left on device")

    for method in ("add_scalar", "flush", "close"):  # a failing log sink: training goes on
        monkeypatch.setattr(TensorBoardWriter, method, full_disk)
    _interrupt_at(monkeypatch, 12, signum)
    run = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status, out, err = _cli(capsys, "agent", "--steps", "40", "--train-ratio", "0.01", "--batch-size", "2",
                                "--seq-len", "8", "--eval-episodes", "0", "--checkpoint-every", "0", "--out",
                                str(run), "--no-progress", *SETS)
    assert status == code, err
    done = json.loads((run / "checkpoints" / "loop.json").read_text())["env_step"]
    assert 10 <= done <= 12  # 12 loop steps; a CartPole episode that ends takes one step to reset
    last = err.strip().splitlines()[-1]
    assert last == (f"worldloom agent: {'SIGTERM' if signum == signal.SIGTERM else 'Ctrl-C'}: saved {run} at "
                    f"environment step {done} of 40; resume with: worldloom agent --resume {run}")
    logs = [w for w in caught if "Logging to" in str(w.message)]
    assert len(logs) == 1 and "No space left on device" in str(logs[0].message)
    if signum == signal.SIGTERM:
        monkeypatch.undo()
        status, out, err = _cli(capsys, "agent", "--resume", str(run), "--no-progress")
        assert status == 0 and f"Resuming {run} from environment step {done}" in out, err
        assert json.loads((run / "summary.json").read_text())["env_steps"] == 40


def test_a_failing_log_sink_warns_once_and_drops_the_rest(tmp_path):
    class Failing:
        def add_scalar(self, *args):
            raise OSError(28, "No space left on device")

        def flush(self):
            raise OSError(28, "No space left on device")

        def close(self):
            pass

    with pytest.warns(RuntimeWarning, match="Logging to .* stopped: No space left on device") as caught:
        sink = LogSink(Failing, tmp_path)
        for step in range(3):
            sink.add_scalar("train/loss", 1.0, step)
        sink.flush()
        sink.close()
    assert len(caught) == 1 and isinstance(sink.failed, OSError)
    with pytest.warns(RuntimeWarning, match="Read-only file system"):
        LogSink(lambda: (_ for _ in ()).throw(OSError(30, "Read-only file system")), tmp_path).add_scalar("x", 1, 0)


def test_progress_measures_its_rate_only_after_compilation_and_after_a_resume():
    import io

    now = [0.0]
    file = io.StringIO()
    bar = LineProgress(1000, initial=300, desc="run", file=file, interval=10.0, clock=lambda: now[0], measured=False)
    now[0] = 40.0  # compiling: 40 s for the first 5 steps
    bar.update(5)
    assert "ETA" not in file.getvalue() and "measuring the rate" in file.getvalue()
    bar.restart_clock()
    for _ in range(10):
        now[0] += 1.0
        bar.update(10)  # 10 steps a second from here
    line = file.getvalue().strip().splitlines()[-1]
    assert line.startswith("run: 405/1000 steps (40%), 10.00 step/s, ETA 01:00"), line  # 595 steps at 10/s
    bar.note("evaluating 5 episodes")
    assert file.getvalue().strip().endswith("run: evaluating 5 episodes")


@pytest.mark.slow(reason="a TD-MPC2 run on Pendulum with its seed steps, pretraining burst and evaluation")
def test_every_phase_of_a_run_shows_progress(tmp_path, capsys):
    config = AgentRunConfig(env="Pendulum-v1", algo="tdmpc2", total_steps=206, seed_steps=200, batch_size=8,
                            eval_every=206, eval_episodes=1, checkpoint_every=0, out_dir=str(tmp_path / "run"))
    run_agent(config, progress=True, **TDMPC_TINY)
    captured = capsys.readouterr()
    err = captured.err
    phases = ["200 seed steps of random actions before learning", "seed steps done; learning starts",
              "tdmpc2 Pendulum-v1: updates at step 200: 200 updates before the next environment step",
              "compiling the update program (10 x batch 8 x 4)", "update program compiled in",
              "evaluating 1 episode at step 206", "evaluation at step 206: return"]
    positions = [err.find(phase) for phase in phases]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), err
    assert "ETA" not in err[:positions[4]]  # no rate before the update program is compiled
    # The burst runs as programs of 10 updates; the one-update program follows for the steps after it.
    assert "compiling the update program (1 x batch 8 x 4)" in err[positions[4]:]
    final = [line for line in err.splitlines() if line.startswith("tdmpc2 Pendulum-v1: 206/206")]
    assert final, err
    assert "eval=nan" not in err  # no evaluation yet: shown as "-"
    assert "Run settings (saved as" in captured.out and "seed_steps=200" in captured.out
    assert "train_ratio=" not in captured.out and "replay_online=" not in captured.out  # DreamerV3's settings


@pytest.mark.slow(reason="compiles the tiny DreamerV3 agent's update alone and as a program of 4 updates")
def test_k_update_program_runs_the_agents_updates_one_after_another(stream_batch):
    import jax
    from _agents import DREAMER_BATCH, DREAMER_LENGTH, dreamer_agent, jit_update, run_settings

    from worldloom.training.programs import update_program

    agent = dreamer_agent()
    rng = np.random.default_rng(0)
    batches = [stream_batch(agent, rng, DREAMER_BATCH, DREAMER_LENGTH, terminal_at=3) for _ in range(3)]
    single = jit_update(agent.make_update(run_settings("dreamerv3")))
    state = agent.make_update(run_settings("dreamerv3")).init(agent.params)
    one_by_one = []
    for i, batch in enumerate(batches):
        state, metrics, posteriors = single(state, batch, jax.random.fold_in(jax.random.PRNGKey(7), 5 + i))
        one_by_one.append((float(metrics["loss"]), np.asarray(posteriors["deter"])))
    expected = jax.device_get(state["params"])

    program = update_program(agent.make_update(run_settings("dreamerv3"), skip_nonfinite=False), 4, "stop")
    stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *batches, batches[-1])  # slot 3 is left out
    state = agent.make_update(run_settings("dreamerv3")).init(agent.params)
    state, metrics, posteriors = program(state, stacked, jax.random.PRNGKey(7), np.int32(5), np.int32(3))
    assert metrics["loss"].shape == (4,) and posteriors["deter"].shape[:2] == (4, DREAMER_BATCH)
    np.testing.assert_array_equal(np.asarray(metrics["skipped"]), [0, 0, 0, 0])
    for i, (loss, deter) in enumerate(one_by_one):
        assert float(metrics["loss"][i]) == pytest.approx(loss, rel=1e-4)
        np.testing.assert_allclose(np.asarray(posteriors["deter"][i]), deter, rtol=1e-4, atol=1e-5)
    assert float(metrics["loss"][3]) == 0.0  # the slot past count does not run
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                           jax.device_get(state["params"]), expected)
