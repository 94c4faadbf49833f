"""The python blocks of the spec documents run in order, with short step counts.

Adjustments made before running (nothing else is changed):
- step counts shortened: ``total_steps`` 2, ``save_every``/``save_interval``/``log_interval`` 1,
  ``patience`` 2, ``step % 1000`` -> ``step % 1``;
- ``"cuda"`` -> ``"cpu"`` and ``dreamerv3:size12m`` -> ``dreamerv3:size1m`` (same code
  path, a third of the CPU time per update) or ``tdmpc2:1m``: each walkthrough runs
  for both model families; every file path is relative to a temporary directory,
  where ``data.npz`` and ``trajectories.npz`` are written first;
- ``create_world_model`` makes the preset's tiny variant (``TINY``; the torch
  face's spec test trains the same DreamerV3 model): the pages' models train a
  few steps at B=16, T=50, where the preset's size only costs time;
- blocks that use torch are skipped (the torch facade runs them);
- the "Adding Data" block's ``np.array([...])`` placeholders get arrays of
  the shapes its comments give.

The spec lives beside the repository (``../shared/spec``) or in ``$WORLDLOOM_SPEC_DIR``.
"""

import contextlib
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from _agents import DREAMER_TINY, TDMPC_TINY

from worldloom.models.base import WorldModel
from worldloom.training import ReplayBuffer
from worldloom.training.data import create_random_buffer

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = [os.environ.get("WORLDLOOM_SPEC_DIR"), ROOT.parent / "shared" / "spec", ROOT / "spec"]
SPEC = next((Path(p) for p in CANDIDATES if p and (Path(p) / "training-api.md").is_file()), None)
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
SHORTEN = [
    (re.compile(r"\b(total_steps)\s*=\s*[\d_]+"), r"\1=2"),
    (re.compile(r"\b(save_every|save_interval|log_interval)\s*=\s*[\d_]+"), r"\1=1"),
    (re.compile(r"\b(patience)\s*=\s*[\d_]+"), r"\1=2"),
    (re.compile(r"step % 1000"), "step % 1"),
    (re.compile(r"\"cuda\""), '"cpu"'),
]
PRESETS = ["dreamerv3:size1m", "tdmpc2:1m"]
TINY = {"dreamerv3:size1m": DREAMER_TINY,
        "tdmpc2:1m": {name: TDMPC_TINY[name] for name in ("enc_dim", "mlp_dim", "latent_dim", "num_q")}}
MODEL = re.compile(r'create_world_model\(\s*"dreamerv3:size12m",')
PLACEHOLDER = re.compile(r"(\w+)=np\.array\(\[\.\.\.\]\)")


def keywords(values: dict) -> str:
    """``values`` as a call's keyword arguments: ``"deter=64, hidden=32"``."""
    return ", ".join(f"{name}={value!r}" for name, value in values.items())


pytestmark = pytest.mark.skipif(SPEC is None, reason="spec documents not found (set WORLDLOOM_SPEC_DIR)")


def prepared_blocks(name: str, preset: str = PRESETS[0], tiny: bool = False) -> list[tuple[int, str | None]]:
    """``(index, code)`` per python block; ``code`` None for a skipped (torch) block. ``tiny``: the models
    ``create_world_model`` makes are the preset's ``TINY`` variant."""
    out = []
    for index, block in enumerate(BLOCK.findall((SPEC / name).read_text())):
        if re.search(r"\btorch\b", block):
            out.append((index, None))
            continue
        for pattern, replacement in SHORTEN:
            block = pattern.sub(replacement, block)
        if tiny:
            block = MODEL.sub(f'create_world_model("{preset}", {keywords(TINY[preset])},', block)
        block = block.replace("dreamerv3:size12m", preset)
        if PLACEHOLDER.search(block):
            block = "import numpy as np\n" + PLACEHOLDER.sub(r'\1=_EXAMPLE["\1"]', block)
        out.append((index, block))
    return out


def run_blocks(name: str, namespace: dict, preset: str, tiny: bool = False) -> list[str]:
    """Run the blocks of ``name`` with ``preset`` (``tiny``: see :func:`prepared_blocks`); returns each block's
    printed output."""
    outputs = []
    for index, code in prepared_blocks(name, preset, tiny):
        if code is None:
            outputs.append("")
            continue
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                exec(compile(code, f"{name}[block {index}]", "exec"), namespace)
        except Exception as err:  # noqa: BLE001 - say which block failed
            pytest.fail(f"{name} block {index} raised {type(err).__name__}: {err}\n{code}")
        outputs.append(printed.getvalue())
    return outputs


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = create_random_buffer(capacity=10_000, obs_shape=(4,), action_dim=2, num_episodes=40, episode_length=60,
                                seed=0)
    data.save("data.npz")
    data.save("trajectories.npz")
    return tmp_path


def params_finite(model: WorldModel) -> bool:
    return all(np.all(np.isfinite(np.asarray(p))) for p in model.parameters())


@pytest.mark.slow(reason="compiles a tiny model's training program and trains it five times (2 steps, B=16, T=50)")
@pytest.mark.parametrize("preset", PRESETS)
def test_training_api(workdir, preset):
    length = 60
    rng = np.random.default_rng(0)
    namespace = {"__name__": "spec_training_api", "_EXAMPLE": {
        "obs": rng.standard_normal((length, 4)).astype(np.float32),
        "actions": np.eye(2, dtype=np.float32)[rng.integers(0, 2, length)],
        "rewards": rng.standard_normal(length).astype(np.float32),
        "dones": np.arange(length) == length - 1,
    }}
    outputs = run_blocks("training-api.md", namespace, preset, tiny=True)
    assert len(outputs) == 17  # no block of this page uses torch
    trained, model = namespace["trained_model"], namespace["model"]
    assert isinstance(trained, WorldModel) and trained is model and params_finite(trained)
    assert model.family == preset.split(":")[0]
    assert {name: getattr(model.config, name) for name in TINY[preset]} == TINY[preset]  # the tiny variant trained
    buffer = namespace["buffer"]
    assert isinstance(buffer, ReplayBuffer) and len(buffer) == 2400  # trajectories.npz of the complete example
    assert ReplayBuffer.load("buffer.npz").num_transitions == length  # the "Adding Data" episode, saved
    assert namespace["batch"]["obs"].shape == (16, 50, 4) and namespace["batch"]["continues"].shape == (16, 50)
    assert sorted(os.listdir("ckpt")) == ["best", "step_00000001", "step_00000002"]
    assert any(n.startswith("events.out.tfevents") for n in os.listdir("logs"))
    assert (workdir / "final_model" / "config.json").is_file()


@pytest.mark.slow(reason="trains a tiny model twice (2 steps, B=16, T=50)")
@pytest.mark.parametrize("preset", PRESETS)
def test_train_your_first_model(workdir, preset):
    namespace = {"__name__": "spec_train_your_first_model"}
    outputs = run_blocks("train-your-first-model.md", namespace, preset, tiny=True)
    skipped = [i for i, code in prepared_blocks("train-your-first-model.md") if code is None]
    assert len(skipped) == 2  # Step 5 and the imagination rollout use torch
    buffer = namespace["buffer"]
    assert ReplayBuffer.load("cartpole_data.npz").num_episodes == 100
    assert buffer.num_episodes == 100 and len(buffer) == 10_000  # Option B replaced it
    count = re.search(r"Parameters: ([\d,]+)", "".join(outputs))
    assert count and int(count.group(1).replace(",", "")) == namespace["model"].num_parameters() > 0
    assert {name: getattr(namespace["model"].config, name) for name in TINY[preset]} == TINY[preset]  # tiny
    trained, loaded = namespace["trained_model"], namespace["loaded_model"]
    assert params_finite(trained) and trained.family == preset.split(":")[0]
    for a, b in zip(namespace["model"].parameters(), loaded.parameters()):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert sorted(os.listdir("checkpoints")) == ["best", "step_00000001", "step_00000002"]  # save_every: 1
