"""create_world_model: presets, aliases, overrides, devices, save/load."""

import json
import os

import jax
import numpy as np
import pytest

import worldloom
from worldloom import (
    CheckpointError,
    ConfigError,
    DeviceError,
    UnknownModelError,
    create_world_model,
    get_model_info,
    list_models,
)

TINY = dict(deter=64, hidden=32, units=32, classes=4, stoch=4, depth=2)


@pytest.mark.slow
def test_list_models_names_every_preset():
    names = list_models()
    for size in ("size1m", "size12m", "size25m", "size50m", "size100m", "size200m", "size400m"):
        assert f"dreamerv3:{size}" in names
    verbose = list_models(verbose=True)
    assert list(verbose) == names  # the original's {name: info}
    info = verbose["dreamerv3:size12m"]
    assert info["family"] == info["type"] == "dreamerv3" and "dreamer" in info["aliases"]
    assert info["num_parameters"] == 8_852_675 and info["params"] == "8.9M"


@pytest.mark.parametrize(
    "alias,preset",
    [("dreamer", "size12m"), ("dreamerv3", "size12m"), ("dreamer-small", "size12m"),
     ("dreamer-medium", "size50m"), ("dreamer-large", "size200m"), ("DreamerV3:Size1M", "size1m")],
)
def test_aliases(alias, preset):
    assert get_model_info(alias)["preset"] == preset


def test_unknown_preset_names_the_available_ones():
    with pytest.raises(UnknownModelError) as err:
        create_world_model("dreamerv3:size3m", obs_shape=(4,), action_dim=2)
    message = str(err.value)
    assert "dreamerv3:size12m" in message and "dreamer-small" in message and "size3m" in message
    assert message.startswith("Unknown model 'dreamerv3:size3m': model type 'dreamerv3' has no preset 'size3m'.")


@pytest.mark.slow
def test_overrides_apply_and_unknown_override_is_named():
    model = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=3, action_type="discrete", **TINY)
    assert model.config.deter == 64 and model.config.action_type == "discrete"
    with pytest.raises(ConfigError, match="no field 'detr'.*deter"):
        create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=3, detr=64)
    with pytest.raises(ConfigError, match="action_type"):
        create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=3, action_type="binary")
    with pytest.raises(ConfigError, match="obs_shape= and action_dim="):
        create_world_model("dreamerv3:size1m")


def test_devices():
    model = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, device="cpu", **TINY)
    assert model.device.platform == "cpu"
    auto = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, device="auto", **TINY)
    assert auto.device == jax.devices()[0]
    if not any(d.platform == "tpu" for d in jax.devices()):
        with pytest.raises(DeviceError, match="not available; available: .*cpu"):
            create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, device="tpu", **TINY)
    with pytest.raises(DeviceError, match="Unknown device"):
        create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, device="quantum", **TINY)
    # The documented order, (model, obs_shape, action_dim, device): device may come by position, on both faces
    assert create_world_model("dreamerv3:size1m", (4,), 2, "cpu", **TINY).device.platform == "cpu"
    torch_face = pytest.importorskip("worldloom_torch_compat")
    assert str(torch_face.create_world_model("dreamerv3:size1m", (4,), 2, "cpu", **TINY).device) == "cpu"


def test_seed_controls_init():
    a = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, seed=1, **TINY)
    b = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, seed=1, **TINY)
    c = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, seed=2, **TINY)
    leaves = lambda m: jax.tree_util.tree_leaves(m.params)  # noqa: E731
    assert all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b)))
    assert not all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(c)))


def test_parameters_views():
    model = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, **TINY)
    total = sum(p.numel() for p in model.parameters())
    assert total == model.num_parameters() > 0
    names = dict(model.named_parameters())
    assert names["rssm.dyn_hidden.kernel"].shape == (8, 64 // 8 + 3 * 32, 64 // 8)
    assert names["rssm.dyn_gru.kernel"].shape == (8, 64 // 8, 3 * 64 // 8)


@pytest.fixture
def saved(tmp_path):
    model = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, seed=5, **TINY)
    path = tmp_path / "model"
    model.save_pretrained(path)
    return model, path


def test_save_load_round_trip_bit_for_bit(saved, tmp_path):
    model, path = saved
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no temporary leftovers
    loaded = create_world_model(str(path))
    assert loaded.config == model.config and loaded.preset == "size1m"
    for (name_a, a), (name_b, b) in zip(model.named_parameters(), loaded.named_parameters()):
        assert name_a == name_b
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    obs = np.random.default_rng(0).normal(size=(2, 4))
    model.eval(), loaded.eval()
    np.testing.assert_array_equal(model.decode(model.encode(obs))["obs"], loaded.decode(loaded.encode(obs))["obs"])


def test_save_overwrites_atomically(saved):
    model, path = saved
    other = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, seed=9, **TINY)
    other.save_pretrained(path)
    loaded = create_world_model(path)
    np.testing.assert_array_equal(
        np.asarray(jax.tree_util.tree_leaves(loaded.params)[0]), np.asarray(jax.tree_util.tree_leaves(other.params)[0])
    )
    assert sorted(os.listdir(path.parent)) == ["model"]


def test_missing_and_corrupt_directories(saved, tmp_path):
    _, path = saved
    with pytest.raises(CheckpointError, match="No saved model"):
        create_world_model(str(tmp_path / "nowhere"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        create_world_model(str(empty))
    config = path / "config.json"
    good = config.read_text()
    config.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        create_world_model(str(path))
    config.write_text(good)
    record = path / "worldloom.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "weights_sha256": "0" * 64}))
    with pytest.raises(CheckpointError, match="checksum"):
        create_world_model(str(path))


def test_a_preset_name_is_the_preset_whatever_the_working_directory_holds(saved, tmp_path, monkeypatch):
    model, _ = saved
    monkeypatch.chdir(tmp_path)
    model.save_pretrained("dreamerv3:size1m")
    fresh = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=3, **TINY)
    assert fresh.config.action_dim == 3  # the preset with these shapes, not the directory of that name
    loaded = create_world_model("./dreamerv3:size1m")  # a path that looks like one
    assert loaded.config == model.config
    np.testing.assert_array_equal(np.asarray(jax.tree_util.tree_leaves(loaded.params)[0]),
                                  np.asarray(jax.tree_util.tree_leaves(model.params)[0]))
    assert worldloom.get_config("dreamerv3:size1m", obs_shape=(4,), action_dim=3).action_dim == 3
    assert create_world_model("model").config == model.config  # no preset of that name: a saved directory
    (tmp_path / "plain").mkdir()
    with pytest.raises(UnknownModelError, match="'plain' exists here but holds no config.json"):
        create_world_model("plain", obs_shape=(4,), action_dim=2)


def test_an_empty_name_is_a_config_error():
    for name in ("", "  "):
        with pytest.raises(ConfigError, match="expected a preset name .* got "):
            create_world_model(name, obs_shape=(4,), action_dim=2)


@pytest.mark.slow(reason="builds, saves and loads models through the torch face")
def test_the_torch_face_resolves_names_by_the_same_rule(saved, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import worldloom_torch_compat as face

    model, _ = saved
    monkeypatch.chdir(tmp_path)
    model.save_pretrained("dreamerv3:size1m")
    fresh = face.create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=3, device="cpu", **TINY)
    assert fresh.action_dim == 3  # the preset, not the directory of that name
    assert face.create_world_model("./dreamerv3:size1m", device="cpu").action_dim == 2
    with pytest.raises(ConfigError):
        face.create_world_model("", device="cpu")


def test_truncated_weights_are_an_error(saved):
    _, path = saved
    files = sorted(p for p in (path / "weights").rglob("*") if p.is_file() and p.stat().st_size > 64)
    assert files
    for file in files:
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="is damaged"):  # the manifest names the cut files
        create_world_model(str(path))
    # As version 1 wrote it, with no manifest: orbax itself meets the damage, and its error is ours.
    fields, record = json.loads((path / "config.json").read_text()), path / "worldloom.json"
    del fields["model_type"]
    (path / "config.json").write_text(json.dumps({**json.loads(record.read_text()), "version": 1, "config": fields}))
    record.unlink()
    (path / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="Could not read the weights at"):
        create_world_model(str(path))


def test_import_worldloom_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, worldloom; worldloom.list_models(); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert worldloom.__version__


@pytest.mark.slow(reason="initialises a tiny DreamerV3 and a tiny TD-MPC2 model (compiles their initialisers)")
def test_models_of_equal_configs_share_their_programs():
    """A second model of a config (another seed, a reload, a sweep in a notebook) traces and compiles nothing
    the first one did: the handles share one set of jitted programs and one update per optimiser settings."""
    from _agents import TDMPC_TINY, dreamer_model, pendulum_tdmpc, run_settings

    from worldloom.agents import TDMPC2Agent
    from worldloom.training.programs import update_program

    for algo, make in (("dreamerv3", dreamer_model), ("tdmpc2", pendulum_tdmpc)):
        first, second = make(), make(seed=3)
        pairs = zip(jax.tree_util.tree_leaves(first.params), jax.tree_util.tree_leaves(second.params))
        assert not all(np.array_equal(a, b) for a, b in pairs)  # other params, the same programs
        assert second.programs is first.programs and second.functions is first.functions
        settings = run_settings(algo)
        update = first.make_update(settings)
        assert second.make_update(settings) is update
        assert first.make_update(run_settings(algo, learning_rate=1e-3)) is not update
        changed = {"dreamerv3": dict(units=48), "tdmpc2": dict(mlp_dim=TDMPC_TINY["mlp_dim"] + 16)}[algo]
        other = make(**changed)
        assert other.programs is not first.programs and other.make_update(settings) is not update
        assert update_program(update, 4, "skip") is update_program(second.make_update(settings), 4, "skip")
        assert update_program(update, 4, "skip") is not update_program(update, 2, "skip")
    agents = [TDMPC2Agent(pendulum_tdmpc(seed=seed)) for seed in (0, 1)]
    settings = run_settings("tdmpc2")
    assert agents[0].make_update(settings) is agents[1].make_update(settings)
    assert agents[0].make_update(settings) is not agents[0].make_update(settings, skip_nonfinite=False)


@pytest.mark.slow(reason="compiles a tiny DreamerV3 model's initialiser, encoder and imagination")
def test_a_model_loaded_first_in_a_process_runs_every_method(tmp_path):
    """Loading builds the programs inside ``jax.eval_shape``; built there first (as in a fresh process), they hold
    no tracer of that trace."""
    import gc

    from worldloom.models.dreamerv3 import model as dreamer_model

    saved = create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, deter=48, hidden=16, units=16,
                               classes=4, stoch=4, seed=3)
    saved.save_pretrained(tmp_path / "m")
    del saved
    gc.collect()
    dreamer_model._programs.cache_clear()  # as in a new process: nothing of this config is built
    model = create_world_model(str(tmp_path / "m"))
    state = model.encode(np.zeros((2, 4), np.float32))
    assert model.imagine(state, np.zeros((3, 2, 2), np.float32)).rewards.shape == (3, 2)
    assert model.decode(state)["reward"].shape == (2, 1)
    # The saved seed, unless one is given: it seeds the RNG, and the params are the saved ones.
    reseeded = create_world_model(str(tmp_path / "m"), seed=5)
    assert model.seed == 3 and reseeded.seed == 5
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(model.params),
                                                     jax.tree_util.tree_leaves(reseeded.params)))
    with pytest.raises(ConfigError, match="seed must be an int, got str 'abc'"):
        create_world_model(str(tmp_path / "m"), seed="abc")
