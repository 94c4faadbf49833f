"""The documentation site: mkdocs builds it strictly, its API reference covers the public names, links stay inside.

The build needs the ``docs`` extra (``pip install -e ".[docs]"``, which CI installs); without mkdocs that test
is skipped and says so. The link and code-block checks need nothing more.
"""

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_docs import DOCS, SLOW, python_blocks

ROOT = Path(__file__).resolve().parents[1]
# The API pages and the modules whose ``__all__`` each must cover.
API_PAGES = {"api/worldloom": "worldloom", "api/training": "worldloom.training", "api/agents": "worldloom.agents"}
# Markdown links and images: ``[text](target)`` and ``![alt](target)``, the target up to a space or ``)``.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)[^)]*\)")


def _mkdocs_missing() -> str | None:
    try:
        importlib.import_module("mkdocs")
        importlib.import_module("mkdocstrings_handlers.python")
        importlib.import_module("material")
    except ImportError as err:
        return f"the docs extra is not installed ({err.name} is missing): pip install -e '.[docs]'"
    return None


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built with ``mkdocs build --strict`` into a temporary directory."""
    missing = _mkdocs_missing()
    if missing:
        pytest.skip(missing)
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


@pytest.mark.slow(reason="builds the whole site, the API reference from every public docstring (about 5 s)")
def test_the_site_builds_strictly_with_every_public_name_in_the_api_reference(site):
    for page, module_name in API_PAGES.items():
        html = (site / page / "index.html").read_text()
        anchors = set(re.findall(r'id="([^"]+)"', html))
        module = importlib.import_module(module_name)
        missing = [name for name in module.__all__ if f"{module_name}.{name}" not in anchors]
        assert not missing, f"{page}.md documents no entry for {missing} of {module_name}.__all__"
    assert (site / "index.html").is_file(), "the site has no start page"
    for page in ["dreamerv3", "tdmpc2", "training", "distributed", "agents", "suites", "pytorch", "performance",
                 "results"]:
        assert (site / page / "index.html").is_file(), f"the site has no {page} page"


def _links(path: Path) -> list[str]:
    # Code blocks and inline code hold commands and examples, not links.
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return LINK.findall(text)


def test_links_in_readme_and_docs_point_into_the_repository_or_to_public_urls():
    pages = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        for target in _links(page):
            if re.match(r"(https?|mailto):", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.is_relative_to(ROOT) or not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert pages and not broken, f"links to files that are not in the repository: {broken}"


def test_the_pages_whose_code_the_doc_tests_run_still_hold_code():
    """Each page tests/test_docs.py names as slow still has python blocks, so its test does not pass on nothing."""
    pages = {path.name: path for path in DOCS}
    empty = [name for name in SLOW if name not in pages or not python_blocks(pages[name])]
    assert not empty, f"tests/test_docs.py names pages without python code blocks: {empty}"
    assert sum(len(python_blocks(path)) for path in DOCS) >= 10
