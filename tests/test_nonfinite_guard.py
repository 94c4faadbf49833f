"""The non-finite guard: a NaN/inf update stops the run or is skipped, and never reaches a checkpoint."""

import json

import jax
import numpy as np
import pytest
from _agents import (
    DREAMER_BATCH,
    DREAMER_LENGTH,
    DREAMER_TINY,
    TDMPC_BATCH,
    TDMPC_LENGTH,
    TDMPC_TINY,
    dreamer_agent,
    jit_update,
    pendulum_tdmpc,
    run_settings,
)

from worldloom import TrainingError, WorldloomError, create_world_model
from worldloom.agents import AgentRunConfig, TDMPC2Agent, run_agent
from worldloom.core.errors import ConfigError
from worldloom.models.base import OptimizerSettings
from worldloom.training import ReplayBuffer, Trainer, TrainingConfig
from worldloom.training._checkpoint import list_checkpoints
from worldloom.training.callbacks import Callback, EarlyStoppingCallback, LoggingCallback
from worldloom.training.data import create_random_buffer
from worldloom.training.guard import NonFiniteGuard

INF = float("inf")


@pytest.fixture
def infinite_learning_rate(monkeypatch):
    """Lets an infinite learning rate through, which makes the first update after warm-up non-finite (and a
    warm-up's first, 0 x inf). TrainingConfig and AgentRunConfig refuse one; the guard's subject is any update
    that turns non-finite, so these tests lift that check."""
    monkeypatch.setattr(OptimizerSettings, "validate", lambda self: None)
# The Trainer's models are those of tests/test_trainer.py, test_callbacks.py and test_checkpoint_safety.py (the
# good runs here compile their program); the agents are tests/_agents.py's, their updates built as run_agent's.
DREAMER = dict(DREAMER_TINY, enc_layers=1, dec_layers=1, img_layers=1, action_type="discrete")
TDMPC = dict(enc_dim=32, mlp_dim=32, latent_dim=16, num_q=2)


def dreamer(seed=0):
    return create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, device="cpu", seed=seed, **DREAMER)


def tdmpc():
    return create_world_model("tdmpc2:1m", obs_shape=(3,), action_dim=1, device="cpu", **TDMPC)


def config(**changes):
    values = dict(total_steps=4, batch_size=4, sequence_length=8, steps_per_dispatch=4, device="cpu",
                  eval_interval=0, warmup_steps=2)
    values.update(changes)
    return TrainingConfig(**values)


def leaves(tree):
    return [np.array(x) for x in jax.tree_util.tree_leaves(tree)]  # copies: a donated buffer may be reused


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def finite(tree):
    return all(np.isfinite(x).all() for x in leaves(tree))


@pytest.fixture(scope="module")
def buffer():
    return create_random_buffer(capacity=2000, obs_shape=(4,), action_dim=2, num_episodes=30, episode_length=12)


@pytest.fixture(scope="module")
def extreme_buffer():
    """Pendulum-sized episodes; every fourth holds one observation of 3e38 (finite, but it overflows TD-MPC2)."""
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(2000, (3,), 1, seed=0)
    for episode in range(20):
        obs = rng.normal(size=(20, 3)).astype(np.float32)
        if episode % 4 == 0:
            obs[5] = 3e38
        buffer.add_episode(obs=obs, actions=rng.uniform(-1, 1, (20, 1)).astype(np.float32),
                           rewards=rng.normal(size=20).astype(np.float32), dones=np.eye(20, dtype=bool)[-1])
    return buffer


@pytest.fixture(scope="module")
def overflowing_buffer():
    """Every observation 3e38: every TD-MPC2 update overflows."""
    rng = np.random.default_rng(1)
    buffer = ReplayBuffer(2000, (3,), 1, seed=0)
    for _ in range(4):
        buffer.add_episode(obs=np.full((20, 3), 3e38, np.float32), actions=rng.uniform(-1, 1, (20, 1)).astype("f"),
                           rewards=rng.normal(size=20).astype(np.float32), dones=np.eye(20, dtype=bool)[-1])
    return buffer


class Record(Callback):
    """Every reported update's losses, and the params at each step the state is synced."""

    def __init__(self):
        self.losses, self.params = {}, {}

    def on_step_end(self, step, losses):
        self.losses[step] = losses
        if step == self.trainer.step:
            self.params[step] = leaves(self.trainer.program.update.params(self.trainer.state))


def test_settings_are_validated():
    assert TrainingConfig().on_nonfinite == "stop" and AgentRunConfig().on_nonfinite == "stop"
    for make in (TrainingConfig, AgentRunConfig):
        with pytest.raises(ConfigError, match="on_nonfinite must be one of 'stop', 'skip', 'ignore', got 'halt'"):
            make(on_nonfinite="halt")
        with pytest.raises(ConfigError, match="max_consecutive_skips must be >= 1, got 0"):
            make(max_consecutive_skips=0)
    assert issubclass(TrainingError, WorldloomError) and issubclass(TrainingError, RuntimeError)


@pytest.mark.slow(reason="compiles a DreamerV3 Trainer update twice: finite and infinite learning rate")
def test_stop_names_the_step_and_keeps_the_last_good_checkpoint(infinite_learning_rate, buffer, tmp_path):
    directory = tmp_path / "ckpt"
    good = Trainer(dreamer(), config(checkpoint_dir=str(directory), save_interval=2)).train(buffer)
    assert [step for step, _ in list_checkpoints(directory)] == [2, 4]
    before = {path.name: (path / "meta.json").read_text() for _, path in list_checkpoints(directory)}

    # Resumed at step 4 with an infinite learning rate: update 5 makes the params non-finite.
    diverging = config(total_steps=8, learning_rate=INF, checkpoint_dir=str(directory), save_interval=2)
    model = dreamer(seed=1)
    trainer = Trainer(model, diverging)
    with pytest.warns(RuntimeWarning, match="learning_rate"), pytest.raises(TrainingError) as caught:
        trainer.train(buffer, resume=True)
    message = str(caught.value)
    assert "Step 5 is not finite" in message and "params or optimiser state" in message
    assert "on_nonfinite='stop'" in message
    # No checkpoint of steps 6 or 8; the ones on disk are untouched.
    assert {path.name: (path / "meta.json").read_text() for _, path in list_checkpoints(directory)} == before
    # The trainer and the model hold the last finite state: step 4, equal to the good run's.
    assert trainer.step == 4 and finite(trainer.state)
    assert same(leaves(model.params), leaves(good.params))

    # The newest checkpoint still loads and trains on to finite params.
    resumed = Trainer(dreamer(seed=2), config(total_steps=6), resume_from=directory / "step_00000004")
    assert resumed.train(buffer) is not None and resumed.step == 6 and finite(resumed.model.params)


@pytest.mark.slow(reason="alone, compiles the infinite-learning-rate DreamerV3 update (the test above shares it)")
def test_stop_with_dispatches_in_flight_drops_the_state(infinite_learning_rate, buffer):
    # With max_in_flight=2 the second dispatch has run from the halted state by the time the first is read.
    model = dreamer()
    initial = leaves(model.params)
    trainer = Trainer(model, config(total_steps=8, learning_rate=INF, max_in_flight=2))
    with pytest.raises(TrainingError, match="Step 1 is not finite"):
        trainer.train(buffer)
    assert trainer.state is None and trainer.step == 0 and same(leaves(model.params), initial)


@pytest.mark.slow(reason="compiles a TD-MPC2 Trainer update (4 per dispatch)")
def test_stop_mid_dispatch_reports_only_the_updates_before(extreme_buffer):
    # Batches are drawn per step, so the window with the extreme observation is update 7's whatever K is.
    record = Record()
    model = tdmpc()
    trainer = Trainer(model, config(total_steps=12, batch_size=2, sequence_length=4, warmup_steps=0), [record])
    with pytest.raises(TrainingError) as caught:
        trainer.train(extreme_buffer)
    message = str(caught.value)
    assert message.startswith("Step 7 is not finite: ")
    assert "loss=nan" in message and "loss/consistency=nan" in message and "loss/reward" not in message
    assert sorted(record.losses) == [1, 2, 3, 4, 5, 6]  # update 7 is index 2 of the dispatch of steps 5..8
    assert trainer.step == 6 and trainer.skipped_updates == 1
    assert finite(model.params) and same(leaves(model.params), leaves(trainer.program.update.params(trainer.state)))


@pytest.mark.slow(reason="compiles a TD-MPC2 Trainer update (1 per dispatch, skipping)")
def test_skip_leaves_the_state_unchanged_and_counts(extreme_buffer, tmp_path):
    record = Record()
    logged = LoggingCallback(metrics_file=tmp_path / "metrics.jsonl", log_interval=4, log_to_tensorboard=False)
    stopper = EarlyStoppingCallback(monitor="loss", patience=100)
    settings = config(total_steps=12, batch_size=2, sequence_length=4, warmup_steps=20, steps_per_dispatch=1,
                      on_nonfinite="skip")
    trainer = Trainer(tdmpc(), settings, [record, logged, stopper])
    model = trainer.train(extreme_buffer)
    skipped = [step for step, losses in record.losses.items() if losses["skipped"]]
    assert skipped == [7] and trainer.skipped_updates == 1
    # The logged lr is the one each update ran with: the warm-up at the optimiser's count, which the skipped
    # update did not advance (step 8 runs as the 7th applied update, as step 7 tried to).
    rate = settings.learning_rate / 20
    assert [record.losses[s]["lr"] for s in range(1, 13)] == pytest.approx(
        [rate * count for count in (0, 1, 2, 3, 4, 5, 6, 6, 7, 8, 9, 10)])
    assert not np.isfinite(record.losses[7]["loss"])  # reported as computed
    # The callbacks leave it out: the interval of steps 5..8 logs the mean loss of its 3 applied updates
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    interval = next(row for row in rows if row["step"] == 8)
    assert interval["train/loss"] == pytest.approx(np.mean([record.losses[s]["loss"] for s in (5, 6, 8)]))
    assert interval["train/skipped"] == 0.25
    assert np.isfinite(stopper.best) and stopper.best == min(record.losses[s]["loss"] for s in record.losses if s != 7)
    assert same(record.params[7], record.params[6])  # the skipped update left the params as they were
    assert not same(record.params[8], record.params[7]) and not same(record.params[6], record.params[5])
    assert finite(model.params) and same(leaves(model.params), record.params[12])
    # A resumed run counts the skipped update too: its first update is the 12th applied.
    saved = trainer.save_checkpoint(tmp_path / "ckpt")
    resumed = Trainer(tdmpc(), settings.replace(total_steps=13), resume_from=saved)
    resumed.train(extreme_buffer)
    assert resumed.step == 13 and resumed.last_losses["lr"] == pytest.approx(rate * 11)


@pytest.mark.slow(reason="compiles a TD-MPC2 Trainer update (the skip test's program, when run alone)")
def test_skip_stops_after_too_many_in_a_row(overflowing_buffer):
    # The skip test's program (TD-MPC2, one update per dispatch) on windows that all overflow.
    record = Record()
    model = tdmpc()
    initial = leaves(model.params)
    trainer = Trainer(model, config(total_steps=20, batch_size=2, sequence_length=4, warmup_steps=20,
                                    steps_per_dispatch=1, on_nonfinite="skip", max_consecutive_skips=5), [record])
    with pytest.raises(TrainingError, match=r"6 consecutive updates were not finite and were skipped \(step 1 to "
                                            r"step 6\), more than max_consecutive_skips=5"):
        trainer.train(overflowing_buffer)
    assert trainer.skipped_updates == 6 and [record.losses[s]["skipped"] for s in sorted(record.losses)] == [1.0] * 5
    assert same(leaves(model.params), initial)  # no update applied


@pytest.mark.slow(reason="compiles the unguarded DreamerV3 Trainer update")
def test_ignore_lets_non_finite_params_through(infinite_learning_rate, buffer):
    trainer = Trainer(dreamer(), config(total_steps=2, learning_rate=INF, on_nonfinite="ignore"))
    model = trainer.train(buffer)
    assert not finite(model.params) and "skipped" not in trainer.last_losses


def test_host_guard_counts_runs_across_dispatches():
    guard = NonFiniteGuard("skip", 2)
    row = {"loss": float("nan")}.copy
    assert guard.inspect(0, [0, 1, 1], lambda i: row()) == (3, None)
    reportable, problem = guard.inspect(3, [1, 0], lambda i: row())
    assert reportable == 0 and "3 consecutive updates" in problem and "(step 2 to step 4)" in problem
    assert "loss=nan" in problem and guard.skipped == 3
    stop = NonFiniteGuard("stop", 2)
    assert stop.inspect(0, [0, 0], lambda i: row()) == (2, None)
    assert stop.inspect(2, [0, 1], lambda i: row())[0] == 1


# ------------------------------------------------------------ agents


@pytest.mark.slow(reason="compiles the agent's update (run_agent's on CartPole and Pendulum, shared through the cache)")
@pytest.mark.parametrize("algo", ["dreamerv3", "tdmpc2"])
def test_agent_update_skips_a_non_finite_update(algo, rng, stream_batch):
    # Each agent's update as a run on CartPole or Pendulum compiles it (its settings, its windows' shapes, donated),
    # on windows holding one NaN observation.
    settings = run_settings(algo)
    if algo == "dreamerv3":
        agent = dreamer_agent()
        batch = stream_batch(agent, rng, DREAMER_BATCH, DREAMER_LENGTH)
    else:
        agent = TDMPC2Agent(pendulum_tdmpc())
        buffer = ReplayBuffer(100, (3,), 1, seed=0)
        buffer.add_episode(obs=rng.normal(size=(20, 3)).astype("f"), actions=rng.uniform(-1, 1, (20, 1)).astype("f"),
                           rewards=np.ones(20, "f"), dones=np.eye(20, dtype=bool)[-1])
        batch = dict(buffer.sample_episodes(TDMPC_BATCH, TDMPC_LENGTH))
    batch["obs"] = np.array(batch["obs"])
    batch["obs"][0, 1] = np.nan
    update = agent.make_update(settings)
    state = update.init(agent.params)
    initial = leaves(state)
    state, metrics, *_ = jit_update(update)(state, batch, jax.random.PRNGKey(0))  # DreamerV3: + posteriors
    assert float(metrics["skipped"]) == 1.0 and same(leaves(state), initial)
    unguarded = agent.make_update(settings, skip_nonfinite=False)
    shapes = jax.eval_shape(unguarded.step, jax.eval_shape(unguarded.init, agent.params), batch, jax.random.PRNGKey(0))
    assert "skipped" not in shapes[1]


def _dreamer_run(tmp_path, **changes):
    values = dict(env="CartPole-v1", algo="dreamerv3", total_steps=100, seed_steps=40, train_ratio=8, batch_size=2,
                  sequence_length=8, eval_every=100, eval_episodes=0, checkpoint_every=20,
                  out_dir=str(tmp_path / "run"), seed=3, learning_rate=INF)
    values.update(changes)
    return AgentRunConfig(**values)


@pytest.mark.slow(reason="compiles a DreamerV3 agent, its policy step and its update at an infinite learning rate")
def test_run_agent_stops_before_the_checkpoint(infinite_learning_rate, tmp_path):
    # From environment step 40 on, half an update is owed per step: the first runs at step 41.
    with pytest.raises(TrainingError) as caught:
        run_agent(_dreamer_run(tmp_path), progress=False, **DREAMER_TINY)
    message = str(caught.value)
    assert message.startswith("Update 1 is not finite: ") and "environment step 41." in message
    assert "AgentRunConfig.on_nonfinite='stop'" in message
    checkpoint = tmp_path / "run" / "checkpoints"
    assert json.loads((checkpoint / "loop.json").read_text())["env_step"] == 40  # the last one before the failure
    assert not (tmp_path / "run" / "agent").exists()


@pytest.mark.slow(reason="compiles a TD-MPC2 agent's K-update program at an infinite learning rate")
def test_run_agent_skips_and_counts(infinite_learning_rate, tmp_path):
    # The pretraining burst of 200 updates once the first (200-step) episode is stored; every one dropped.
    config = AgentRunConfig(env="Pendulum-v1", algo="tdmpc2", total_steps=200, seed_steps=200, batch_size=8,
                            learning_rate=INF, eval_every=200, eval_episodes=0, checkpoint_every=0,
                            on_nonfinite="skip", max_consecutive_skips=200, out_dir=str(tmp_path / "run"))
    result = run_agent(config, progress=False, **TDMPC_TINY)
    assert result["updates"] == 200 and result["skipped_updates"] == 200
    saved = TDMPC2Agent.load(tmp_path / "run" / "agent")
    fresh = pendulum_tdmpc()
    assert same(leaves(saved.params), leaves(fresh.params))  # every update was dropped
