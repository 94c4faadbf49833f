"""Scaling the trainer: compile-once, data parallel over (fake) devices, bf16 compute, on-device replay.

Every run trains one tiny DreamerV3 model with settings of its own
(learning rate 1e-3), so the cached programs of this file compile here and
the compile counts are exact. The data-parallel runs need several devices,
which JAX fixes when it starts: they run in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from worldloom import create_world_model
from worldloom.core.errors import ConfigError
from worldloom.training import ReplayBuffer, Trainer, TrainingConfig
from worldloom.training._device_replay import build_table, sample_windows
from worldloom.training.callbacks import Callback, CheckpointCallback
from worldloom.training.data import create_random_buffer

SMALL = dict(deter=64, hidden=32, units=32, classes=4, stoch=4, enc_layers=1, dec_layers=1, img_layers=1,
             action_type="discrete")
RUN = dict(batch_size=8, sequence_length=8, steps_per_dispatch=4, device="cpu", eval_interval=0, warmup_steps=2,
           learning_rate=1e-3)
EVALUATED = dict(eval_interval=8, eval_fraction=0.1)  # evaluations every 8 updates, on held-out windows


def make_model(**changes):
    return create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, device="cpu", seed=0,
                              **{**SMALL, **changes})


def make_buffer():
    return create_random_buffer(capacity=2000, obs_shape=(4,), action_dim=2, num_episodes=30, episode_length=12,
                                seed=0)


def leaves(model):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(model.params)]


class Losses(Callback):
    def __init__(self):
        self.values = []

    def on_step_end(self, step, losses):
        self.values.append(losses["loss"])


@pytest.fixture(scope="module")
def buffer():
    return make_buffer()


@pytest.fixture(scope="module")
def replay_run(buffer, tmp_path_factory):
    """24 updates sampled on the device, checkpointed every 8; the data-parallel test compares its
    4-device run with these params."""
    losses, directory = Losses(), tmp_path_factory.mktemp("replay-ckpt")
    trainer = Trainer(make_model(), TrainingConfig(total_steps=24, device_replay=True, **RUN),
                      [losses, CheckpointCallback(directory, save_every=8)])
    model = trainer.train(buffer)
    return {"params": leaves(model), "losses": losses.values, "trainer": trainer, "dir": directory}


@pytest.mark.slow
def test_one_compile_per_shape_for_host_batches_and_device_replay(buffer, replay_run):
    trainer = Trainer(make_model(), TrainingConfig(total_steps=10, **RUN))  # dispatches of 4, 4 and 2
    trainer.train(buffer)
    program = trainer.program
    assert replay_run["trainer"].program is program  # cached per model config, settings and K
    host, device = program.runners[(None, None)], program.runners[(None, (8, 8))]
    assert host._cache_size() == 1 and device._cache_size() == 1
    # More runs, with evaluations cutting dispatches elsewhere, on both paths: no new executable.
    Trainer(make_model(), TrainingConfig(total_steps=7, **{**RUN, "eval_interval": 3})).train(buffer)
    Trainer(make_model(), TrainingConfig(total_steps=6, device_replay=True, **RUN)).train(buffer)
    assert host._cache_size() == 1 and device._cache_size() == 1
    assert trainer.compile_count == 2 and program.traces == 2 and len(program.runners) == 2


@pytest.mark.slow
def test_device_replay_trains_and_is_reproducible(buffer, replay_run):
    losses = replay_run["losses"]
    assert len(losses) == 24 and np.all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < 0.9 * np.mean(losses[:4])
    again = Trainer(make_model(), TrainingConfig(total_steps=24, device_replay=True, **RUN)).train(buffer)
    assert all(np.array_equal(a, b) for a, b in zip(leaves(again), replay_run["params"]))
    resumed = Trainer(make_model(), TrainingConfig(total_steps=24, device_replay=True, **RUN),
                      resume_from=replay_run["dir"] / "step_00000008").train(buffer)
    assert all(np.array_equal(a, b) for a, b in zip(leaves(resumed), replay_run["params"]))
    other = Trainer(make_model(), TrainingConfig(total_steps=24, device_replay="auto", **{**RUN, "seed": 7}))
    other.train(buffer)
    assert other._run["sampler"] == "device"  # "auto": a 2000-row buffer fits
    assert not all(np.array_equal(a, b) for a, b in zip(leaves(other.model), replay_run["params"]))


def test_device_windows_follow_the_host_sampler_definitions():
    """Windows sampled on the device are valid windows of the training rows, with the host's fields."""
    buffer = ReplayBuffer(capacity=50, obs_shape=(1,), action_dim=2)
    written = 0
    for length in (20, 7, 15, 18):  # wraps the ring: the first episode is dropped
        rows = np.arange(written, written + length, dtype=np.float32)[:, None]
        written += length
        buffer.add_episode(rows, np.arange(length) % 2, np.ones(length), dones=np.arange(length) == length - 1,
                           terminated=np.arange(length) == length - 1)
    oldest, written = buffer.segments()[0]
    assert (oldest, written) == (20, 60)
    segments = np.array([[oldest, 52]])  # the newest 8 rows held out
    layout = {"obs": np.dtype(np.float32), "actions": np.dtype(np.float32), "continues": np.dtype(np.float32),
              "is_first": np.dtype(bool), "terminals": np.dtype(bool)}
    table = jax.device_put(build_table(buffer, segments, 6, layout))
    batch = jax.jit(sample_windows, static_argnums=(2, 3))(table, jax.random.PRNGKey(0), 256, 6)
    rows = np.asarray(batch["obs"][..., 0]).astype(np.int64)  # the obs of a row is its absolute row number
    assert np.all(np.diff(rows, axis=1) == 1) and rows.min() >= oldest and rows.max() < 52
    assert len(np.unique(rows[:, 0])) == 52 - 6 + 1 - oldest  # every valid start is drawn
    expected = buffer.gather(rows)
    for key in layout:
        np.testing.assert_array_equal(np.asarray(batch[key]), expected[key].astype(layout[key]))
    assert np.asarray(batch["is_first"]).any() and (np.asarray(batch["continues"]) == 0).any()


@pytest.mark.slow
def test_bf16_compute_losses_agree_with_f32(buffer):
    """bf16 matmuls with f32 params, norms and losses: the same losses to within 2% on a fixed batch.

    Measured on this tiny model: 0.4% on the total, 1.0% at most on a term
    (the KL terms, just above their free-bits floor of 1); 2% holds that with
    a factor of two to spare and would catch a loss computed in bf16 end to end.
    """
    batch = {key: value for key, value in buffer.sample(8, 8).items()}
    key = jax.random.PRNGKey(0)
    full = make_model().eval()
    half = make_model(compute_dtype="bfloat16").eval()
    assert all(np.array_equal(a, b) for a, b in zip(leaves(full), leaves(half)))  # f32 params either way
    f32, bf16 = full.compute_loss(batch, key), half.compute_loss(batch, key)
    terms = [name for name in f32 if name == "loss" or name.startswith("loss/")]
    assert {"loss", "loss/rec", "loss/rew", "loss/con", "loss/dyn", "loss/rep"} <= set(terms)
    for name in terms:
        assert float(bf16[name]) == pytest.approx(float(f32[name]), rel=0.02), name
    assert float(bf16["loss"]) != float(f32["loss"])  # bf16 really was used
    assert all(np.dtype(bf16[name].dtype) == np.float32 for name in terms)


def test_data_parallel_needs_the_devices_it_names(buffer):
    with pytest.raises(ConfigError, match="data_parallel must be"):
        TrainingConfig(data_parallel=0)
    with pytest.raises(ConfigError, match="device_replay must be"):
        TrainingConfig(device_replay="yes")
    present = len(jax.devices("cpu"))
    with pytest.raises(ConfigError, match=f"asks for {present + 1} cpu devices; {present} are present"):
        Trainer(make_model(), TrainingConfig(total_steps=2, data_parallel=present + 1, **RUN)).train(buffer)


# Runs in a fresh interpreter with 4 fake CPU devices; writes its findings to sys.argv[1] (json + npz).
_DATA_PARALLEL_SCRIPT = textwrap.dedent("""
    import json, re, sys
    import jax, numpy as np
    from jax.sharding import PartitionSpec as P
    sys.path.insert(0, sys.argv[2])
    from test_scale import EVALUATED, RUN, Losses, leaves, make_buffer, make_model
    from worldloom.core.errors import ConfigError
    from worldloom.training import Trainer, TrainingConfig

    assert len(jax.devices()) == 4, jax.devices()
    buffer, out, arrays = make_buffer(), {}, {}
    try:
        Trainer(make_model(), TrainingConfig(total_steps=2, data_parallel=True, **{**RUN, "batch_size": 6})
                ).train(buffer)
    except ConfigError as err:
        out["indivisible"] = str(err)
    runs = {"four": dict(data_parallel=True, max_in_flight=3, **EVALUATED),
            "four_replay": dict(data_parallel=4, max_in_flight=3, device_replay=True)}
    for name, extra in runs.items():
        losses = Losses()
        config = TrainingConfig(total_steps=24, **{**RUN, **extra})
        trainer = Trainer(make_model(), config, [losses])
        model = trainer.train(buffer)
        chunk = trainer.placement.chunk(np.zeros((4, 8, 8), np.int64), buffer.gather)
        state = jax.tree_util.tree_leaves(trainer.state)
        out[name] = {
            "devices": trainer.placement.size, "losses": losses.values,
            "batch_spec": str(getattr(chunk["obs"].sharding, "spec", None)),
            "batch_shards": sorted({tuple(s.data.shape) for s in chunk["obs"].addressable_shards}),
            "batch_devices": len(chunk["obs"].sharding.device_set),
            "state_replicated_on": sorted({len(x.sharding.device_set) for x in state
                                           if x.sharding.is_fully_replicated}),
            "state_not_replicated": sum(not x.sharding.is_fully_replicated for x in state),
            "evals": [step for step, _ in trainer.eval_history],
            "runners": len(trainer.program.runners),
            "compiles_per_runner": sorted({run._cache_size() for run in trainer.program.runners.values()}),
        }
        if name == "four":  # the all-reduces of the compiled 4-device update program
            layout = trainer._layout(buffer, buffer.segments())
            rows = np.zeros((RUN["steps_per_dispatch"], 8, 8), np.int64)
            batches = trainer.placement.chunk(rows, lambda r: {k: v.astype(layout[k])
                                                               for k, v in buffer.gather(r).items() if k in layout})
            hlo = trainer.program.runner(trainer.placement.mesh).lower(
                trainer.state, batches, jax.random.PRNGKey(0), np.int32(0), np.int32(1)).compile().as_text()
            out["all_reduces"] = len(re.findall(r" all-reduce(?:-start)?[(]", hlo))
        arrays.update({f"{name}/{i}": x for i, x in enumerate(leaves(model))})
    out["spec_expected"] = str(P(None, "batch"))
    np.savez(sys.argv[1] + ".npz", **arrays)
    with open(sys.argv[1] + ".json", "w") as handle:
        json.dump(out, handle)
""")


@pytest.fixture(scope="module")
def evaluated_run(buffer):
    """24 updates on this process's one device, evaluated every 8: the data-parallel test's reference. Its update
    program is the one test_one_compile_per_shape_for_host_batches_and_device_replay compiles."""
    losses = Losses()
    trainer = Trainer(make_model(), TrainingConfig(total_steps=24, **{**RUN, **EVALUATED}), [losses])
    model = trainer.train(buffer)
    return {"devices": trainer.placement.size, "losses": losses.values, "params": leaves(model),
            "evals": [step for step, _ in trainer.eval_history]}


@pytest.mark.slow(reason="a fresh interpreter with 4 fake devices trains two runs of 24 updates")
def test_data_parallel_on_four_fake_devices_matches_one_device(tmp_path, replay_run, evaluated_run):
    """24 updates of B=8 on 4 devices (2 windows each) end where the 1-device run (in this process) ends.

    Same batches and keys (threefry is partitionable), so the only difference is
    the order of the batch reductions (the gradient all-reduce sums 4 partial
    sums): measured at most 1.2e-7 absolute on params of size ~0.1-1 after 24
    updates. ``rtol=1e-4, atol=1e-5`` leaves two orders of magnitude for
    another CPU, yet fails for any real difference (a step skipped, a batch
    sampled differently or averaged over one shard only).
    """
    base = str(tmp_path / "result")
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip()
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")  # and the tests' optimisation level
    done = subprocess.run([sys.executable, "-c", _DATA_PARALLEL_SCRIPT, base, os.path.dirname(__file__)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    with open(base + ".json") as handle:
        out = json.load(handle)
    arrays = np.load(base + ".npz")
    assert "batch_size must be divisible by the 4 data-parallel devices; got batch_size=6" in out["indivisible"]
    one, four = evaluated_run, out["four"]
    assert one["devices"] == 1 and four["devices"] == 4 and out["four_replay"]["devices"] == 4
    for run in (four, out["four_replay"]):
        assert run["batch_spec"] == out["spec_expected"] and run["batch_devices"] == 4
        assert run["batch_shards"] == [[4, 2, 8, 4]]  # [K, B/4, T, obs]
        assert run["state_replicated_on"] == [4] and run["state_not_replicated"] == 0
        # No program compiled twice, evaluations and short dispatches included (a runner of the cached program
        # that this process never called compiled nothing).
        assert max(run["compiles_per_runner"]) == 1
    assert out["four_replay"]["runners"] == 3  # one device; 4 devices; 4 devices sampling on device
    assert one["evals"] == four["evals"] == [8, 16, 24]
    # One all-reduce per update (the averaged gradients and metrics, shard_map + pmean); none at each time step.
    assert out["all_reduces"] == 1
    count = len(replay_run["params"])
    for name, reference in (("four", one["params"]), ("four_replay", replay_run["params"])):
        assert len(reference) == count
        for index in range(count):
            np.testing.assert_allclose(arrays[f"{name}/{index}"], reference[index], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-4)
    np.testing.assert_allclose(out["four_replay"]["losses"], replay_run["losses"], rtol=1e-4)
