"""The documentation holds: the Python examples of README.md and docs/*.md run as written, the
README stays short enough to read in five minutes, and docs/benchmarks.md (with the README's
results table) is what benchmarks/results gives, so no benchmark number is typed by hand.

An example that needs minutes of training is marked on the line before its fence with
``<!-- docs-test: skip (why) -->``; keep those few.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^(?P<before>[^\n]*)\n```python[^\n]*\n(?P<code>.*?)^```", re.MULTILINE | re.DOTALL)
SKIP = "<!-- docs-test: skip"

pytestmark = pytest.mark.usefixtures("one_thread")


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """(line number, code) of each ```python block of `page` not marked to skip."""
    return blocks_in(page.read_text())


def blocks_in(text: str) -> list[tuple[int, str]]:
    blocks = []
    for m in BLOCK.finditer(text):
        if not m.group("before").strip().startswith(SKIP):
            blocks.append((text[:m.start("code")].count("\n") + 1, m.group("code")))
    return blocks


def test_blocks_are_found():
    """The extraction itself: the README's quickstart block is seen, a skipped one is not."""
    readme = python_blocks(ROOT / "README.md")
    assert readme and "simulate_galaxies" in readme[0][1]
    text = f"a\n{SKIP} (trains for minutes) -->\n```python\nslow()\n```\n\nb\n```python\nfast()\n```\n"
    assert blocks_in(text) == [(9, "fast()\n")]


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_examples_run(page, tmp_path, monkeypatch):
    """A page's blocks run in order in one namespace (later blocks use earlier ones' names),
    in an empty folder, so every file they write is the page's own."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for line, code in python_blocks(page):
        exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)


def test_readme_is_short():
    """Issue 15: a newcomer reads the README in five minutes."""
    n = len((ROOT / "README.md").read_text())
    assert n < 12_000, f"README.md is {n} characters; move detail into docs/ (limit 12,000)"


def test_readme_keeps_the_setup_and_test_commands():
    """CI runs what the README tells a newcomer to run."""
    readme = (ROOT / "README.md").read_text()
    for command in ("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu",
                    'pip install -e ".[test]"', "```bash\npytest\n```", "deepfield demo --quick"):
        assert command in readme, command


def test_benchmark_tables_are_generated():
    """docs/benchmarks.md and the README's results table equal a regeneration from the results."""
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "benchmarks" / "readme_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert page == tables.benchmarks_page(), (
        "docs/benchmarks.md is stale: python benchmarks/readme_tables.py --write docs/benchmarks.md --readme README.md")
    readme = (ROOT / "README.md").read_text()
    assert readme == tables.readme_with_headline(readme), "the README's results table is stale: same command"
    # the numbers come from the result files: a headline value is found in its source table
    assert tables.cell("simulate", "deepfield workers=2", "stamps/s") in tables.headline()


def test_every_docs_page_is_in_the_site():
    """A page missing from mkdocs.yml's nav would be built but never linked."""
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").rglob("*.md"):
        rel = page.relative_to(ROOT / "docs").as_posix()
        assert rel in nav, f"docs/{rel} is not in mkdocs.yml's nav"
