"""The original WorldLoom's *source* vocabulary on the torch face.

WorldLoom's code (its examples, ``__init__`` exports and tests) uses names its
docs do not: ``stoch_discrete``, ``num_q_networks``, ``core.config``,
``TrainingConfig(output_dir=...)``, ``LatentState.batch_size``, ... These tests
pin each of them as an alias of one documented meaning on
``worldloom_torch_compat``.
"""

from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import worldloom_torch_compat as face  # noqa: E402
from worldloom.core.errors import ConfigError, ShapeError  # noqa: E402
from worldloom_torch_compat.core.config import DreamerV3Config, TDMPC2Config  # noqa: E402

TINY = dict(deter_dim=64, hidden_dim=32, stoch_discrete=4, stoch_classes=4)


@pytest.fixture(scope="module")
def dreamer():
    """One tiny vector DreamerV3, built with the source's names."""
    return face.create_world_model("dreamer:size1m", obs_shape=(4,), action_dim=2, device="cpu",
                                   encoder_type="mlp", decoder_type="mlp", **TINY)


@pytest.fixture(scope="module")
def tdmpc():
    return face.create_world_model("tdmpc:1m", obs_shape=(5,), action_dim=2, device="cpu", latent_dim=32,
                                   hidden_dim=32, num_q_networks=2, gamma=0.9)


# ---------------------------------------------------------------- module layout

# The names each of the original's six __init__ files exports (less its private torch
# building blocks: RSSM, encoders, decoders, heads and Q networks).
ORIGINAL_EXPORTS = {
    "": ["create_world_model", "list_models", "get_model_info", "get_config", "MODEL_ALIASES", "MODEL_CATALOG",
         "LatentState", "Trajectory", "LatentType", "DynamicsType", "WorldModelConfig", "DreamerV3Config",
         "TDMPC2Config", "WorldModel", "WorldModelRegistry", "AutoWorldModel", "AutoConfig", "LatentSpace",
         "GaussianLatentSpace", "CategoricalLatentSpace", "SimNormLatentSpace", "DreamerV3WorldModel",
         "TDMPC2WorldModel"],
    ".core": ["LatentState", "Trajectory", "LatentType", "DynamicsType", "WorldModelConfig", "DreamerV3Config",
              "TDMPC2Config", "WorldModel", "WorldModelRegistry", "AutoWorldModel", "AutoConfig", "LatentSpace",
              "GaussianLatentSpace", "CategoricalLatentSpace", "SimNormLatentSpace", "WorldLoomError",
              "ConfigurationError", "ShapeMismatchError", "StateError", "ModelNotFoundError", "CheckpointError",
              "TrainingError", "BufferError"],
    ".models": ["DreamerV3WorldModel", "TDMPC2WorldModel"],
    ".models.dreamer": ["DreamerV3WorldModel", "symlog", "symexp"],
    ".models.tdmpc2": ["TDMPC2WorldModel"],
    ".training": ["train", "Trainer", "TrainingConfig", "ReplayBuffer", "TrajectoryDataset", "Callback",
                  "LoggingCallback", "CheckpointCallback"],
}

ORIGINAL_MODULES = {
    ".factory": ["create_world_model", "list_models", "get_model_info", "get_config", "MODEL_ALIASES",
                 "MODEL_CATALOG"],
    ".core.config": ["DreamerV3Config", "TDMPC2Config", "WorldModelConfig", "LatentType", "DynamicsType"],
    ".core.registry": ["TYPE_ALIASES", "AutoConfig", "AutoWorldModel", "WorldModelRegistry"],
    ".core.latent_space": ["LatentSpace", "GaussianLatentSpace", "CategoricalLatentSpace", "SimNormLatentSpace"],
    ".core.protocol": ["WorldModel"],
    ".core.trajectory": ["Trajectory"],
    ".models.dreamer.heads": ["symlog", "symexp"],
    ".models.dreamer.world_model": ["DreamerV3WorldModel"],
    ".models.tdmpc2.world_model": ["TDMPC2WorldModel"],
    ".training.config": ["TrainingConfig"],
    ".training.trainer": ["Trainer", "train"],
    ".training.data": ["ReplayBuffer", "TrajectoryDataset", "create_random_buffer"],
    ".training.callbacks": ["EarlyStoppingCallback", "ProgressCallback", "CheckpointCallback", "LoggingCallback"],
}


@pytest.mark.parametrize("path", sorted({**ORIGINAL_EXPORTS, **ORIGINAL_MODULES}))
def test_the_originals_names_import_from_its_paths(path):
    module = importlib.import_module(f"worldloom_torch_compat{path}")
    names = {**ORIGINAL_EXPORTS, **ORIGINAL_MODULES}[path]
    missing = [name for name in names if not hasattr(module, name)]
    assert not missing


def test_the_originals_paths_are_the_torch_faces_classes():
    from worldloom_torch_compat.core.registry import WorldModelRegistry
    from worldloom_torch_compat.models.dreamer.world_model import DreamerV3WorldModel

    assert DreamerV3WorldModel is face.DreamerV3WorldModel and face.DreamerV3Config is DreamerV3Config
    assert face.models.tdmpc2.TDMPC2Config is TDMPC2Config
    assert face.core.StateError is face.core.exceptions.StateError
    assert WorldModelRegistry.list_models() == {"dreamer": face.DreamerV3WorldModel, "tdmpc2": face.TDMPC2WorldModel}
    assert WorldModelRegistry._config_registry["tdmpc2"] is TDMPC2Config
    assert face.core.registry.TYPE_ALIASES == {"dreamerv3": "dreamer", "dreamer": "dreamer", "tdmpc2": "tdmpc2",
                                                "tdmpc": "tdmpc2"}


# ---------------------------------------------------------------- config names


def test_source_config_names_set_the_documented_fields():
    config = DreamerV3Config(stoch_discrete=8, stoch_classes=16, deter_dim=256, hidden_dim=128, cnn_depth=16)
    assert (config.stoch, config.classes, config.deter, config.hidden, config.depth) == (8, 16, 256, 128, 16)
    # read back in either vocabulary; the docs' stoch_dim is the flat size
    assert (config.stoch_discrete, config.stoch_classes, config.stoch_dim) == (8, 16, 128)
    assert config.deter_dim == 256 and config.hidden_dim == 128 and config.cnn_depth == 16
    # stoch_dim divides by the classes stoch_classes sets in the same call
    assert DreamerV3Config(stoch_dim=64, stoch_classes=8).stoch == 8

    tdmpc = TDMPC2Config(obs_shape=(39,), num_q_networks=3, gamma=0.95, hidden_dim=64)
    assert (tdmpc.num_q, tdmpc.discount, tdmpc.mlp_dim) == (3, 0.95, 64)
    assert (tdmpc.num_q_networks, tdmpc.gamma, tdmpc.hidden_dim) == (3, 0.95, 64)


def test_every_name_a_config_takes_reads_back_and_writes_the_same_config():
    from worldloom.models.dreamerv3.config import ORIGINAL_NAMES as DREAMER_NAMES
    from worldloom.models.tdmpc2.config import ORIGINAL_NAMES as TDMPC2_NAMES
    from worldloom_torch_compat._source_names import DREAMER_SOURCE_NAMES, TDMPC2_SOURCE_NAMES

    for config, names in ((DreamerV3Config(obs_shape=(4,), mlp_layers=3), DREAMER_NAMES + DREAMER_SOURCE_NAMES),
                          (TDMPC2Config(obs_shape=(39,), discount=0.95), TDMPC2_NAMES + TDMPC2_SOURCE_NAMES)):
        for entry in names:
            value = getattr(config, entry.name)  # config.mlp_layers, config.kl_balance, ...
            kept = {key: v for key, v in config.to_dict().items() if key not in entry.fields}
            again = type(config)(**kept, **{entry.name: value}).to_dict()
            for key, expected in config.to_dict().items():
                assert again[key] == (pytest.approx(expected) if isinstance(expected, float) else expected), \
                    (entry.name, value, key)
    assert DreamerV3Config(num_layers=4).mlp_layers == 4 and TDMPC2Config().num_layers == 2


@pytest.mark.parametrize("fields", [dict(gamma=0.0), dict(gamma=1.5), dict(num_q_networks=1)])
def test_source_tdmpc2_values_are_checked_like_ours(fields):
    with pytest.raises(ConfigError):
        TDMPC2Config(obs_shape=(39,), **fields)


def test_encoder_and_decoder_type_must_agree_with_obs_shape():
    assert DreamerV3Config(obs_shape=(4,), encoder_type="mlp", decoder_type="mlp").encoder_type == "mlp"
    assert DreamerV3Config(encoder_type="cnn").decoder_type == "cnn"
    with pytest.raises(ConfigError, match="encoder_type='mlp' has no faithful meaning"):
        DreamerV3Config(obs_shape=(3, 64, 64), encoder_type="mlp")
    with pytest.raises(ConfigError):
        DreamerV3Config(stoch_discrete=0)


def test_model_type_and_model_name_follow_the_source():
    assert DreamerV3Config.from_size("size50m").model_name == "size50m"
    assert DreamerV3Config.from_size("size12m").model_type == "dreamer"
    assert TDMPC2Config.from_size("19m").model_name == "19m" and TDMPC2Config().model_type == "tdmpc2"
    assert DreamerV3Config(deter_dim=256).model_name == "custom"
    assert face.get_config("dreamer-medium").model_name == "size50m"


def test_dreamer_config_defaults_to_a_channels_first_image():
    assert tuple(DreamerV3Config().obs_shape) == (3, 64, 64)
    assert tuple(DreamerV3Config.from_size("size12m").obs_shape) == (3, 64, 64)
    assert tuple(DreamerV3Config().to_jax().obs_shape) == (64, 64, 3)


def test_ci_is_the_smallest_reference_preset():
    assert DreamerV3Config.from_size("ci") == DreamerV3Config.from_size("size1m")
    assert TDMPC2Config.from_size("tdmpc2:ci", obs_shape=(4,)) == TDMPC2Config.from_size("1m", obs_shape=(4,))
    assert face.get_config("dreamerv3:ci").deter == face.get_config("dreamerv3:size1m").deter


def test_source_registry_names():
    assert isinstance(face.get_config("dreamer:size12m"), DreamerV3Config)
    assert isinstance(face.AutoConfig.from_pretrained("TDMPC:5m"), TDMPC2Config)
    assert face.get_config("DreamerV3:size12m", deter_dim=512).deter == 512
    info = face.get_model_info("dreamer-large")
    assert (info["model_id"], info["alias"]) == ("dreamerv3:size200m", "dreamer-large")
    assert "alias" not in face.get_model_info("dreamerv3:size12m")
    assert face.MODEL_CATALOG["dreamerv3:size12m"]["default_obs"] == (3, 64, 64)
    assert face.MODEL_CATALOG["tdmpc2:5m"]["default_obs"] == (24,)
    for entry in (face.get_model_info, face.core.registry.WorldModelRegistry.from_pretrained):
        # The source's phrases: its get_model_info's and its registry's
        with pytest.raises(ValueError, match="Unknown model 'unknown-model'. Invalid model identifier: not a model"):
            entry("unknown-model")
    with pytest.raises(ValueError, match=r"Unknown model type 'unknown' in 'unknown:size' \(types: dreamerv3, "):
        face.core.registry.WorldModelRegistry.from_pretrained("unknown:size")


def test_a_users_own_model_class_registers_as_in_the_source(tmp_path, monkeypatch):
    import dataclasses

    from worldloom_torch_compat.core.registry import WorldModelRegistry

    @dataclasses.dataclass
    class MyConfig:
        obs_shape: tuple = (4,)
        action_dim: int = 2
        hidden: int = 16

        @classmethod
        def from_size(cls, size, **fields):
            return cls(**{"hidden": {"small": 16, "big": 64}[size], **fields})

    try:
        @WorldModelRegistry.register("mymodel", MyConfig)
        class MyModel(torch.nn.Module):
            def __init__(self, config):
                super().__init__()
                self.config = config
                self.net = torch.nn.Linear(config.obs_shape[0], config.hidden)

        model = face.create_world_model("mymodel:big", obs_shape=(7,), device="cpu")
        assert isinstance(model, MyModel) and (model.net.in_features, model.net.out_features) == (7, 64)
        assert WorldModelRegistry.from_pretrained("MyModel:small").config == MyConfig(hidden=16)
        assert face.AutoConfig.from_pretrained("mymodel:small", action_dim=3) == MyConfig(action_dim=3)
        assert WorldModelRegistry.list_models()["mymodel"] is MyModel
        assert set(WorldModelRegistry.list_models()) == {"dreamer", "tdmpc2", "mymodel"}
        WorldModelRegistry.register("bare")(MyModel)
        with pytest.raises(ConfigError, match="'bare' was registered without a config class"):
            face.create_world_model("bare:small")

        @dataclasses.dataclass
        class Named:  # no from_size: the size is its model_name, as the source's config_class(model_name=size)
            model_name: str = "unnamed"
            obs_shape: tuple = (4,)

        @WorldModelRegistry.register("named", Named)
        class Plain(torch.nn.Module):
            def __init__(self, config):
                super().__init__()
                self.config = config

        assert face.create_world_model("named:big").config == Named(model_name="big")
        # A saved model's directory is that model, whatever type is registered under its name
        saved = face.create_world_model("dreamer:size1m", obs_shape=(4,), action_dim=2, device="cpu", **TINY)
        saved.save_pretrained(tmp_path / "named")
        monkeypatch.chdir(tmp_path)
        assert isinstance(face.create_world_model("named"), face.DreamerV3WorldModel)
    finally:
        for table in (WorldModelRegistry._model_registry, WorldModelRegistry._config_registry):
            for name in ("mymodel", "bare", "named"):
                dict.pop(table, name, None)
    for taken in ("dreamer", "TDMPC", "dreamer-small"):
        with pytest.raises(ConfigError, match=f"{taken!r} is one of worldloom's model types"):
            WorldModelRegistry.register(taken)
    with pytest.raises(ConfigError, match="expected a model type name"):
        WorldModelRegistry.register("a:b")
    with pytest.raises(ValueError, match="Unknown model type 'mymodel'"):  # gone again
        face.create_world_model("mymodel:small")


def test_docs_list_the_source_names():
    from pathlib import Path

    from worldloom.core.config import original_names_table
    from worldloom_torch_compat.training import TrainingConfig

    text = (Path(__file__).resolve().parents[1] / "docs" / "pytorch.md").read_text()
    rows = original_names_table(DreamerV3Config, TDMPC2Config, TrainingConfig).splitlines()
    for name in ("stoch_discrete", "stoch_classes", "encoder_type", "decoder_type", "num_q_networks", "gamma",
                 "output_dir"):
        row = next(r for r in rows if f"| `{name}` |" in r)
        assert row in text


# ---------------------------------------------------------------- LatentState and latent spaces


def test_latent_state_source_api():
    state = face.LatentState(deterministic=torch.randn(4, 8), stochastic=torch.randn(4, 2, 3),
                             latent_type="categorical")
    assert state.batch_size == 4 and state.device == torch.device("cpu") and state.latent_type == "categorical"
    assert state.features.shape == (4, 8 + 6)
    clone = state.clone()
    state.deterministic.fill_(0)
    assert clone.deterministic.abs().sum() > 0 and clone.latent_type == "categorical"
    assert state[1:3].latent_type == "categorical" and state.detach().batch_size == 4
    with pytest.raises(face.core.StateError):
        face.LatentState()


def test_latent_state_and_trajectory_reprs_show_shapes_not_values():
    state = face.LatentState(deterministic=torch.randn(32, 512), stochastic=torch.randn(32, 32, 32),
                             latent_type="categorical")
    # The source's repr (its state.py), with the dtype added
    assert repr(state) == ("LatentState(type='categorical', deter=[32, 512], stoch=[32, 32, 32], dtype=float32, "
                           "device=cpu)")
    codes = face.LatentState(codebook_indices=torch.zeros(2, 4, dtype=torch.long))
    assert repr(codes) == "LatentState(type='deterministic', codebook=[2, 4], dtype=int64, device=cpu)"
    mixed = face.LatentState(deterministic=torch.zeros(2, 8), prior_logits=torch.zeros(2, 3, 4, dtype=torch.bfloat16))
    assert "prior_logits=[2, 3, 4] bfloat16, dtype=float32" in repr(mixed)
    codes_only = face.Trajectory(face.LatentState(codebook_indices=torch.zeros(4, 2, 3, dtype=torch.long)),
                                 torch.zeros(3, 2, 1))
    assert repr(codes_only).endswith("actions=[3, 2, 1] float32)")  # a dtype after a shape unlike the state's
    trajectory = face.Trajectory(state, torch.zeros(15, 32, 2, dtype=torch.float64), torch.zeros(15, 32),
                                 continues=torch.ones(15, 32))
    assert repr(trajectory) == (f"Trajectory(states={state!r}, actions=[15, 32, 2] float64, rewards=[15, 32], "
                                "continues=[15, 32])")


def test_model_states_carry_the_families_latent_type(dreamer, tdmpc):
    with torch.no_grad():
        assert dreamer.encode(torch.zeros(2, 4)).latent_type == "categorical"
        assert tdmpc.encode(torch.zeros(2, 5)).latent_type == "simnorm"
        traj = dreamer.imagine(dreamer.initial_state(2), torch.zeros(3, 2, 2))
    assert traj.states.latent_type == "categorical"
    # The zero start state has no prior logits, so the stacked trajectory has none either.
    assert len(traj) == 4 and traj.states.prior_logits is None and not traj.states.deterministic[0].any()


def test_gaussian_latent_space():
    space = face.GaussianLatentSpace(dim=5)
    params = torch.randn(3, 10, requires_grad=True)
    assert space.param_dim == 10
    torch.testing.assert_close(space.sample(params, deterministic=True), params[:, :5])
    sample = space.sample(params)
    assert sample.shape == (3, 5)
    sample.sum().backward()
    assert params.grad is not None and params.grad[:, 5:].abs().sum() > 0  # reparameterised through the std
    kl = space.kl_divergence(torch.randn(3, 10), torch.randn(3, 10))
    assert kl.shape == (3,) and (kl >= 0).all()
    same = torch.randn(3, 10)
    torch.testing.assert_close(space.kl_divergence(same, same), torch.zeros(3), atol=1e-5, rtol=0)


def test_categorical_latent_space():
    space = face.CategoricalLatentSpace(num_categoricals=4, num_classes=3)
    logits = torch.randn(2, 4, 3, requires_grad=True)
    sample = space.sample(logits)
    assert sample.shape == (2, 4, 3)
    torch.testing.assert_close(sample.detach().sum(-1), torch.ones(2, 4))
    assert space.sample(logits.detach().reshape(2, 12)).shape == (2, 4, 3)
    mode = space.sample(logits.detach(), deterministic=True)
    assert torch.equal(mode.argmax(-1), logits.detach().argmax(-1))
    (sample * torch.randn(2, 4, 3)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0  # straight-through
    posterior, prior = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    kl = space.kl_divergence(posterior, prior)
    p = posterior.softmax(-1)
    expected = (p * (p.log() - prior.log_softmax(-1))).sum((-1, -2))
    torch.testing.assert_close(kl, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(space.kl_divergence(posterior, prior, free_nats=0.5), (expected - 0.5).clamp(min=0),
                               atol=1e-5, rtol=1e-5)


def test_sampling_follows_torch_manual_seed():
    space = face.CategoricalLatentSpace(num_categoricals=8, num_classes=8)
    logits = torch.zeros(2, 8, 8)
    torch.manual_seed(3)
    first = space.sample(logits)
    torch.manual_seed(3)
    assert torch.equal(space.sample(logits), first)


def test_simnorm_latent_space():
    space = face.SimNormLatentSpace(dim=16, simnorm_dim=4)
    params = torch.randn(3, 16, requires_grad=True)
    out = space.sample(params)
    torch.testing.assert_close(out.view(3, 4, 4).sum(-1), torch.ones(3, 4))
    torch.testing.assert_close(out, params.view(3, 4, 4).softmax(-1).view(3, 16))
    out[:, 0].sum().backward()
    assert params.grad is not None
    assert torch.equal(space.kl_divergence(params, params), torch.zeros(3))
    with pytest.raises(ValueError):
        face.SimNormLatentSpace(dim=17, simnorm_dim=4)


def test_symlog_and_symexp():
    from worldloom_torch_compat.models.dreamer.heads import symexp, symlog

    x = torch.linspace(-20, 20, 41)
    torch.testing.assert_close(symexp(symlog(x)), x, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(symlog(x), torch.sign(x) * torch.log1p(x.abs()))
    big = torch.tensor([100.0, -1000.0, 88.0], requires_grad=True)
    out = symexp(big)
    assert torch.isfinite(out).all() and out[0] > 0 > out[1]
    assert out[0] > 3.3e38 and out[1] < -3.3e38  # saturated near float32's largest value
    out.sum().backward()
    assert torch.isfinite(big.grad).all()


# ---------------------------------------------------------------- models


@pytest.mark.slow(reason="builds a 64x64 image model with the original's default shapes")
def test_create_world_model_defaults_to_the_originals_shapes():
    model = face.create_world_model("dreamerv3:ci", device="cpu")
    assert model.obs_shape == (3, 64, 64) and model.action_dim == 6
    assert model.preset == "size1m"


def test_model_config_reads_the_source_names(dreamer, tdmpc):
    config = dreamer.config
    assert (config.model_type, config.deter_dim, config.stoch_discrete, config.stoch_classes) == ("dreamer", 64, 4, 4)
    assert config.encoder_type == "mlp" and tuple(config.obs_shape) == (4,)
    assert config.to_dict() == {"model_type": "dreamer", **dreamer.jax_model.config.to_dict()}  # read both ways
    assert tdmpc.config.model_type == "tdmpc2" and tdmpc.config.num_q_networks == 2 and tdmpc.config.gamma == 0.9


def test_model_config_is_the_torch_faces_class_channels_first(dreamer):
    from worldloom.models import dreamerv3
    from worldloom_torch_compat._source_names import torch_config

    assert isinstance(dreamer.config, DreamerV3Config) and dreamer.config.to_jax() == dreamer.jax_model.config
    jax_config = dreamerv3.DreamerV3Config(obs_shape=(32, 16, 3), action_dim=2)
    config = torch_config(jax_config)  # what model.config gives for an image model
    assert isinstance(config, DreamerV3Config) and tuple(config.obs_shape) == (3, 32, 16)
    assert config.to_jax() == jax_config and config.model_type == "dreamer"


@pytest.mark.slow(reason="compiles imagine and predict of both families")
def test_imagined_trajectory_starts_with_the_start_state(dreamer, tdmpc):
    gen = torch.Generator().manual_seed(0)
    for model, obs_dim in ((dreamer, 4), (tdmpc, 5)):
        actions = torch.rand(3, 2, 2, generator=gen) * 2 - 1
        with torch.no_grad():
            start = model.encode(torch.randn(2, obs_dim, generator=gen))
            traj = model.imagine(start, actions)
            first = model.predict(start, actions[0])
        assert len(traj) == len(traj.states) == 4 and traj.horizon == 3 and traj.batch_size == 2
        assert traj.rewards.shape == traj.continues.shape == (3, 2) and traj.values is None
        assert torch.equal(traj.states[0].deterministic, start.deterministic)
        # The first action's outcome is states[1]; its deterministic part does not depend on sampling.
        torch.testing.assert_close(traj.states[1].deterministic, first.deterministic, rtol=1e-5, atol=1e-5)
        assert traj.to_features_tensor().shape == (4, 2, start.feature_dim)
        assert torch.equal(traj.to_features_tensor()[0], start.features)
        alive = torch.cumprod(torch.cat([torch.ones(1, 2), traj.continues[:-1]]), 0)
        expected = (0.9 ** torch.arange(3.0)[:, None] * alive * traj.rewards).sum(0)
        torch.testing.assert_close(traj.discounted_return(0.9), expected, rtol=1e-5, atol=1e-6)
        assert len(traj.detach().states) == 4 and traj.to("cpu").horizon == 3
    with torch.no_grad():
        start = dreamer.encode(torch.randn(2, 4, generator=gen))
        # The source's examples decode each state of a rollout and stack the imagined ones.
        decoded = [dreamer.decode(state)["obs"] for state in dreamer.imagine(start, actions).states]
        assert len(decoded) == 4 and torch.stack(decoded[1:], dim=1).shape == (2, 3, 4)
        odd = face.LatentState(start.deterministic, start.stochastic, prior_logits=torch.zeros(2, 3))
        with pytest.raises(ShapeError, match=r"initial_state.prior_logits: expected shape \[2, 4, 4\]"):
            dreamer.imagine(odd, actions)


def test_a_trajectory_takes_the_sources_fields_in_its_order():
    # The source's Trajectory(states, actions, rewards=None, values=None, continues=None): a user's own rollout.
    states = face.LatentState(deterministic=torch.zeros(4, 2, 8))
    actions, rewards = torch.zeros(3, 2, 1), torch.ones(3, 2)
    bare = face.Trajectory(states, actions)
    assert (len(bare), bare.horizon, bare.batch_size) == (4, 3, 2)
    assert bare.rewards is None and bare.continues is None and bare.values is None
    assert bare.detach().to("cpu").horizon == 3
    values, continues = torch.full((4, 2), 2.0), torch.full((3, 2), 0.5)
    full = face.Trajectory(states, actions, rewards, values, continues)
    assert full.values is values and full.continues is continues
    torch.testing.assert_close(full.discounted_return(1.0), torch.full((2,), 1.75))  # 1 + 0.5 + 0.25
    with pytest.raises(face.core.exceptions.StateError, match="has no rewards or continues"):
        bare.discounted_return(0.99)


@pytest.mark.slow(reason="compiles decode, predict_q at three reductions and the policy's acting program")
def test_predict_q_and_decode_give_the_q_ensemble(tdmpc):
    import copy

    gen = torch.Generator().manual_seed(1)
    obs, action = torch.randn(3, 5, generator=gen), torch.rand(3, 2, generator=gen) * 2 - 1
    tdmpc = copy.deepcopy(tdmpc)  # its own Parameters, still a TDMPC2WorldModel
    assert isinstance(tdmpc, face.TDMPC2WorldModel)
    with torch.no_grad():
        for name, param in tdmpc.named_parameters():  # Q heads start at zero: make the members differ
            if name.startswith("Qs."):
                param.add_(torch.randn(param.shape, generator=gen) * 0.3)
        state = tdmpc.encode(obs)
        q = tdmpc.predict_q(state, action)
        q_mean, q_min = tdmpc.predict_q(state, action, reduce="mean"), tdmpc.predict_q(state, action, reduce="min")
        decoded, given = tdmpc.decode(state), tdmpc.decode(state, action)
        policy_action = tdmpc.act(obs, use_policy=True, eval_mode=True)
    assert q.shape == (2, 3) and not torch.allclose(q[0], q[1])  # [num_q, B], one row per member
    torch.testing.assert_close(q_mean, q.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q_min, q.min(0).values)
    assert "obs" not in decoded and decoded["q_values"].shape == (2, 3, 1) and decoded["reward"].shape == (3, 1)
    # By default the heads score the policy prior's mean action, which decode returns.
    torch.testing.assert_close(decoded["action"], policy_action, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(decoded["q"], decoded["q_values"].mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(given["q_values"][..., 0], q)
    assert torch.equal(given["action"], action)


@pytest.mark.slow(reason="compiles encode and predict of both families")
def test_the_sources_method_arguments(dreamer, tdmpc):
    torch.manual_seed(0)
    obs, action = torch.randn(3, 4), torch.rand(3, 2)
    dreamer.train()
    with torch.no_grad():
        start = dreamer.initial_state(3, torch.device("cpu"))  # the source's (batch_size, device)
        assert start.deterministic.shape[0] == 3 and start.deterministic.device == torch.device("cpu")
        state = dreamer.encode(obs, deterministic=True)
        modes = [dreamer.predict(state, action, deterministic=True).stochastic for _ in range(2)]
        samples = [dreamer.predict(state, action).stochastic for _ in range(2)]
        assert torch.equal(*modes) and not torch.equal(*samples) and dreamer.training  # per call; mode kept
        imagined = [dreamer.imagine(state, torch.rand(5, 3, 2), deterministic=True) for _ in range(2)]
        assert imagined[0].states.stochastic.shape[0] == 6
        latent = tdmpc.encode(torch.randn(3, 5), deterministic=True)
        assert torch.equal(tdmpc.predict(latent, action, task_id=None).deterministic,
                           tdmpc.predict(latent, action).deterministic)
    with pytest.raises(ConfigError, match="task= and task_id= are the same argument"):
        tdmpc.predict(latent, action, task=torch.zeros(3), task_id=torch.zeros(3))


@pytest.mark.slow(reason="compiles the loss of both families (test_trainer_source_api's evaluate reuses it)")
def test_compute_loss_has_the_sources_loss_names(dreamer, tdmpc):
    gen = torch.Generator().manual_seed(0)
    batch = {"obs": torch.randn(2, 4, 4, generator=gen), "actions": torch.rand(2, 4, 2, generator=gen),
             "rewards": torch.randn(2, 4, generator=gen), "continues": torch.ones(2, 4)}
    with torch.no_grad():
        losses = dreamer.compute_loss(batch)
        for source, ours in (("kl", "kl_loss"), ("reconstruction", "reconstruction_loss"),
                             ("reward", "reward_loss"), ("continue", "continue_loss")):
            assert torch.equal(losses[source], losses[ours])
        tdmpc_batch = dict(batch, obs=torch.randn(2, 4, 5, generator=gen))
        losses = tdmpc.compute_loss(tdmpc_batch)
        del tdmpc_batch["continues"]  # the source's TD-MPC2 batches: no continues, no episode end
        torch.testing.assert_close(tdmpc.compute_loss(tdmpc_batch)["loss"], losses["loss"])
    assert torch.equal(losses["td"], losses["loss/value"]) and torch.equal(losses["consistency"],
                                                                            losses["loss/consistency"])


# ---------------------------------------------------------------- training


def test_model_configs_save_and_load_as_the_sources(tmp_path):
    from worldloom_torch_compat.core.config import WorldModelConfig

    config = DreamerV3Config.from_size("size1m", obs_shape=(3, 16, 16), action_dim=2, **TINY)
    assert isinstance(config, WorldModelConfig)
    assert config.to_dict()["model_type"] == "dreamer" and DreamerV3Config(**config.to_dict()) == config
    config.save(tmp_path / "config.json")
    loaded = WorldModelConfig.load(tmp_path / "config.json")  # the base class picks the family
    assert type(loaded) is DreamerV3Config and loaded == config and loaded.obs_shape == (3, 16, 16)
    # One file format on both faces: a saved model's config.json (images channels last).
    from worldloom.core.config import ConfigBase

    assert json.loads((tmp_path / "config.json").read_text())["obs_shape"] == [16, 16, 3]
    assert ConfigBase.load(tmp_path / "config.json") == config.to_jax()
    model = face.create_world_model("dreamer:size1m", obs_shape=(3, 16, 16), action_dim=2, device="cpu", **TINY)
    model.save_pretrained(tmp_path / "model")
    assert WorldModelConfig.load(tmp_path / "model" / "config.json") == model.config == config
    tdmpc = TDMPC2Config.from_size("1m", obs_shape=(5,), action_dim=2, num_q_networks=3)
    tdmpc.save(tmp_path / "config.json")
    assert WorldModelConfig.load(tmp_path / "config.json") == tdmpc
    assert TDMPC2Config.from_dict(tdmpc.to_dict()).num_q_networks == 3
    with pytest.raises(ConfigError, match="model_type 'tdmpc2'"):
        DreamerV3Config.load(tmp_path / "config.json")


def test_training_config_source_api(tmp_path):
    from worldloom_torch_compat.training import TrainingConfig

    config = TrainingConfig(total_steps=1000, output_dir=str(tmp_path))
    assert config.output_dir == config.checkpoint_dir == str(tmp_path)
    updated = config.with_updates(total_steps=2000, batch_size=64)
    assert (updated.total_steps, updated.batch_size, config.total_steps) == (2000, 64, 1000)
    config.save(tmp_path / "c.json")
    assert TrainingConfig.load(tmp_path / "c.json") == config
    assert json.loads((tmp_path / "c.json").read_text())["checkpoint_dir"] == str(tmp_path)
    assert TrainingConfig(device="cpu").resolve_device() == "cpu"
    assert TrainingConfig(device="auto").resolve_device() in ("cpu", "cuda")
    assert TrainingConfig().total_steps == 50_000  # the documented default
    from worldloom.training import TrainingConfig as JaxTrainingConfig

    assert TrainingConfig is JaxTrainingConfig  # one class on both faces
    with pytest.raises(ConfigError):
        TrainingConfig(output_dir="a", checkpoint_dir="b")


def test_add_episode_without_dones_ends_at_the_last_step():
    from worldloom_torch_compat.training import ReplayBuffer

    buffer = ReplayBuffer(capacity=100, obs_shape=(2,), action_dim=1)
    buffer.add_episode(np.zeros((10, 2), np.float32), np.zeros((10, 1), np.float32), np.zeros(10, np.float32))
    assert len(buffer) == 10 and buffer.num_episodes == 1
    batch = buffer.sample(2, 10)  # the whole episode
    assert batch["continues"][:, :-1].eq(1).all() and batch["continues"][:, -1].eq(0).all()
    assert batch["terminals"][:, -1].all()


def test_from_trajectories_and_trajectory_dataset():
    from worldloom_torch_compat.training import ReplayBuffer, TrajectoryDataset

    rng = np.random.default_rng(0)
    episodes = [{"obs": rng.normal(size=(20, 3)).astype(np.float32),
                 "actions": rng.normal(size=(20, 2)).astype(np.float32),
                 "rewards": rng.normal(size=20).astype(np.float32)} for _ in range(3)]
    buffer = ReplayBuffer.from_trajectories(episodes)
    assert (len(buffer), buffer.obs_shape, buffer.action_dim, buffer.num_episodes) == (60, (3,), 2, 3)
    dataset = TrajectoryDataset(buffer, seq_len=5, samples_per_epoch=7)
    assert isinstance(dataset, torch.utils.data.Dataset) and len(dataset) == 7
    item = dataset[0]
    assert item["obs"].shape == (5, 3) and item["actions"].shape == (5, 2) and item["rewards"].shape == (5,)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    assert next(iter(loader))["obs"].shape == (4, 5, 3)
    with pytest.raises(IndexError):
        dataset[7]


def _save_as_the_source(path, obs, action_dim=2):
    """What WorldLoom's ReplayBuffer.save writes (its data.py): np.savez_compressed, obs as stored, float dones."""
    count = len(obs)
    dones = np.zeros(count, np.float32)
    dones[[count // 2 - 1, count - 1]] = 1.0  # two episodes
    np.savez_compressed(path, obs=obs, actions=np.arange(count * action_dim, dtype=np.float32).reshape(count, -1),
                        rewards=np.arange(count, dtype=np.float32), dones=dones, obs_shape=np.array(obs.shape[1:]),
                        action_dim=np.array(action_dim), capacity=np.array(100))


def test_buffer_files_of_the_source_load_channels_first(tmp_path):
    from worldloom_torch_compat.training import ReplayBuffer

    obs = np.random.default_rng(0).random((20, 3, 16, 8)).astype(np.float32)  # [N, C, H, W], as the source holds
    _save_as_the_source(tmp_path / "images.npz", obs)
    loads = ReplayBuffer.load(tmp_path / "images.npz"), ReplayBuffer.load(tmp_path / "images", obs_shape=(3, 16, 8))
    for buffer in loads:
        assert (buffer.obs_shape, buffer.jax_buffer.obs_shape) == ((3, 16, 8), (16, 8, 3))
        assert (len(buffer), buffer.num_episodes, buffer.capacity, buffer.action_dim) == (20, 2, 100, 2)
        batch = buffer.sample(4, 10)
        assert batch["obs"].shape == (4, 10, 3, 16, 8)
        first = batch["rewards"][:, 0].long()  # the row each window starts at
        for window, start in zip(batch["obs"], first.tolist()):
            assert np.array_equal(window.numpy(), obs[start:start + 10])
    buffer.save(tmp_path / "again.npz")  # worldloom's own format: read back as it was
    assert ReplayBuffer.load(tmp_path / "again.npz").sample(1, 10)["obs"].shape == (1, 10, 3, 16, 8)
    vectors = np.random.default_rng(1).random((20, 5)).astype(np.float32)
    _save_as_the_source(tmp_path / "vectors.npz", vectors)
    buffer = ReplayBuffer.load(tmp_path / "vectors.npz")
    assert (buffer.obs_shape, buffer.num_episodes) == ((5,), 2)
    batch = buffer.sample(3, 10)
    for window, start in zip(batch["obs"], batch["rewards"][:, 0].long().tolist()):
        assert np.array_equal(window.numpy(), vectors[start:start + 10])


@pytest.mark.slow(reason="starts two DataLoader workers that import worldloom")
@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 2 workers on a small machine
def test_trajectory_dataset_workers_draw_their_own_windows():
    """Each DataLoader worker draws its own windows (the source's np.random is reseeded per worker);
    in the main process the dataset samples as the buffer does."""
    from worldloom_torch_compat.training import ReplayBuffer, TrajectoryDataset

    def buffer():  # one long episode whose observation is its row: a window is named by its first row
        out = ReplayBuffer(capacity=100_000, obs_shape=(1,), action_dim=1, seed=3)
        out.add_episode(np.arange(100_000, dtype=np.float32)[:, None], np.zeros((100_000, 1)), np.zeros(100_000))
        return out

    dataset = TrajectoryDataset(buffer(), seq_len=4, samples_per_epoch=16)
    torch.manual_seed(0)
    # Spawned, not forked: a fork of a process running JAX's threads may hang (the reseeding is the same).
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2, multiprocessing_context="spawn",
                                         persistent_workers=True)
    batches = [b["obs"][:, 0, 0] for b in loader]
    first = set(torch.cat(batches[0::2]).tolist())  # batches alternate between the workers
    assert len(first) == 8 and first.isdisjoint(torch.cat(batches[1::2]).tolist())
    next_epoch = [b["obs"][:, 0, 0] for b in loader]
    assert not torch.equal(torch.cat(batches), torch.cat(next_epoch))  # the workers draw on: new windows
    same = buffer()  # num_workers=0: the buffer's own generator, as before
    windows = torch.cat([b["obs"] for b in torch.utils.data.DataLoader(dataset, batch_size=4)])
    assert torch.equal(windows, torch.cat([same.sample(1, 4)["obs"] for _ in range(16)]))


def test_callback_source_arguments(tmp_path):
    from worldloom_torch_compat.training import CheckpointCallback, LoggingCallback
    from worldloom_torch_compat.training.callbacks import EarlyStoppingCallback, ProgressCallback

    callback = CheckpointCallback(save_interval=100, output_dir=tmp_path, max_checkpoints=3)
    assert (callback.save_every, callback.keep_last, str(callback.save_dir)) == (100, 3, str(tmp_path))
    assert (callback.save_interval, callback.max_checkpoints, callback.output_dir) == (100, 3, callback.save_dir)
    with pytest.raises(ConfigError):
        CheckpointCallback(save_dir=tmp_path, output_dir=tmp_path)
    assert ProgressCallback(desc="Training").desc == "Training"
    assert LoggingCallback(log_interval=10).log_interval == 10
    # The source's defaults: console on, TensorBoard off unless a log directory is given.
    assert (LoggingCallback().log_to_console, LoggingCallback().log_to_tensorboard) == (True, False)
    assert LoggingCallback(log_dir=tmp_path / "logs").log_to_tensorboard
    assert EarlyStoppingCallback(patience=1000, min_delta=1e-4).patience == 1000


@pytest.mark.slow(reason="compiles a training step (the train() call after it reuses the compiled program)")
def test_trainer_source_api(dreamer, tmp_path):
    from worldloom_torch_compat.training import Trainer, TrainingConfig, train
    from worldloom_torch_compat.training.data import create_random_buffer

    buffer = create_random_buffer(1000, (4,), 2, num_episodes=10, episode_length=30, seed=0)
    # batch and window as in test_compute_loss_has_the_sources_loss_names: evaluate reuses that program
    config = TrainingConfig(total_steps=4, batch_size=2, sequence_length=4, device="cpu", steps_per_dispatch=2)
    trainer = Trainer(dreamer, config.with_updates(output_dir=str(tmp_path / "run")))
    assert (trainer.state.global_step, trainer.state.metrics, trainer.state.should_stop) == (0, {}, False)
    with pytest.raises(AttributeError, match=r"'opt_state'.*train\(\) has not run yet"):
        getattr(trainer.state, "opt_state")  # noqa: B009 - the JAX train state's fields come with training
    assert trainer.train(buffer, num_steps=2) is dreamer
    assert trainer.state.global_step == 2 and trainer.config.total_steps == 4
    assert trainer.state.opt_state is trainer.jax_trainer.state["opt_state"]  # the JAX state's fields
    metrics = trainer.evaluate(buffer, num_batches=2)
    assert isinstance(metrics["loss"], float) and math.isfinite(metrics["loss"]) and dreamer.training
    assert train(dreamer, buffer, total_steps=2, batch_size=2, sequence_length=4, device="cpu", steps_per_dispatch=2,
                 output_dir=str(tmp_path / "fn"), callbacks=[]) is dreamer
    # The source's order, train(data, num_steps): the second argument is the number of updates
    again = Trainer(dreamer, config)
    again.train(buffer, 2)
    assert again.state.global_step == 2
    # Called again, it starts from step 0 (the source went on from its step count): said, not silent
    with pytest.warns(RuntimeWarning, match=r"runs from step 0 again, .*\(2 updates ran before\)"):
        again.train(buffer, 2)
    # Frozen parameters would be trained anyway: refused, naming them
    next(dreamer.parameters()).requires_grad_(False)
    try:
        with pytest.raises(ConfigError, match=r"trains every parameter of the model; expected all of them "
                                              r"trainable, got \d+ with requires_grad=False"):
            again.train(buffer, 2)
        with pytest.raises(ConfigError, match=r"^train trains every parameter"):
            train(dreamer, buffer, total_steps=2, device="cpu")
    finally:
        dreamer.requires_grad_(True)


@pytest.mark.slow(reason="runs training steps (with test_trainer_source_api's shapes, so its compiled program)")
def test_callbacks_written_as_the_sources_get_the_torch_trainer(dreamer, tmp_path):
    from worldloom_torch_compat.training import Callback, Trainer, TrainingConfig, train
    from worldloom_torch_compat.training.data import create_random_buffer
    from worldloom_torch_compat.training.trainer import source_style

    class SourceStyle(Callback):  # as WorldLoom's own callbacks are written
        def __init__(self, stop_at=None):
            self.stop_at, self.steps, self.seen = stop_at, [], []

        def sync_interval(self):
            return 2

        def on_train_begin(self, trainer):
            super().on_train_begin(trainer)
            self.begin = (trainer, trainer.model, trainer.state.global_step, trainer.config.total_steps)
            self.start = [p.detach().clone() for p in trainer.model.parameters()]

        def on_step_end(self, trainer):
            state = trainer.state
            self.steps.append(state.global_step)
            self.seen.append((dict(state.metrics), [p.detach().clone() for p in self.begin[1].parameters()]))
            if state.global_step == self.stop_at:
                state.should_stop = True

        def on_train_end(self, trainer):
            self.end = (trainer.state.global_step, trainer.state.should_stop)

    class Documented(Callback):
        def on_step_end(self, step, losses):
            self.last = (step, losses["loss"])

    class BeginEnd(Callback):  # the source's hooks at the ends only: a wandb init/finish, a save at the end
        def on_train_begin(self, trainer):
            self.begin = (trainer.state.global_step, trainer.model)

        def on_train_end(self, trainer):
            self.end = trainer.state.global_step
            trainer.model.save_pretrained(tmp_path / "saved")

    class Packaged(BeginEnd):  # a class of worldloom's own: run as worldloom documents
        __module__ = "worldloom.training.example"

    assert source_style(SourceStyle()) and not source_style(Documented()) and not source_style(Callback())
    assert source_style(BeginEnd()) and not source_style(Packaged())
    buffer = create_random_buffer(1000, (4,), 2, num_episodes=10, episode_length=30, seed=0)
    config = TrainingConfig(total_steps=6, batch_size=2, sequence_length=4, device="cpu", steps_per_dispatch=2,
                            output_dir=str(tmp_path / "run"))
    source, documented, ends = SourceStyle(stop_at=2), Documented(), BeginEnd()
    trainer = Trainer(dreamer, config, callbacks=[source, ends])
    trainer.add_callback(documented)
    assert trainer.callbacks == [source, ends, documented]  # as given, not their adapters
    trainer.train(buffer)
    assert ends.begin == (0, dreamer) and ends.end == 2
    saved = face.create_world_model(str(tmp_path / "saved"))  # the weights the run ended with
    assert all(torch.equal(a, b) for a, b in zip(saved.parameters(), dreamer.parameters()))
    assert source.begin[:4] == (trainer, dreamer, 0, 6) and source.trainer is trainer
    assert source.steps == [1, 2] and source.end == (2, True) and documented.last[0] == 2
    metrics, weights = source.seen[-1]
    assert metrics["loss"] == documented.last[1] and metrics["kl"] == metrics["kl_loss"] and "lr" in metrics
    # At a multiple of its sync_interval the module holds that step's weights: here those the run ended with
    assert all(torch.equal(seen, now) for seen, now in zip(weights, dreamer.parameters()))
    assert not all(torch.equal(seen, start) for seen, start in zip(weights, source.start))
    assert trainer.state.num_batches == 2 and trainer.state.total_loss == pytest.approx(
        sum(seen["loss"] for seen, _ in source.seen))
    trainer.state.reset_epoch()
    assert (trainer.state.total_loss, trainer.state.num_batches, trainer.state.metrics) == (0.0, 0, {})
    # train(): the same, around a Trainer of its own
    source = SourceStyle()
    train(dreamer, buffer, total_steps=2, batch_size=2, sequence_length=4, device="cpu", steps_per_dispatch=2,
          output_dir=str(tmp_path / "fn"), callbacks=[source], progress=False)
    assert isinstance(source.begin[0], Trainer) and source.begin[1] is dreamer and source.steps == [1, 2]
    ends = BeginEnd()
    train(dreamer, buffer, total_steps=2, batch_size=2, sequence_length=4, device="cpu", steps_per_dispatch=2,
          callbacks=[ends], progress=False)
    assert ends.begin == (0, dreamer) and ends.end == 2


@pytest.mark.slow(reason="runs training steps (with test_trainer_source_api's shapes, so its compiled program)")
def test_a_second_train_call_goes_on_from_the_checkpoint_the_first_ended_with(dreamer, tmp_path):
    import warnings

    from worldloom.training.checkpoints import list_checkpoints
    from worldloom_torch_compat.training import Trainer, TrainingConfig
    from worldloom_torch_compat.training.data import create_random_buffer

    buffer = create_random_buffer(1000, (4,), 2, num_episodes=10, episode_length=30, seed=0)
    config = TrainingConfig(total_steps=2, batch_size=2, sequence_length=4, device="cpu", steps_per_dispatch=2,
                            output_dir=str(tmp_path / "run"))
    trainer = Trainer(dreamer, config)
    trainer.train(buffer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # As the source's Trainer: on from step 2 to num_steps, here on a buffer with more episodes
        trainer.train(create_random_buffer(1000, (4,), 2, num_episodes=12, episode_length=30, seed=1), num_steps=4)
    assert not [w for w in caught if "step 0" in str(w.message) or "buffer" in str(w.message)], caught
    assert trainer.state.global_step == 4
    assert [step for step, _ in list_checkpoints(tmp_path / "run", trainer.run_id)] == [2, 4]  # one run, both kept
    with pytest.warns(RuntimeWarning, match="already at total_steps=4: nothing is left to train"):
        trainer.train(buffer, num_steps=4)
    assert trainer.state.global_step == 4


@pytest.mark.slow(reason="runs training steps (with test_trainer_source_api's shapes, so its compiled program)")
def test_load_checkpoint_loads_at_once_and_training_resumes_from_it(dreamer, tdmpc, tmp_path):
    from worldloom.core.errors import CheckpointError
    from worldloom_torch_compat.training import Trainer, TrainingConfig
    from worldloom_torch_compat.training.data import create_random_buffer

    buffer = create_random_buffer(1000, (4,), 2, num_episodes=10, episode_length=30, seed=0)
    config = TrainingConfig(total_steps=4, batch_size=2, sequence_length=4, device="cpu", steps_per_dispatch=2,
                            output_dir=str(tmp_path / "run"))
    trainer = Trainer(dreamer, config)
    trainer.train(buffer, num_steps=2)
    trainer.save_checkpoint(tmp_path / "checkpoint.pt")
    fresh = face.create_world_model("dreamer:size1m", obs_shape=(4,), action_dim=2, device="cpu",
                                    encoder_type="mlp", decoder_type="mlp", seed=1, **TINY)
    assert not all(torch.equal(a, b) for a, b in zip(fresh.parameters(), dreamer.parameters()))
    again = Trainer(fresh, config)
    again.load_checkpoint(tmp_path / "checkpoint.pt")  # as the source: weights and step at once
    assert again.state.global_step == 2
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), dreamer.parameters()))
    again.train(buffer)  # resumes there: two more updates to total_steps
    assert again.state.global_step == 4

    class Steps(face.training.Callback):
        def on_step_end(self, step, losses):
            self.seen.append(step)

    steps = Steps()
    again.add_callback(steps)
    steps.seen = []
    again.train(buffer, num_steps=6)  # on from 4, not from the loaded checkpoint again
    assert steps.seen == [5, 6]
    with pytest.raises(ConfigError, match="expected total_steps >= 6"):
        again.train(buffer, num_steps=1)
    steps.seen = []
    again.train(buffer, num_steps=8)  # a failed call in between changes nothing
    assert steps.seen == [7, 8]
    with pytest.raises(CheckpointError, match="written for a dreamerv3 model"):
        Trainer(tdmpc, config).load_checkpoint(tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="No training checkpoint"):
        again.load_checkpoint(tmp_path)


def test_state_error_is_a_shape_error():
    assert issubclass(face.core.StateError, ShapeError)
