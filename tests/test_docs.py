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
