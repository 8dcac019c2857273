"""The repository stands on its own: what a user reads (README, docs/, the example config, the
systemd files, the package's texts and templates) never points outside it, and every relative
Markdown link in README and docs/ reaches a file (and heading) that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
USER_FACING = [
    *DOCS,
    REPO / "config.example.toml",
    *sorted((REPO / "systemd").iterdir()),
    *sorted(p for p in (REPO / "watcher").rglob("*")
            if p.is_file() and p.suffix in {".py", ".html", ".js", ".json", ".toml", ".css"}),
]
OUTSIDE = re.compile(r"\.\./shared|/work/|CONTRACT\.md|FIELD-NOTES")
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)  # no code blocks
    return {_slug(h) for h in HEADING.findall(text)}


@pytest.mark.parametrize("path", USER_FACING, ids=lambda p: str(p.relative_to(REPO)))
def test_nothing_points_outside_the_repository(path: Path) -> None:
    found = [m.group(0) for m in OUTSIDE.finditer(path.read_text(errors="replace"))]
    assert found == [], f"{path.relative_to(REPO)} points outside the repository: {found}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path: Path) -> None:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        missing_anchor = bool(anchor) and dest.suffix == ".md" and anchor not in _anchors(dest)
        if not dest.exists() or missing_anchor:
            broken.append(target)
    assert broken == [], f"{path.relative_to(REPO)}: broken links {broken}"


def test_the_rules_page_is_linked_from_the_readme() -> None:
    assert "(docs/rules.md)" in (REPO / "README.md").read_text()
