"""The documentation: a short README that links every page of docs/, and no broken relative link."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 200
# [text](target) and [text](target "title"); images too. Code spans and fenced blocks are skipped.
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def relative_links(path: Path) -> list[str]:
    """The targets of the file's links that point inside the repository (no scheme, no bare anchor)."""
    text = CODE_SPAN.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    targets = LINK.findall(text)
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.IGNORECASE) and not t.startswith("#")]


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in relative_links(path):
        file_part = target.split("#", 1)[0]
        if not (path.parent / file_part).exists():
            broken.append(target)
    return broken


def doc_pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def test_readme_is_short_and_keeps_the_test_command():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move a section into docs/"
    assert "make test" in README.read_text(encoding="utf-8"), "CI runs the README's test command, `make test`"


def test_every_docs_page_is_linked_from_the_readme():
    assert doc_pages(), "docs/ holds no page"
    linked = {(README.parent / t.split("#", 1)[0]).resolve() for t in relative_links(README)}
    missing = [str(page.relative_to(ROOT)) for page in doc_pages() if page.resolve() not in linked]
    assert not missing, f"README.md does not link {missing}"


def test_every_relative_link_leads_to_a_file():
    broken = {str(path.relative_to(ROOT)): broken_links(path) for path in [README, *doc_pages()]}
    broken = {path: links for path, links in broken.items() if links}
    assert not broken, f"links to files that do not exist: {broken}"
