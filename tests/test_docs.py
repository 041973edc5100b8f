"""The documentation site: every python example in docs/*.md runs, and the site builds strictly.

Each page's ```python blocks run in order in one namespace (a later block may use names an
earlier one defined), so every example in the user guide is a test. ``mkdocs build --strict``
(warnings are errors: broken links, missing pages, docstrings mkdocstrings cannot read) runs
here too; mkdocs-material and mkdocstrings[python] are in the ``test`` extra.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pickgrad
from pickgrad._validation import value_checks_enabled

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GUIDE_PAGES = [
    "index",
    "structures",
    "estimators",
    "masks",
    "distributions",
    "diagnostics",
    "solver",
    "compile",
    "experiments",
    "troubleshooting",
]
API_MODULES = [
    "pickgrad",
    "pickgrad.structures",
    "pickgrad.estimators",
    "pickgrad.diagnostics",
    "pickgrad.distributions",
    "pickgrad.nn",
    "pickgrad.schedules",
    "pickgrad.experiments",
]
_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: Path) -> list[str]:
    """The ```python blocks of a markdown page, in order."""
    return _PYTHON_BLOCK.findall(page.read_text())


def test_every_guide_page_exists_and_has_an_example() -> None:
    for name in GUIDE_PAGES:
        page = DOCS / f"{name}.md"
        assert page.is_file(), f"missing guide page {page}"
        assert python_blocks(page), f"{page.name} has no python example"


@pytest.mark.parametrize(
    "name", sorted(page.stem for page in DOCS.glob("*.md") if python_blocks(page))
)
def test_page_examples_run(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    checks_before, threads_before = value_checks_enabled(), torch.get_num_threads()
    namespace: dict[str, object] = {"__name__": f"docs_{name}"}
    blocks = python_blocks(DOCS / f"{name}.md")
    assert blocks
    try:
        for index, block in enumerate(blocks):
            code = compile(block, f"docs/{name}.md (python block {index + 1})", "exec")
            exec(code, namespace)
    finally:
        pickgrad.set_validation(checks_before)
        torch.set_num_threads(threads_before)
        torch._dynamo.reset()  # compiled examples leave no cache behind for other tests


def _glossary_rows() -> list[list[str]]:
    text = (DOCS / "estimators.md").read_text()
    section = text.split("## Glossary", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def test_glossary_lists_every_estimator_name_and_alias() -> None:
    names = pickgrad.available_estimators(include_aliases=True)
    assert {"gumbel-softmax", "concrete"} <= set(names)  # aliases are listed
    first_cells = " ".join(row[0] for row in _glossary_rows())
    listed = set(re.findall(r"`([a-z-]+)`", first_cells))
    assert set(names) <= listed, f"missing from the glossary: {sorted(set(names) - listed)}"
    assert listed <= set(names) | {"nvil"}, f"not estimators: {sorted(listed - set(names))}"


def test_glossary_rows_name_a_paper_and_other_libraries() -> None:
    for row in _glossary_rows():
        assert len(row) >= 3 and all(row[:3]), f"incomplete glossary row: {row}"
        assert re.search(r"(19|20)\d\d", row[1]), f"no paper year in {row}"


def test_api_reference_covers_every_module() -> None:
    documented = set()
    for page in (DOCS / "api").glob("*.md"):
        documented |= set(re.findall(r"^::: (\S+)", page.read_text(), re.M))
    assert set(API_MODULES) <= documented, sorted(set(API_MODULES) - documented)
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (DOCS / "api").glob("*.md"):
        assert f"api/{page.name}" in nav, f"{page.name} is not in the nav"


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    try:
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError as error:  # pragma: no cover - the test extra installs both
        pytest.fail(f"{error}: install the test extra, pip install -e '.[test]'")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "index.html").is_file()
    assert (tmp_path / "api" / "structures" / "index.html").is_file()
    structures = (tmp_path / "api" / "structures" / "index.html").read_text()
    # Doctest examples render as code (docs/_griffe/doctest_examples.py), not as '>' quotes.
    assert "<blockquote>" not in structures and "&gt;&gt;&gt;" in structures
    reference = (tmp_path / "api" / "pickgrad" / "index.html").read_text()
    for function in ("pickgrad.select.select", "pickgrad.estimate", "pickgrad.diagnose"):
        assert f'id="{function}"' in reference, f"{function} is not in the API reference"


def test_example_sections_become_examples_for_the_api_reference() -> None:
    path = DOCS / "_griffe" / "doctest_examples.py"
    spec = importlib.util.spec_from_file_location("doctest_examples", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plain = "Purpose.\n\nExample:\n    >>> 1 + 1\n    2"
    assert module.rename_example_sections(plain) == plain.replace("Example:", "Examples:")
    titled = "Example (a path through a grid,\n    right or down):\n    >>> 1\n    1"
    assert module.rename_example_sections(titled).splitlines()[:2] == [
        "Examples:",
        "    a path through a grid, right or down:",
    ]
