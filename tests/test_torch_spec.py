"""The documented API, run through worldloom_torch_compat.

Every python code block of the two spec documents runs in order, one
namespace per document, with the import root changed from ``worldloom`` to
``worldloom_torch_compat``, exactly as a PyTorch user would take it. Only what
this machine and the time budget need is rewritten: ``"cuda"`` becomes
``"cpu"``, step counts and intervals shrink, presets become a tiny size1m
model, and the placeholder arrays of the "Adding Data" template get real
values. Files land in a temporary directory, where a buffer is saved as
``data.npz``/``trajectories.npz`` first for the blocks that load one.

The spec documents are read from ``$WORLDLOOM_SPEC_DIR`` or from
``../shared/spec`` beside the repository; the test is skipped where they are absent.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_spec_docs import TINY as TINY_MODELS  # noqa: E402
from test_spec_docs import keywords  # noqa: E402

from worldloom.models.base import flatten_params  # noqa: E402

_CANDIDATES = [os.environ.get("WORLDLOOM_SPEC_DIR"), Path(__file__).resolve().parents[2] / "shared" / "spec"]
SPEC_DIR = next((Path(p) for p in _CANDIDATES if p and Path(p).is_dir()), Path("spec-not-found"))
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
TINY = keywords(TINY_MODELS["dreamerv3:size1m"])  # the JAX face's spec test trains the same model
BIAS = "continue.Dense_0.Dense_0.bias"

REWRITES = [
    (r"\bfrom worldloom\b(?!_)", "from worldloom_torch_compat"),
    (r"\bimport worldloom\b(?!_)", "import worldloom_torch_compat"),
    (r'"cuda"', '"cpu"'),
    (r'create_world_model\(\s*"dreamerv3:size12m",', f'create_world_model("dreamerv3:size1m", {TINY},'),
    (r"total_steps=[\d_]+", "total_steps=4"),
    (r"save_every=[\d_]+", "save_every=2"),
    (r"log_interval=[\d_]+", "log_interval=2"),
    (r"patience=[\d_]+", "patience=10"),  # more than total_steps: no early stop
    (r"step % 1000", "step % 2"),
    (r"for episode in range\(100\)", "for episode in range(5)"),
    # The "Adding Data" template's placeholders, as arrays of the commented shapes.
    (r"obs=np\.array\(\[\.\.\.\]\)", "obs=np.random.randn(60, 4)"),
    (r"actions=np\.array\(\[\.\.\.\]\)", "actions=np.random.uniform(-1, 1, (60, 2))"),
    (r"rewards=np\.array\(\[\.\.\.\]\)", "rewards=np.random.randn(60)"),
    (r"dones=np\.array\(\[\.\.\.\]\)", "dones=np.arange(60) == 59"),
]


def spec_blocks(name: str) -> list[str]:
    path = SPEC_DIR / name
    if not path.is_file():
        pytest.skip(f"spec document {path} not found (set WORLDLOOM_SPEC_DIR)")
    return BLOCK.findall(path.read_text())


def adapt(block: str) -> str:
    for pattern, replacement in REWRITES:
        block = re.sub(pattern, replacement, block)
    assert "worldloom." not in block.replace("worldloom_torch_compat", ""), block
    return block


def run_document(name: str, namespace: dict, checks: dict | None = None) -> str:
    """Run the document's blocks in order; ``checks[i](namespace, printed)`` after block ``i``."""
    printed_all = []
    blocks = spec_blocks(name)
    for index, block in enumerate(blocks):
        code = adapt(block)
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # TrainingConfig's default "cuda" -> cpu
                exec(compile(code, f"{name}[block {index}]", "exec"), namespace)
        except Exception as err:  # noqa: BLE001 - name the failing block
            pytest.fail(f"{name} block {index} raised {type(err).__name__}: {err}\n{code}")
        printed = out.getvalue()
        printed_all.append(printed)
        if checks and index in checks:
            checks[index](namespace, printed)
    return "".join(printed_all)


def random_buffer_file(path: Path) -> None:
    from worldloom_torch_compat.training.data import create_random_buffer

    create_random_buffer(capacity=10_000, obs_shape=(4,), action_dim=2, num_episodes=40, episode_length=100,
                         seed=0).save(path)


def params_of(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow(reason="compiles a model, its training program and the torch face's loss and imagination")
def test_train_your_first_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen = {}

    def after_model(ns, printed):
        model = ns["model"]
        assert isinstance(model, torch.nn.Module)
        assert printed.strip() == f"Parameters: {model.num_parameters():,}"
        # An edit on the torch side is where training starts from.
        with torch.no_grad():
            model.get_parameter(BIAS).fill_(3.0)
        seen["initial"] = params_of(model)

    def after_simple_train(ns, printed):
        model = ns["model"]
        assert ns["trained_model"] is model
        changed = [k for k, v in params_of(model).items() if not torch.equal(v, seen["initial"][k])]
        assert changed, "train() left every weight unchanged"
        assert abs(model.get_parameter(BIAS).item() - 3.0) < 0.1  # 4 small steps from 3.0
        for name, value in flatten_params(model.jax_model.params):
            np.testing.assert_array_equal(np.asarray(value), model.get_parameter(name).detach().numpy())

    def after_evaluate(ns, printed):
        lines = printed.strip().splitlines()
        assert lines[0] == "Final losses:" and any(line.strip().startswith("loss:") for line in lines)
        values = [float(line.rsplit(":", 1)[1]) for line in lines[1:]]
        assert values and all(math.isfinite(v) for v in values), printed
        assert ns["batch"]["obs"].shape == (4, 20, 4) and ns["batch"]["obs"].device.type == "cpu"

    def after_imagine(ns, printed):
        match = re.fullmatch(r"Predicted rewards: (\S+)\n", printed)
        assert match and math.isfinite(float(match.group(1))), printed
        assert ns["trajectory"].rewards.shape == (15, 4)

    def after_save_load(ns, printed):
        loaded, model = ns["loaded_model"], ns["model"]
        assert isinstance(loaded, torch.nn.Module)
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key

    run_document("train-your-first-model.md", {"__name__": "spec_first_model"}, {
        2: after_model, 4: after_simple_train, 6: after_evaluate, 7: after_imagine, 8: after_save_load,
    })
    assert (tmp_path / "cartpole_data.npz").is_file()
    assert any((tmp_path / "checkpoints").iterdir()) and (tmp_path / "logs").is_dir()


@pytest.mark.slow(reason="trains a model six times, 4 steps each (B=16, T=50), with every documented callback")
def test_training_api(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("data.npz", "trajectories.npz"):
        random_buffer_file(tmp_path / name)

    def after_quick_start(ns, printed):
        assert ns["trained_model"] is ns["model"] and isinstance(ns["model"], torch.nn.Module)

    def after_sampling(ns, printed):
        batch = ns["batch"]
        assert isinstance(batch["obs"], torch.Tensor) and batch["obs"].shape == (16, 50, 4)
        assert batch["actions"].shape == (16, 50, 2) and batch["rewards"].shape == (16, 50)
        assert batch["continues"].shape == (16, 50) and batch["obs"].device.type == "cpu"

    def after_custom_callback(ns, printed):
        # The document adds its callbacks to a trainer it does not run again: run it
        # here, so every documented callback (and MyCallback's prints) is exercised.
        out = io.StringIO()
        with contextlib.redirect_stdout(out), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            result = ns["trainer"].train(ns["buffer"])
        assert result is ns["model"]
        steps = re.findall(r"Step (\d+): loss=(\S+)", out.getvalue())
        assert [int(step) for step, _ in steps] == [2, 4], out.getvalue()
        assert all(math.isfinite(float(loss)) for _, loss in steps)
        assert "[train] step 4 |" in out.getvalue()  # LoggingCallback(log_to_console=True), at the end
        assert len(list((tmp_path / "checkpoints").iterdir())) >= 2

    namespace = {"__name__": "spec_training_api", "np": np}  # the "Adding Data" block uses np unimported
    run_document("training-api.md", namespace, {0: after_quick_start, 8: after_sampling, 14: after_custom_callback})
    assert isinstance(namespace["trained_model"], torch.nn.Module)
    assert (tmp_path / "buffer.npz").is_file() and (tmp_path / "final_model" / "config.json").is_file()
    assert any((tmp_path / "ckpt").iterdir())
    from worldloom_torch_compat import create_world_model

    final = create_world_model(str(tmp_path / "final_model"))
    for key, value in namespace["trained_model"].state_dict().items():
        assert torch.equal(final.state_dict()[key], value), key
