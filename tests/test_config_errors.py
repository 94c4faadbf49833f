"""Wrong config values and command-line inputs give worldloom's errors with what was expected and got."""

from __future__ import annotations

import subprocess
import sys

import pytest

from worldloom import ConfigError, create_world_model
from worldloom.training import TrainingConfig

TINY = dict(deter=64, hidden=32, units=32, classes=4, stoch=4, depth=2)


def test_unknown_training_config_field_is_a_config_error_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"TrainingConfig has no field 'totl_steps'\. Did you mean 'total_steps'"):
        TrainingConfig(totl_steps=1)
    with pytest.raises(ConfigError, match="Did you mean 'total_steps'"):
        TrainingConfig().replace(totl_steps=1)


@pytest.mark.parametrize("overrides, message", [
    (dict(deter="big"), r"deter: expected an int, got str 'big'"),
    (dict(obs_shape="4"), r"obs_shape: expected a tuple, got str '4'"),
    (dict(obs_shape=(4.5,)), r"obs_shape: expected a non-empty tuple of positive ints, got \(4\.5,\)"),
    (dict(obs_shape=(True,)), r"obs_shape: expected a non-empty tuple of positive ints, got \(True,\)"),
    (dict(action_dim=2.5), r"action_dim: expected an int, got float 2\.5"),
    (dict(action_dim=True), r"action_dim: expected an int, got bool True"),
    (dict(unimix="0.01"), r"unimix: expected a number, got str"),
])
def test_values_are_not_silently_coerced(overrides, message):
    args = {"obs_shape": (4,), "action_dim": 2, **TINY, **overrides}
    with pytest.raises(ConfigError, match=message):
        create_world_model("dreamerv3:size1m", **args)


@pytest.mark.parametrize("overrides, message", [
    (dict(seed=-1), r"seed must be >= 0, got -1"),
    (dict(learning_rate=float("inf")), r"learning_rate must be finite and > 0, got inf"),
    (dict(weight_decay=float("inf")), r"weight_decay must be finite and >= 0, got inf"),
    (dict(grad_clip=float("nan")), r"grad_clip must be finite and >= 0 \(0 or None: no clip\), got nan"),
    (dict(checkpoint_dir=5), r"checkpoint_dir: expected a string or None, got int 5"),
    (dict(checkpoint_dir=""), r"checkpoint_dir must be a directory path or None, got str ''"),
    (dict(device="cpu:-1"), r"device must be one of .*an index >= 0\), got 'cpu:-1'"),
])
def test_training_config_refuses_values_it_cannot_train_with(overrides, message):
    with pytest.raises(ConfigError, match=message):
        TrainingConfig(**overrides)
    with pytest.raises(ConfigError, match=r"TrainingConfig.load\(path\): expected a str or os.PathLike file name, "
                                          r"got None \(NoneType\)"):
        TrainingConfig.load(None)


def test_a_range_error_names_its_config():
    from worldloom.models.dreamerv3 import DreamerV3Config

    torch_face = pytest.importorskip("worldloom_torch_compat.core.config")
    for config_cls in (DreamerV3Config, torch_face.DreamerV3Config):
        with pytest.raises(ConfigError, match=r"^DreamerV3Config: unimix must be in \[0, 1\)"):
            config_cls(unimix=5)
    with pytest.raises(ConfigError, match=r"^TrainingConfig: seed must be >= 0, got -1\.$"):
        TrainingConfig(seed=-1)
    with pytest.raises(ConfigError, match=r"^TrainingConfig: learning_rate must be finite and > 0"):
        TrainingConfig(learning_rate=-1.0)  # checked by the OptimizerSettings it builds: named as the user's


def test_a_config_file_round_trips_names_its_family_and_replaces_only_a_config(tmp_path):
    import json

    from worldloom import CheckpointError
    from worldloom.core.config import ConfigBase
    from worldloom.models.dreamerv3 import DreamerV3Config
    from worldloom.models.tdmpc2 import TDMPC2Config

    config = DreamerV3Config.from_size("size1m", obs_shape=(16, 16, 3), action_dim=2, **TINY)
    config.save(tmp_path / "new" / "dir" / "c.json")  # missing parents are made, as the original's save did
    assert DreamerV3Config.load(tmp_path / "new" / "dir" / "c.json") == config
    path = tmp_path / "dreamer.json"
    config.save(path)
    assert json.loads(path.read_text())["model_type"] == "dreamerv3"  # as a saved model's config.json
    assert DreamerV3Config.load(path) == config and ConfigBase.load(str(path)) == config
    tdmpc = TDMPC2Config.from_size("1m", obs_shape=(5,), action_dim=2)
    tdmpc.save(path)  # a config file is replaced
    assert type(ConfigBase.load(path)) is TDMPC2Config
    with pytest.raises(ConfigError, match=r"holds a config of model_type 'tdmpc2'; expected model_type "
                                          r"\['dreamerv3', 'dreamer'\]"):
        DreamerV3Config.load(path)
    with pytest.raises(ConfigError, match="expected no model_type"):
        TrainingConfig.load(path)
    (tmp_path / "notes.txt").write_text("my notes")
    with pytest.raises(CheckpointError, match="got a file of 8 bytes, not a JSON config. Nothing was written"):
        config.save(tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "my notes"
    with pytest.raises(CheckpointError, match="got a directory"):
        config.save(tmp_path)
    config.save(tmp_path / "notes.txt", overwrite=True)
    assert DreamerV3Config.load(tmp_path / "notes.txt") == config
    path.write_text(json.dumps({"deter": 64}))
    with pytest.raises(ConfigError, match="dreamer.json' has no model_type; expected a model_type of"):
        ConfigBase.load(path)
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="holds list; expected a JSON object of config fields"):
        DreamerV3Config.load(path)
    with pytest.raises(CheckpointError, match="cannot read a JSON config at .*missing.json"):
        DreamerV3Config.load(tmp_path / "missing.json")


@pytest.mark.slow
def test_numpy_scalars_and_lists_are_accepted_as_their_python_types():
    import numpy as np

    model = create_world_model("dreamerv3:size1m", obs_shape=[np.int64(4)], action_dim=np.int32(2), **TINY)
    assert model.config.obs_shape == (4,) and type(model.config.action_dim) is int
    assert TrainingConfig(learning_rate=1).learning_rate == 1.0


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "worldloom", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600, env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})


@pytest.mark.parametrize("args, message, status", [
    (["--env", "NoSuchEnv-v0"], "Cannot make the Gymnasium environment 'NoSuchEnv-v0'", 2),
    (["--set", "deter=abc"], "deter: expected an int, got str 'abc'", 2),
    # A directory that cannot be written is a CheckpointError: exit status 1, before anything is collected.
    (["--out", "/proc/worldloom-cannot-write-here"], "Cannot lock '/proc/worldloom-cannot-write-here'", 1),
])
def test_cli_input_errors_are_one_line_not_a_traceback(tmp_path, args, message, status):
    result = run_cli("train", "--episodes", "2", "--test-episodes", "1", "--steps", "1", "--no-progress",
                     "--out", str(tmp_path / "run"), *args, cwd=tmp_path)
    assert result.returncode == status, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
