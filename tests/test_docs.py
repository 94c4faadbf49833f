"""Every python code block in README.md and docs/*.md runs as written.

The pages run in one process, in this order, so a program that several pages
compile (the DreamerV3 `size1m` vector model's initialiser, its training
program at B=8, T=16 in README.md, docs/distributed.md and docs/pytorch.md)
compiles once. The pages' examples run at the smallest settings that still
execute every line.
"""

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
# What a page compiles, for the pages that take more than a few seconds on their own.
SLOW = {
    "README.md": "compiles a DreamerV3 model's methods and its training program",
    "agents.md": "compiles a DreamerAgent's initialiser and policy step, and makes DMC and Atari environments",
    "dreamerv3.md": "compiles a DreamerV3 model's initialiser and methods",
    "distributed.md": "trains a DreamerV3 model (its program is README.md's, cached in a full run)",
    "pytorch.md": "compiles the torch face's gradient programs and a second (image) model",
    "tdmpc2.md": "compiles a TD-MPC2 model, its update and its MPPI planner",
    "training.md": "compiles and runs a DreamerV3 training program, with a checkpoint and a resumed run",
}


def python_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


def page(path: Path):
    marks = [pytest.mark.slow(reason=SLOW[path.name])] if path.name in SLOW else []
    return pytest.param(path, marks=marks, id=path.name)


@pytest.mark.parametrize("path", [page(p) for p in DOCS if python_blocks(p)])
def test_doc_code_runs(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"doc_{path.stem}"}
    for index, block in enumerate(python_blocks(path)):
        try:
            exec(compile(block, f"{path.name}[block {index}]", "exec"), namespace)
        except Exception as err:  # noqa: BLE001 - report which block failed
            pytest.fail(f"{path.name} block {index} raised {type(err).__name__}: {err}\n{block}")
    assert os.getcwd() == str(tmp_path)
