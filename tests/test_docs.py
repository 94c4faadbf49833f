"""Every python code block in README.md and docs/*.md runs as written."""

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def python_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in DOCS if python_blocks(p)], ids=lambda p: p.name)
def test_doc_code_runs(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"doc_{path.stem}"}
    for index, block in enumerate(python_blocks(path)):
        try:
            exec(compile(block, f"{path.name}[block {index}]", "exec"), namespace)
        except Exception as err:  # noqa: BLE001 - report which block failed
            pytest.fail(f"{path.name} block {index} raised {type(err).__name__}: {err}\n{block}")
    assert os.getcwd() == str(tmp_path)
