"""DreamerV3Config refuses values out of range (ConfigError naming the field), from Python and from a saved model."""

from __future__ import annotations

import json

import pytest

import worldloom
from worldloom import ConfigError, create_world_model
from worldloom.core import persist, registry
from worldloom.core.errors import CheckpointError
from worldloom.models import checkpoint as model_checkpoint
from worldloom.models.dreamerv3.config import ALIASES, DreamerV3Config
from worldloom.training.reference import PRESETS as RUN_PRESETS

TINY = dict(deter=64, hidden=32, units=32, classes=4, stoch=4, enc_layers=1, dec_layers=1, img_layers=1)
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("field, value", [
    ("contdisc_horizon", 0), ("contdisc_horizon", 0.5), ("contdisc_horizon", -333.0), ("contdisc_horizon", INF),
    ("contdisc_horizon", NAN),
    ("unimix", 5), ("unimix", 1.0), ("unimix", -0.01), ("unimix", NAN),
    ("free_nats", NAN), ("free_nats", -1.0), ("free_nats", INF),
    ("reward_bins", 1), ("reward_bins", -1), ("reward_bins", 4),
    ("loss_scale_rew", -1.0), ("loss_scale_rec", NAN), ("loss_scale_con", INF), ("loss_scale_dyn", -0.5),
    ("loss_scale_rep", NAN),
    ("enc_layers", -1), ("dec_layers", -2), ("head_layers", -1), ("img_layers", -1), ("obs_layers", -1),
    ("kernel", 0), ("kernel", -5), ("kernel", 4),
    ("classes", 1), ("classes", 0), ("stoch", 0), ("deter", 0), ("hidden", -32), ("units", 0), ("depth", 0),
    ("blocks", 0), ("decoder_blocks", 0), ("action_dim", 0),
    ("cnn_mults", []), ("cnn_mults", [2, 0]), ("cnn_mults", [2, -3]),
])
def test_out_of_range_values_are_config_errors_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"\b{field}\b.*got"):
        DreamerV3Config(**{"obs_shape": (4,), "action_dim": 2, **TINY, field: value})


@pytest.mark.parametrize("kwargs, message", [
    (dict(stoch_dim=64, num_categories=0), r"classes \(num_categories\) must be an int >= 2, got 0"),
    (dict(kl_balance=0.5, loss_scale_dyn="1"), r"loss_scale_dyn: expected a number, got str '1'"),
    (dict(kl_free=NAN), r"free_nats must be finite and >= 0, got nan"),
    (dict(mlp_layers=-1), r"enc_layers must be >= 0 .*got -1"),
])
def test_the_originals_names_are_checked_as_the_fields_they_set(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DreamerV3Config(**kwargs)


def test_the_edges_of_each_range_stay_valid():
    edges = dict(contdisc_horizon=1.0, unimix=0.0, free_nats=0.0, reward_bins=3, kernel=1, loss_scale_rew=0.0,
                 enc_layers=0, dec_layers=0, head_layers=0, img_layers=0, obs_layers=0, classes=2, stoch=1)
    config = DreamerV3Config(obs_shape=(4,), action_dim=2, **{**TINY, **edges})
    assert (config.contdisc_horizon, config.reward_bins, config.classes) == (1.0, 3, 2)


def test_every_preset_alias_and_run_preset_still_builds_its_config():
    names = [name for name in worldloom.list_models() if name.startswith("dreamerv3:")]
    assert len(names) == 7
    for name in names + list(ALIASES):
        family, preset = registry.resolve(name)
        for space in (dict(obs_shape=(64, 64, 3), action_dim=18, action_type="discrete"), dict(obs_shape=(4,))):
            assert isinstance(family.config_cls.from_size(preset, **space), DreamerV3Config)
    for preset in RUN_PRESETS.values():  # the debug preset's tiny world model: hidden=3, reward_bins=5, ...
        if preset.algo == "dreamerv3" and preset.world_model:
            DreamerV3Config.from_size("size1m", obs_shape=(4,), action_dim=2, **preset.world_model)
    DreamerV3Config(deter=64, stoch=4, classes=4, hidden=32, units=32, depth=4, cnn_mults=(2,), enc_layers=1,
                    obs_shape=(16, 16, 3), action_dim=2)  # the tests' tiny image model


def test_a_saved_config_with_a_value_out_of_range_is_refused_on_load(tmp_path):
    saved = DreamerV3Config(obs_shape=(4,), action_dim=2, **TINY).to_dict()
    with pytest.raises(CheckpointError, match=r"config.json: the saved DreamerV3Config is not valid: contdisc_horizon"):
        persist.saved_config(DreamerV3Config, {**saved, "contdisc_horizon": 0.0}, tmp_path / "config.json")

    path = tmp_path / "model"
    create_world_model("dreamerv3:size1m", obs_shape=(4,), action_dim=2, device="cpu", **TINY).save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    for field, value in (("unimix", 5.0), ("reward_bins", 1), ("loss_scale_rew", -1.0), ("cnn_mults", [])):
        (path / "config.json").write_text(json.dumps({**config, field: value}))
        persist.write_manifest(path, model_checkpoint.FORMAT, model_checkpoint.VERSION)  # as if saved so
        with pytest.raises(CheckpointError, match=rf"the saved DreamerV3Config is not valid: .*{field}"):
            create_world_model(str(path))
