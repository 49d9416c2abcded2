"""Citations of documents in the code resolve: the cited file exists in the repo, and so does the
cited section (`docs/protocols.md §4.4`, `docs/audio.md §5-§8`) or anchor (`bench/README.md#profiling`).

A comment that says "Twilio requires this (docs/protocols.md §4.3)" is only worth something while
§4.3 still says it; renumbering a document or deleting a section breaks such comments silently,
so this test makes it loud. The reference notes the docs were written from (PROTOCOLS.md,
audio.md outside the repo) do not ship with the project, so citing them is an error too.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("callbot", "bench", "tests")

# `path.md`, optionally followed by `#anchor` or by section numbers: `§4`, `§4.3`, `§4.1-§4.3`,
# `§4.3/§4.4`, `§4.3, §4.4`, `§5-8`.
_NUMBER = r"\d+(?:\.\d+)*"
CITATION = re.compile(
    rf"(?<![\w./-])(?P<file>/?(?:[\w.-]+/)*[\w-]+\.md)"
    rf"(?:#(?P<anchor>[\w-]+)|(?P<sections>\s*§\s*{_NUMBER}(?:\s*(?:-|–|/|,|and)\s*§?\s*{_NUMBER})*))?"
)
# Documents that used to be cited by bare name but live outside the repo.
NOT_IN_REPO = {"PROTOCOLS.md", "audio.md", "CALL_CONTROL.md", "DESIGN.md"}

# Citations in files that this branch must not edit (they are being rewritten elsewhere); each is
# (file, cited document). Remove an entry once its file cites docs/ instead: the test below fails
# when an entry no longer matches, so the list cannot outlive the problem.
PENDING: set[tuple[str, str]] = set()


def _python_files() -> list[Path]:
    """Every .py file of the scanned folders but this one (its examples are meant to be broken),
    leaving out caches and the peer venvs load_bench.py builds under bench/.peer-venv (git-ignored)."""
    me = Path(__file__).resolve()
    skipped = {"__pycache__", ".peer-venv"}
    files = (p for top in SCANNED for p in (ROOT / top).rglob("*.py") if not skipped & set(p.parts))
    return sorted(p for p in files if p.resolve() != me)


def _citations() -> list[tuple[str, int, re.Match[str]]]:
    found = []
    for path in _python_files():
        rel = path.relative_to(ROOT).as_posix()
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for match in CITATION.finditer(line):
                file = match["file"]
                # Bare names without a section ("--markdown load.md", "README.md" as data) are file
                # names the code handles, not citations; paths, sections and old names are.
                if "/" in file or match["anchor"] or match["sections"] or file in NOT_IN_REPO:
                    found.append((rel, line_no, match))
    return found


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@cache
def _sections(doc: Path) -> tuple[frozenset[str], frozenset[str]]:
    """The section numbers (`4`, `4.3`) and anchors (explicit `<a id>` and heading slugs) of a doc."""
    numbers, anchors = set(), set()
    for line in doc.read_text(encoding="utf-8").splitlines():
        anchors.update(re.findall(r'<a id="([\w-]+)"', line))
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            anchors.add(_slug(heading[1]))
            number = re.match(rf"({_NUMBER})\.?\s", heading[1])
            if number:
                numbers.add(number[1])
    return frozenset(numbers), frozenset(anchors)


def _problem(match: re.Match[str]) -> str | None:
    file = match["file"]
    doc = (ROOT / file.lstrip("/")).resolve()
    if file in NOT_IN_REPO or file.startswith("/") or not doc.is_relative_to(ROOT):
        return f"{file} is outside the repo: cite docs/protocols.md or docs/audio.md (with a section)"
    if not doc.is_file():
        return f"{file} does not exist in the repo"
    numbers, anchors = _sections(doc)
    if match["anchor"] and match["anchor"] not in anchors:
        return f"{file} has no anchor #{match['anchor']}"
    for number in re.findall(_NUMBER, match["sections"] or ""):
        if number not in numbers:
            return f"{file} has no section §{number}"
    return None


def test_scan_finds_the_citations() -> None:
    """The scan itself works: the code cites the protocol notes in dozens of places."""
    cited = {m["file"] for _, _, m in _citations()}
    assert {"docs/protocols.md", "docs/audio.md"} <= cited
    assert len(_citations()) > 30


def test_every_cited_document_and_section_exists() -> None:
    problems = []
    for rel, line_no, match in _citations():
        problem = _problem(match)
        if problem and (rel, match["file"]) not in PENDING:
            problems.append(f"{rel}:{line_no}: {match[0].strip()!r}: {problem}")
    assert not problems, "\n".join(problems)


def test_pending_entries_are_still_needed() -> None:
    still = {(rel, m["file"]) for rel, _, m in _citations() if _problem(m)}
    assert not PENDING - still, f"fixed, remove from PENDING: {sorted(PENDING - still)}"


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("see docs/protocols.md §4.4", True),
        ("(docs/protocols.md §4.1-§4.3)", True),
        ("docs/protocols.md §4.3/§4.4", True),
        ("docs/protocols.md#marks", True),
        ("docs/audio.md §5-8", True),
        ("docs/protocols.md §99", False),
        ("docs/protocols.md §4.1-§4.99", False),
        ("docs/protocols.md#no-such-anchor", False),
        ("docs/nothing.md", False),
        ("PROTOCOLS.md 3.4", False),
        ("/work/shared/audio.md", False),
    ],
)
def test_resolver(text: str, ok: bool) -> None:
    match = CITATION.search(text)
    assert match is not None
    assert (_problem(match) is None) is ok
