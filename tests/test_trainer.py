"""TrainingConfig, Trainer and train(): reproducibility, resume, warm-up, evaluation, compile-once.

Every DreamerV3 run here uses one tiny model and one optimiser setting (with a
2-update warm-up), so the jitted multi-update program compiles once for the
whole file (the trainer caches it per model config, settings and steps per
dispatch); test_callbacks.py and test_cli.py use the same setting.
"""

import dataclasses
import os
import signal

import jax
import numpy as np
import pytest

from worldloom import create_world_model, list_models
from worldloom.core.errors import CheckpointError, ConfigError, ShapeError
from worldloom.models.base import OptimizerSettings
from worldloom.training import Trainer, TrainingConfig, train
from worldloom.training._sampling import WindowSampler
from worldloom.training._trainer import training_device
from worldloom.training.callbacks import Callback, CheckpointCallback
from worldloom.training.data import create_random_buffer

SMALL = dict(deter=64, hidden=32, units=32, classes=4, stoch=4, enc_layers=1, dec_layers=1, img_layers=1,
             action_type="discrete")


def make_model(seed=0):
    return create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, device="cpu", seed=seed, **SMALL)


def make_config(**changes):
    values = dict(total_steps=10, batch_size=4, sequence_length=8, steps_per_dispatch=4, device="cpu",
                  eval_interval=0, warmup_steps=2)
    values.update(changes)
    return TrainingConfig(**values)


def leaves(model):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(model.params)]


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def buffer():
    return create_random_buffer(capacity=2000, obs_shape=(4,), action_dim=2, num_episodes=30, episode_length=12,
                                seed=0)


@pytest.fixture(scope="module")
def reference_run(buffer):
    """10 updates with checkpoints every 4 (kept: 4, 8, 10): the run the others must reproduce."""
    import tempfile

    directory = tempfile.mkdtemp(prefix="worldloom-ckpt-")
    trainer = Trainer(make_model(), make_config(), [CheckpointCallback(directory, save_every=4, keep_last=3)])
    model = trainer.train(buffer)
    return {"params": leaves(model), "dir": directory, "trainer": trainer}


def field_docstrings():
    """Field name -> the string literal that follows it in TrainingConfig's source."""
    import ast
    import inspect

    from worldloom.training import _config

    tree = ast.parse(inspect.getsource(_config))
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TrainingConfig").body
    return {a.target.id: b.value.value for a, b in zip(body, body[1:])
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)}


class Record(Callback):
    def __init__(self):
        self.steps, self.losses, self.evals = [], [], []

    def on_step_end(self, step, losses):
        self.steps.append(step)
        self.losses.append(losses)
        assert f"{losses['loss']:.4f}"  # Python floats, formattable as the spec shows

    def on_eval_end(self, step, metrics):
        self.evals.append((step, metrics))


def test_config_fields_defaults_and_validation():
    config = TrainingConfig()
    expected = dict(total_steps=50_000, batch_size=16, sequence_length=50, learning_rate=3e-4, weight_decay=0.0,
                    grad_clip=100.0, warmup_steps=0, log_interval=1000, eval_interval=5000, save_interval=10000,
                    device="cuda", seed=42)
    assert {k: getattr(config, k) for k in expected} == expected
    assert set(field_docstrings()) == {f.name for f in dataclasses.fields(config)}
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.total_steps = 3
    for bad in (dict(total_steps=0), dict(batch_size=-1), dict(learning_rate=0.0), dict(grad_clip=-1.0),
                dict(warmup_steps=-5), dict(device="cdua"), dict(eval_fraction=1.0), dict(steps_per_dispatch=0),
                dict(total_steps=2.5)):
        with pytest.raises(ConfigError):
            TrainingConfig(**bad)
    assert TrainingConfig(total_steps=1e4).total_steps == 10_000
    # The optimiser fields reach the model's make_update unchanged.
    settings = TrainingConfig(learning_rate=1e-3, weight_decay=0.1, grad_clip=5.0, warmup_steps=7).optimizer_settings()
    assert settings == OptimizerSettings(learning_rate=1e-3, weight_decay=0.1, grad_clip=5.0, warmup_steps=7)
    with pytest.raises(ConfigError, match="no field 'totl_steps'"):
        TrainingConfig().replace(totl_steps=3)


def test_reference_settings():
    dreamer = TrainingConfig.reference("dreamerv3")
    assert (dreamer.learning_rate, dreamer.warmup_steps) == (4e-5, 1000)
    tdmpc = TrainingConfig.reference("tdmpc2:5m", total_steps=7)
    assert (tdmpc.learning_rate, tdmpc.grad_clip, tdmpc.total_steps) == (3e-4, 20.0, 7)
    assert TrainingConfig.reference(make_model()).learning_rate == 4e-5
    with pytest.raises(ConfigError, match="No reference settings"):
        TrainingConfig.reference("muzero")


@pytest.mark.skipif(bool([d for d in jax.devices() if d.platform == "gpu"]), reason="a GPU is present")
def test_absent_default_device_falls_back_with_one_warning(monkeypatch):
    import warnings

    from worldloom.training import _trainer

    monkeypatch.setattr(_trainer, "_WARNED_DEVICES", set())
    with pytest.warns(RuntimeWarning, match="device='cuda' is not available.*training on cpu.*to silence"):
        assert training_device("cuda").platform == "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call in this process stays quiet
        assert training_device("cuda").platform == "cpu"


def test_bad_inputs_fail_before_compiling(buffer):
    wrong = create_random_buffer(500, (5,), 2, num_episodes=5, episode_length=20)
    with pytest.raises(ShapeError, match=r"observations of shape \[5\]; the model expects \[4\]"):
        Trainer(make_model(), make_config()).train(wrong)
    with pytest.raises(ConfigError, match="no field 'epochs'"):
        train(make_model(), buffer, total_steps=2, epochs=3)
    with pytest.raises(ConfigError, match="Callback instance"):
        Trainer(make_model(), make_config()).add_callback(print)
    with pytest.raises(CheckpointError, match="No training checkpoint"):
        Trainer(make_model(), make_config(), resume_from=os.devnull + "-missing").train(buffer)


@pytest.mark.slow
def test_same_seed_same_result_one_compile_and_every_step_reported(buffer, reference_run):
    record = Record()
    model = make_model()
    before = leaves(model)
    trainer = Trainer(model, make_config(), [record])
    assert trainer.train(buffer) is model
    assert same(leaves(model), reference_run["params"])  # bit for bit, checkpoints or not
    assert not same(leaves(model), before)
    assert same([np.asarray(x) for x in before], before)  # the initial params were not donated away
    assert record.steps == list(range(1, 11))  # 4 + 4 + a last partial chunk of 2
    assert trainer.compile_count == 1  # one executable for full and partial chunks, across trainers
    assert np.mean([r["loss"] for r in record.losses[-3:]]) < np.mean([r["loss"] for r in record.losses[:3]])
    other = Trainer(make_model(), make_config(seed=7)).train(buffer)
    assert not same(leaves(other), reference_run["params"])


@pytest.mark.slow(reason="compiles the K-update program and the plain update")
def test_scanned_dispatch_matches_a_plain_loop_over_the_update(buffer):
    """K updates in one ``lax.scan`` dispatch == K dispatches of one == a Python loop over ``update.step``."""
    trainer = Trainer(make_model(), make_config(total_steps=3))
    trained = leaves(trainer.train(buffer))
    program, device = trainer.program, jax.devices("cpu")[0]
    model = make_model()
    layout = {k: np.dtype(v.dtype) for k, v in model.prepare_batch(buffer.sample(4, 8)).items()}
    sampler = WindowSampler(buffer, 4, 8, 42, np.array(trainer._run["train_segments"]), layout, 4, device)
    key = jax.device_put(jax.random.split(jax.random.PRNGKey(42))[0], device)

    def fresh_state():
        return jax.device_put(program.update.init(jax.tree_util.tree_map(np.array, model.params)), device)

    def params_of(state):
        return [np.asarray(x) for x in jax.tree_util.tree_leaves(program.update.params(state))]

    state = fresh_state()
    for step in range(3):
        state, _ = program.run(state, sampler.chunk(step, 1), key, np.int32(step), np.int32(1))
    assert same(params_of(state), trained)
    assert trainer.compile_count == 1

    plain_step, state = jax.jit(program.update.step), fresh_state()
    for step in range(3):
        batch = jax.tree_util.tree_map(lambda x: x[0], sampler.chunk(step, 1))
        state, metrics = plain_step(state, batch, jax.random.fold_in(key, step))
    for plain, scanned in zip(params_of(state), trained):
        np.testing.assert_allclose(plain, scanned, rtol=1e-5, atol=1e-6)
    assert np.isfinite(float(metrics["loss"]))


def test_resume_from_a_checkpoint_matches_the_uninterrupted_run(buffer, reference_run):
    names = sorted(os.listdir(reference_run["dir"]))
    assert names == ["best", "step_00000004", "step_00000008", "step_00000010"]
    trainer = Trainer(make_model(), make_config(), resume_from=os.path.join(reference_run["dir"], "step_00000004"))
    record = Record()
    trainer.add_callback(record)
    assert trainer.start_step == 0
    model = trainer.train(buffer)
    assert record.steps == list(range(5, 11)) and (trainer.start_step, trainer.step) == (4, 10)
    assert same(leaves(model), reference_run["params"])


def test_ctrl_c_saves_a_checkpoint_and_resume_true_continues(buffer, reference_run, tmp_path):
    class Interrupt(Callback):
        def on_step_end(self, step, losses):
            if step == 2:
                os.kill(os.getpid(), signal.SIGINT)

    config = make_config(checkpoint_dir=str(tmp_path / "ckpt"), save_interval=3, keep_checkpoints=2)
    trainer = Trainer(make_model(), config, [Interrupt()])
    trainer.train(buffer)  # returns instead of raising
    assert trainer.interrupted and trainer.step == 3  # stops at the end of the dispatch (cut at save_interval)
    assert trainer.start_step == 0  # a fresh run
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["best", "step_00000003"]
    # resume=True takes the newest checkpoint of any checkpoint directory, here not the first one's (empty).
    resumed = Trainer(make_model(), config, [CheckpointCallback(tmp_path / "more", save_every=100)])
    model = resumed.train(buffer, resume=True)
    assert resumed.step == 10 and not resumed.interrupted
    assert same(leaves(model), reference_run["params"])
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["best", "step_00000009", "step_00000010"]  # every 3, the end
    with pytest.raises(ConfigError, match="needs a checkpoint directory"):
        Trainer(make_model(), make_config()).train(buffer, resume=True)


def test_programs_are_shared_while_used_and_the_latest_two_besides():
    """Trainers of one model config share its update programs. A program stays while something uses it and
    while it is one of the two asked for last; the others go with their executables, so that a process that
    builds many configurations does not keep every compiled program (on the CPU each holds thousands of
    memory mappings, and a process has 65,530)."""
    import gc
    import weakref

    from worldloom.training._step import step_program

    model = make_model()
    settings = [OptimizerSettings(learning_rate=1e-3 * (index + 1)) for index in range(4)]
    held = step_program(model, settings[0], 1)  # built, not compiled
    assert step_program(make_model(seed=1), settings[0], 1) is held  # the same config: the same program
    assert step_program(model, settings[0], steps_per_dispatch=1, nonfinite="ignore") is held  # named arguments
    assert step_program(model, settings[0], 2) is not held  # another K
    unused = weakref.ref(step_program(model, settings[1], 1))
    latest = [weakref.ref(step_program(model, one, 1)) for one in settings[2:]]
    gc.collect()
    assert unused() is None  # neither used nor among the latest two
    assert all(ref() is not None for ref in latest)
    assert step_program(model, settings[0], 1) is held  # used, so kept however many came after it
    assert step_program(model, settings[3], 1) is latest[1]()


def test_shared_builds_once_per_key_and_anew_for_what_cannot_be_hashed():
    from worldloom.core.sharing import shared

    built = []

    @shared(keep=1, key=lambda name, extra=None: name)
    def build(name, extra=None):
        built.append(name)
        return (name,) if extra == "tuple" else [name]  # a tuple cannot be weakly referenced: kept while latest

    first = build("a")
    assert build("a", "ignored by the key") is first and built == ["a"]
    assert build(["unhashable"]) is not build(["unhashable"])
    kept = build("b", "tuple")
    assert build("b") is kept
    build("c")
    assert build("b") is not kept  # no longer the latest one, and not tracked while used
    assert build.cache_info()[1] == 1


def test_warmup_is_honoured(buffer):
    model = make_model()
    initial = leaves(model)
    record = Record()
    Trainer(model, make_config(total_steps=1), [record]).train(buffer)
    assert record.losses[0]["lr"] == 0.0
    assert same(leaves(model), initial)  # the first warm-up update has learning rate 0
    record = Record()
    Trainer(model, make_config(total_steps=3), [record]).train(buffer)
    assert [r["lr"] for r in record.losses] == pytest.approx([0.0, 1.5e-4, 3e-4])
    assert not same(leaves(model), initial)


def test_evaluation_on_held_out_episodes_does_not_touch_training(buffer, reference_run):
    record = Record()
    trainer = Trainer(make_model(), make_config(eval_interval=4, eval_fraction=0.1, eval_batches=2), [record])
    model = trainer.train(buffer)
    assert [step for step, _ in record.evals] == [4, 8, 10]  # every 4 updates and at the end
    assert all(np.isfinite(m["eval/loss"]) for _, m in record.evals)
    assert trainer.eval_history == record.evals
    # The newest whole episodes (36 rows >= 10% of 360) are held out; training reads the rest.
    assert trainer._run["eval_segments"] == [[324, 360]] and trainer._run["train_segments"] == [[0, 324]]
    assert trainer.compile_count == 1
    # Evaluations at other steps (and so other dispatch boundaries) leave training unchanged.
    other = Trainer(make_model(), make_config(eval_interval=3, eval_fraction=0.1, eval_batches=1)).train(buffer)
    assert same(leaves(model), leaves(other))


def test_a_run_that_cannot_evaluate_says_why(buffer):
    trainer = Trainer(make_model(), make_config(eval_interval=4, eval_fraction=0.0))
    with pytest.warns(RuntimeWarning, match="eval_interval=4 asks for evaluations, but eval_fraction=0 holds no"):
        assert trainer._split(buffer)[1] is None
    tiny = create_random_buffer(capacity=100, obs_shape=(4,), action_dim=2, num_episodes=1, episode_length=12, seed=0)
    with pytest.warns(RuntimeWarning, match=r"\(12 transitions in 1 episodes\) is too small to hold out "
                                            "sequence_length=8 transitions and keep as many"):
        assert Trainer(make_model(), make_config(eval_interval=4, eval_fraction=0.1))._split(tiny)[1] is None


def test_train_one_liner(buffer):
    model = make_model()
    before = leaves(model)
    out = train(model, buffer, total_steps=4, batch_size=4, sequence_length=8, learning_rate=3e-4, device="cpu",
                steps_per_dispatch=4, eval_interval=0, warmup_steps=2)
    assert out is model and not same(leaves(model), before)


@pytest.mark.slow(reason="compiles a TD-MPC2 training program, trains, checkpoints and resumes")
@pytest.mark.skipif(not any(n.startswith("tdmpc2:") for n in list_models()), reason="no TD-MPC2 presets")
def test_tdmpc2_trains_and_resumes(buffer, tmp_path):
    small = dict(enc_dim=32, mlp_dim=32, latent_dim=16, num_q=2, num_bins=11)

    def tdmpc():
        return create_world_model("tdmpc2:1m", obs_shape=(4,), action_dim=2, device="cpu", **small)

    config = make_config(total_steps=8, eval_interval=4)
    record = Record()
    full = Trainer(tdmpc(), config, [CheckpointCallback(tmp_path, save_every=4), record]).train(buffer)
    assert "loss/consistency" in record.losses[0] and [s for s, _ in record.evals] == [4, 8]
    resumed = Trainer(tdmpc(), config, resume_from=tmp_path / "step_00000004").train(buffer)
    assert same(leaves(resumed), leaves(full))
