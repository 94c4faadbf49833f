"""The python blocks of the original library's pages (``spec/original``) run unchanged but for the import root.

Every block runs through ``worldloom_torch_compat`` with ``worldloom`` renamed to
``worldloom_torch_compat``; blocks that use no torch also run on the JAX face.
Adjustments made before running (nothing else is changed):

- ``"cuda"`` -> ``"cpu"``; step counts shortened as in ``test_spec_docs``;
- ``...`` placeholder arguments (``create_world_model("dreamer", ...)``) get
  ``obs_shape=(4,), action_dim=2`` and the sizes of the family's smallest preset
  (the one the other tests build): each name resolves as written, and builds
  that small model, all of a family with one compiled initialiser (instead of
  eight presets of up to 317M parameters); ``"/path/to/checkpoint"`` is a
  model saved in the temporary working directory, as is ``"./my_saved_model"``;
- names a snippet uses without defining (``model``, ``obs``, ``action``,
  ``actions``, ``initial_state``, ``batch``, ``my_head``, ``config_dict``,
  ``dataclass``, ``torch``, ``LatentState``, ``Trajectory``) are given, and ``config.json``
  holds the page's saved-model JSON;
- on the JAX face, image shapes ``(3, 64, 64)`` read ``(64, 64, 3)`` (channels last).

Each page runs on the JAX face first, then on the torch face, whose JAX model
finds most of the JAX face's programs compiled.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from test_spec_docs import SHORTEN, SPEC

ORIGINAL = SPEC / "original" if SPEC is not None else None
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
JSON_BLOCK = re.compile(r"```json\n(.*?)```", re.S)
FACES = ["worldloom", "worldloom_torch_compat"]  # in this order
FAMILIES = {"dreamerv3": "dreamerv3:size1m", "tdmpc2": "tdmpc2:1m"}  # each family's smallest preset
PLACEHOLDER = re.compile(r"""create_world_model\(("[^"]+"),\s*\.\.\.\)""")

needs_spec = pytest.mark.skipif(ORIGINAL is None or not (ORIGINAL / "protocol.md").is_file(),
                                reason="spec/original not found (set WORLDLOOM_SPEC_DIR)")


def blocks(page: str, face: str) -> list[tuple[int, str | None]]:
    """``(index, code)`` of each python block of ``page`` prepared for ``face``; None: not for this face."""
    out = []
    for index, code in enumerate(BLOCK.findall((ORIGINAL / page).read_text())):
        uses_torch = re.search(r"\btorch\b", code) is not None
        if face == "worldloom" and uses_torch:
            out.append((index, None))
            continue
        for pattern, replacement in SHORTEN:
            code = pattern.sub(replacement, code)
        code = PLACEHOLDER.sub(placeholder_arguments, code)
        code = code.replace('"/path/to/checkpoint"', '"./my_saved_model"')
        if face == "worldloom":
            code = code.replace("(3, 64, 64)", "(64, 64, 3)")
        else:
            code = re.sub(r"\bworldloom\b", face, code)
        out.append((index, code))
    return out


def cases(reasons: dict, families: bool = True) -> list:
    """The ``family, face`` (or ``face``) parameters, each marked slow with its reason.

    ``reasons`` maps a case's id (``"tdmpc2-worldloom"``) or else its face to
    the reason, or to None for a quick case. A reason is for the case run on
    its own, as ``-m "not slow"`` runs it: in a whole run, a torch-face case
    finds many programs of the JAX-face case before it already compiled.
    """
    out = []
    for family in FAMILIES if families else [None]:
        for face in FACES:
            values = (family, face) if families else (face,)
            case_id = "-".join(v for v in values if v)
            reason = reasons.get(case_id, reasons.get(face))
            marks = [pytest.mark.slow(reason=reason)] if reason else []
            out.append(pytest.param(*values, marks=marks, id=case_id))
    return out


def placeholder_arguments(match: re.Match) -> str:
    """``create_world_model("dreamer", ...)``: a vector space and the sizes of the family's smallest preset."""
    from worldloom.core import registry

    family = registry.resolve(match.group(1).strip('"'))[0]
    smallest = registry.resolve(FAMILIES[family.name])[1]
    sizes = "".join(f", {key}={value!r}" for key, value in family.presets[smallest].items())
    return f"create_world_model({match.group(1)}, obs_shape=(4,), action_dim=2{sizes})"


def run(page: str, face: str, namespace: dict) -> dict:
    for index, code in blocks(page, face):
        if code is None:
            continue
        try:
            exec(compile(code, f"{page}[block {index}] ({face})", "exec"), namespace)
        except Exception as err:  # noqa: BLE001 - say which block failed
            pytest.fail(f"{page} block {index} on {face} raised {type(err).__name__}: {err}\n{code}")
    return namespace


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def inputs(model, face: str, batch: int = 3, horizon: int = 4) -> dict:
    """The names the protocol and state pages use without defining them, for ``model`` on ``face``."""
    rng = np.random.default_rng(0)
    shape = tuple(model.obs_shape) if face != "worldloom" else tuple(model.config.obs_shape)
    values = {
        "obs": rng.uniform(0, 1, (batch, *shape)), "action": rng.uniform(-1, 1, (batch, model.config.action_dim)),
        "actions": rng.uniform(-1, 1, (horizon, batch, model.config.action_dim)),
        "batch": {"obs": rng.uniform(0, 1, (batch, 6, *shape)),
                  "actions": rng.uniform(-1, 1, (batch, 6, model.config.action_dim)),
                  "rewards": rng.normal(size=(batch, 6)), "continues": np.ones((batch, 6))},
    }
    if face != "worldloom":
        import torch

        values = {k: ({n: torch.as_tensor(a, dtype=torch.float32) for n, a in v.items()} if isinstance(v, dict)
                      else torch.as_tensor(v, dtype=torch.float32)) for k, v in values.items()}
    return {"model": model, "initial_state": model.encode(values["obs"]), **values}


def scalar(value) -> float:
    return float(value.detach()) if hasattr(value, "detach") else float(value)


def make_model(face: str, family: str, obs_shape: tuple):
    import importlib

    if face == "worldloom" and len(obs_shape) == 3:
        obs_shape = (obs_shape[1], obs_shape[2], obs_shape[0])
    return importlib.import_module(face).create_world_model(FAMILIES[family], obs_shape=obs_shape, action_dim=2,
                                                            device="cpu")


@needs_spec
@pytest.mark.parametrize("family, face", cases({
    "worldloom": "compiles every protocol method of a DreamerV3 or TD-MPC2 model, and saves and loads it",
    "worldloom_torch_compat": "compiles every protocol method with its gradient (grad mode), and saves and loads",
}))
def test_protocol_page(workdir, family, face):
    import importlib

    package = importlib.import_module(face)
    model = make_model(face, family, (4,))
    namespace = {"__name__": "original_protocol", "LatentState": package.LatentState,
                 "Trajectory": package.Trajectory, **inputs(model, face)}
    run("protocol.md", face, namespace)
    state, nxt = namespace["state"], namespace["next_state"]
    assert isinstance(state, package.LatentState) and isinstance(nxt, package.LatentState)
    predictions, losses, trajectory = namespace["predictions"], namespace["losses"], namespace["trajectory"]
    assert predictions["reward"].shape == (3, 1) and predictions["continue"].shape == (3, 1)
    assert ("obs" in predictions) == (family == "dreamerv3")
    if family == "dreamerv3":
        assert predictions["obs"].shape == (3, 4)
        terms = ("kl_loss", "reconstruction_loss", "reward_loss", "continue_loss")
        assert set(terms) <= set(losses)
        parts = sum(scalar(losses[k]) for k in terms)
        assert parts == pytest.approx(scalar(losses["loss"]), rel=1e-5)
    else:
        assert "reward_loss" in losses
    # worldloom's trajectories hold the H imagined states; the torch face's, as the original's, the start too
    assert len(trajectory.states) == (4 if face == "worldloom" else 5)
    assert trajectory.states[-1].features.shape[0] == 3 and trajectory.rewards.shape == (4, 3)
    if face != "worldloom":
        assert bool((trajectory.states[0].deterministic == state.deterministic).all())  # the page's start
    assert isinstance(namespace["model"], package.WorldModel)  # the saved-and-loaded model of the last block
    assert (workdir / "my_model" / "config.json").is_file()

    if face == "worldloom_torch_compat":  # our methods have the Protocol's parameter names, in its order
        protocol = namespace["WorldModel"]
        for name in ("encode", "predict", "observe", "decode", "imagine", "compute_loss"):
            documented = list(inspect.signature(getattr(protocol, name)).parameters)[1:]
            ours = list(inspect.signature(getattr(type(model), name)).parameters)[1:len(documented) + 1]
            assert ours == documented, name


@needs_spec
@pytest.mark.parametrize("family, face", cases({
    "worldloom": "compiles a 64x64-image DreamerV3 model's initialiser and encoder",
    "tdmpc2-worldloom": None,
    "worldloom_torch_compat": "compiles a 64x64-image model's initialiser and its encoder at two batch sizes",
}))
def test_state_page(workdir, family, face):
    model = make_model(face, family, (3, 64, 64))
    values = inputs(model, face, batch=2)
    feature_dim = values["initial_state"].features.shape[-1]
    if face == "worldloom":
        weights = np.ones((feature_dim, 1), np.float32)
        extra = {"my_head": lambda features: features @ weights}
    else:
        import torch

        extra = {"my_head": torch.nn.Linear(feature_dim, 1), "torch": torch}
    namespace = {"__name__": "original_state", "dataclass": dataclasses.dataclass, **extra, **values}
    run("state.md", face, namespace)
    assert namespace["my_output"].shape == (2, 1)
    if face == "worldloom":
        return  # the batch-operations block uses torch
    batch_state = namespace["batch_state"]
    cfg = model.config
    if family == "dreamerv3":
        assert batch_state.deterministic.shape == (32, cfg.deter)
        assert batch_state.stochastic.shape == (32, cfg.stoch * cfg.classes)
        assert batch_state.features.shape == (32, cfg.deter + cfg.stoch * cfg.classes)
        assert batch_state.posterior_logits.shape == (32, cfg.stoch, cfg.classes)
        assert batch_state.prior_logits.shape == (32, cfg.stoch, cfg.classes)
    else:  # TD-MPC2's latent is deterministic
        assert batch_state.deterministic.shape == (32, cfg.latent_dim) and batch_state.stochastic is None
        assert batch_state.features is batch_state.deterministic
        assert batch_state.posterior_logits is None and batch_state.prior_logits is None


@needs_spec
@pytest.mark.parametrize("face", cases({
    face: "compiles the page's two 64x64-image size12m models and a small model of each family" for face in FACES
}, families=False))
def test_factory_page(workdir, face):
    import importlib

    package = importlib.import_module(face)
    package.create_world_model("tdmpc2:1m", obs_shape=(4,), action_dim=2, device="cpu").save_pretrained(
        "my_saved_model")
    namespace = run("factory.md", face, {"__name__": "original_factory"})
    models = namespace["models"]
    assert isinstance(models, dict) and set(models) == set(package.list_models())
    entry = models["dreamerv3:size12m"]
    assert entry["type"] == "dreamerv3" and entry["params"] == "8.9M" and entry["description"]
    model = namespace["model"]  # the overrides block: hidden_dim=256, num_layers=3
    assert model.config.hidden == model.config.units == 256
    assert model.config.enc_layers == model.config.dec_layers == 3


@needs_spec
@pytest.mark.parametrize("face", cases({
    face: "compiles the initialiser of the page's 26.6M-parameter image model (deter 4096)" for face in FACES
}, families=False))
def test_config_page(workdir, face):
    import importlib

    saved = json.loads(JSON_BLOCK.findall((ORIGINAL / "config.md").read_text())[0])
    if face == "worldloom":
        saved["obs_shape"] = [64, 64, 3]
    Path("config.json").write_text(json.dumps(saved))
    namespace = run("config.md", face, {"__name__": "original_config", "config_dict": saved})
    dreamer = importlib.import_module(f"{face}.models.dreamer")
    config, model = namespace["config"], namespace["model"]
    assert isinstance(config, dreamer.DreamerV3Config)
    assert (config.deter, config.stoch, config.classes, config.depth) == (4096, 32, 32, 48)
    assert config.enc_layers == config.dec_layers == 5
    assert model.num_parameters() > 0 and model.config.deter == 4096
    if face == "worldloom_torch_compat":
        assert isinstance(model, dreamer.DreamerV3WorldModel) and tuple(config.obs_shape) == (3, 64, 64)
        assert tuple(model.config.obs_shape) == (3, 64, 64)  # channels first, as the config it was built from
        assert tuple(model.jax_model.config.obs_shape) == (64, 64, 3)  # the JAX model's, channels last
        assert model.obs_shape == (3, 64, 64)


def test_config_original_names_map_faithfully():
    from worldloom.models.dreamer import DreamerV3Config
    from worldloom.models.tdmpc2 import TDMPC2Config

    config = DreamerV3Config(deter_dim=1024, num_categories=8, stoch_dim=256, kl_free=0.5, kl_balance=0.8,
                             hidden_dim=128, cnn_depth=8, mlp_layers=2)
    assert (config.deter, config.classes, config.stoch, config.free_nats) == (1024, 8, 32, 0.5)
    assert config.loss_scale_rep == pytest.approx(0.25) and config.loss_scale_dyn == 1.0  # 0.8 : 0.2
    assert (config.hidden, config.units, config.depth, config.enc_layers, config.dec_layers) == (128, 128, 8, 2, 2)
    assert DreamerV3Config(kl_balance=1 / 1.1).loss_scale_rep == pytest.approx(0.1)  # the reference's 1 : 0.1
    assert DreamerV3Config.from_size("size1m", stoch_dim=64).stoch == 16  # classes of size1m: 4
    assert TDMPC2Config(hidden_dim=256, mlp_layers=2).mlp_dim == 256
    assert TDMPC2Config.from_size("tdmpc2:19m").latent_dim == 768


@pytest.mark.parametrize("kwargs, message", [
    (dict(stoch_dim=100, num_categories=32), "multiple of the classes"),
    (dict(kl_balance=0.0), r"kl_balance must be in \(0, 1\]"),
    (dict(deter_dim=1024, deter=512), "was also given"),
    (dict(model_type="tdmpc2"), "not this family"),
    (dict(deter_dm=1024), "Did you mean 'deter_dim'"),
])
def test_config_original_names_without_faithful_meaning_are_config_errors(kwargs, message):
    from worldloom import ConfigError
    from worldloom.models.dreamer import DreamerV3Config

    with pytest.raises(ConfigError, match=message):
        DreamerV3Config(**kwargs)


def test_tdmpc2_mlp_layers_other_than_the_reference_is_a_config_error():
    from worldloom import ConfigError
    from worldloom.models.tdmpc2 import TDMPC2Config

    with pytest.raises(ConfigError, match="2 hidden layers, as in the reference.*mlp_dim"):
        TDMPC2Config(mlp_layers=3)


def test_original_import_paths_are_thin_re_exports():
    import worldloom
    import worldloom_torch_compat as face
    from worldloom.core import errors, exceptions, state
    from worldloom.models import dreamer, dreamerv3
    from worldloom_torch_compat.core import exceptions as face_exceptions
    from worldloom_torch_compat.core import state as face_state

    assert dreamer.DreamerV3Config is dreamerv3.DreamerV3Config
    assert dreamer.DreamerV3WorldModel is dreamerv3.DreamerV3WorldModel
    assert state.LatentState is worldloom.LatentState and face_state.LatentState is face.LatentState
    assert exceptions.ConfigurationError is errors.ConfigError is face_exceptions.ConfigurationError
    assert exceptions.ShapeMismatchError is errors.ShapeError
    assert exceptions.ModelNotFoundError is errors.UnknownModelError
    assert issubclass(face.DreamerV3Config, worldloom.DreamerV3Config)
    import worldloom.training

    assert face.training.TrainingConfig is worldloom.training.TrainingConfig  # no import of .training needed


@pytest.mark.parametrize("alias, preset", [
    ("dreamer", "dreamerv3:size12m"), ("dreamer-small", "dreamerv3:size12m"),
    ("dreamer-medium", "dreamerv3:size50m"), ("dreamer-large", "dreamerv3:size200m"),
    ("tdmpc", "tdmpc2:5m"), ("tdmpc-small", "tdmpc2:5m"), ("tdmpc-medium", "tdmpc2:48m"),
    ("tdmpc-large", "tdmpc2:317m"),
])
def test_aliases_are_the_documented_presets(alias, preset):
    from worldloom import MODEL_ALIASES
    from worldloom.core import registry

    family, name = registry.resolve(alias)
    assert f"{family.name}:{name}" == preset == MODEL_ALIASES[alias]


def test_auto_names_dispatch_over_the_registry(tmp_path):
    import worldloom

    config = worldloom.AutoConfig.from_pretrained("dreamerv3:size1m", obs_shape=(4,), action_dim=2)
    assert isinstance(config, worldloom.DreamerV3Config) and config.deter == 512
    model = worldloom.AutoWorldModel.from_config(config)
    assert isinstance(model, worldloom.DreamerV3WorldModel)
    model.save_pretrained(tmp_path / "m")
    assert worldloom.AutoConfig.from_pretrained(tmp_path / "m") == config
    # The saved config.json is the config as the original documents it: model_type and fields, read by the class
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["model_type"] == "dreamerv3" and worldloom.DreamerV3Config(**saved) == config
    loaded = worldloom.AutoWorldModel.from_pretrained(os.fspath(tmp_path / "m"))
    for a, b in zip(model.parameters(), loaded.parameters()):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert isinstance(worldloom.DreamerV3WorldModel.from_pretrained(tmp_path / "m"), worldloom.DreamerV3WorldModel)
    with pytest.raises(worldloom.ConfigError, match="expected a model of this class, got a DreamerV3WorldModel"):
        worldloom.TDMPC2WorldModel.from_pretrained(tmp_path / "m")
    assert worldloom.MODEL_CATALOG["tdmpc2:5m"]["num_parameters"] == 4_960_618


def test_docs_mapping_table_is_written_from_the_configs_alias_tables():
    from worldloom import DreamerV3Config, TDMPC2Config
    from worldloom.core.config import original_names_table

    text = (Path(__file__).resolve().parents[1] / "docs" / "pytorch.md").read_text()
    assert original_names_table(DreamerV3Config, TDMPC2Config) in text


@pytest.mark.slow(reason="compiles a 16x16-image DreamerV3 model's initialiser, and saves and loads it")
def test_auto_names_on_the_torch_face_give_torch_modules_and_channels_first_configs(tmp_path):
    pytest.importorskip("torch")
    import torch

    import worldloom
    import worldloom_torch_compat as face
    from worldloom.core.errors import ConfigError

    config = face.AutoConfig.from_pretrained("dreamerv3:size1m", obs_shape=(3, 16, 16), action_dim=2)
    assert isinstance(config, face.DreamerV3Config) and tuple(config.obs_shape) == (3, 16, 16)
    model = face.AutoWorldModel.from_config(config, device="cpu")
    assert isinstance(model, face.DreamerV3WorldModel) and isinstance(model, torch.nn.Module)
    model.save_pretrained(tmp_path / "m")
    assert face.AutoConfig.from_pretrained(tmp_path / "m") == config
    assert face.get_config(str(tmp_path / "m")) == config  # docs/pytorch.md: how to read a saved model's config
    saved = json.loads((tmp_path / "m" / "config.json").read_text())  # one file for both faces: channels last
    assert saved["obs_shape"] == [16, 16, 3] and worldloom.DreamerV3Config(**saved) == config.to_jax()
    with pytest.raises(ConfigError, match=r"expected an image shape channels first \(C, H, W\)"):
        face.DreamerV3Config(**saved)
    loaded = face.AutoWorldModel.from_pretrained(os.fspath(tmp_path / "m"), device="cpu")
    assert isinstance(loaded, face.DreamerV3WorldModel) and loaded.obs_shape == (3, 16, 16)
    # The original's protocol: the family classes load too (WorldLoom's DreamerV3WorldModel.from_pretrained)
    again = face.DreamerV3WorldModel.from_pretrained(str(tmp_path / "m"))
    assert isinstance(again, face.DreamerV3WorldModel) and isinstance(again, torch.nn.Module)
    with pytest.raises(ConfigError, match=r"TDMPC2WorldModel.from_pretrained\(.*expected a model of this class, "
                                          r"got a DreamerV3WorldModel"):
        face.TDMPC2WorldModel.from_pretrained(str(tmp_path / "m"))
