"""Links from the docs to lines of the code stay inside the files they name and land on code."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
LINK = re.compile(r"\]\((\.\./[^)#]+)#L(\d+)\)")


def _links():
    for doc in sorted(DOCS.glob("*.md")):
        for target, line in LINK.findall(doc.read_text()):
            yield doc, target, int(line)


@pytest.mark.parametrize(("doc", "target", "line"), list(_links()))
def test_line_link_lands_on_code(doc, target, line):
    path = (doc.parent / target).resolve()
    assert path.is_file(), f"{doc.name}: {target} does not exist"
    lines = path.read_text().splitlines()
    assert 1 <= line <= len(lines), f"{doc.name}: {target}#L{line} is past the end ({len(lines)} lines)"
    text = lines[line - 1].strip()
    assert text and not text.startswith("#"), f"{doc.name}: {target}#L{line} is blank or a comment: {text!r}"


ROOT = DOCS.parent
# The design notes a user needs are docs/design.md; nothing in the repository points outside it.
OUTSIDE = re.compile(r"DESIGN\.md|STYLE\.md|\.\./shared")


def test_nothing_points_outside_the_repository():
    files = [p for d in ("agentrl", "envs", "docs", "tests", "examples", "benchmarks", ".ci")
             for p in (ROOT / d).rglob("*") if p.is_file() and p.suffix in {".py", ".md", ".yaml", ""}]
    files += [ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml"]
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in files if p.name != "test_docs.py"
            for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if OUTSIDE.search(line)]
    assert not hits, f"mentions of files outside the repository: {hits}"


def test_design_page_is_linked_from_the_readme():
    assert (DOCS / "design.md").is_file()
    assert "docs/design.md" in (ROOT / "README.md").read_text()
