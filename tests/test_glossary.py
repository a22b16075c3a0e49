"""The glossary and the {term} links to it: every term is used somewhere, every {term} resolves.

The `-W` book build catches a {term} with no glossary entry, but only when the book is built; this test
runs with the unit tests and also catches the opposite: an entry no chapter links to.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GLOSSARY = ROOT / "book" / "glossary.md"

# Known gaps on 30 November 2026, to be emptied as chapters and the glossary are edited (never add to them
# to silence a new gap; the last test fails when an entry here has been fixed, so the lists only shrink).
# Glossary entries that no {term} links to yet (the chapter teaching each should link its first use) ...
UNUSED_TERMS_ALLOWED: set[str] = set()
# ... and {term} targets in chapters 0-5 (being revised) that have no glossary entry yet.
UNRESOLVED_TARGETS_ALLOWED: set[str] = set()

_TERM_ROLE = re.compile(r"\{term\}`([^`]+)`")
_EXPLICIT_TARGET = re.compile(r"^(.*?)\s*<([^<>]+)>\s*$", re.S)


def glossary_terms(text: str) -> list[str]:
    """The terms of every ```{glossary} block: its unindented, non-empty lines (a term may have aliases
    on the following unindented lines, as in Sphinx)."""
    terms = []
    for block in re.findall(r"^```\{glossary\}[^\n]*\n(.*?)^```", text, re.S | re.M):
        for line in block.splitlines():
            if line.strip() and not line[0].isspace() and not line.startswith(":"):
                terms.append(line.strip())
    return terms


def term_targets(text: str) -> list[str]:
    """The glossary entry each {term} role in ``text`` points at: `target` or `shown text <target>`."""
    targets = []
    for content in _TERM_ROLE.findall(text):
        match = _EXPLICIT_TARGET.match(content)
        targets.append(" ".join((match.group(2) if match else content).split()))
    return targets


def _sources() -> dict[str, str]:
    """Where {term} may appear: the book's pages (but the glossary itself) and the notebooks' Markdown."""
    sources = {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8")
               for p in sorted((ROOT / "book").glob("*.md")) if p != GLOSSARY}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        sources[path.relative_to(ROOT).as_posix()] = "\n".join(
            "".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown")
    return sources


def test_the_helpers_read_terms_and_targets():
    text = "```{glossary}\nSoftmax\n  def (软最大).\n\nZeRO\n  def.\n```\n"
    assert glossary_terms(text) == ["Softmax", "ZeRO"]
    assert term_targets("a {term}`softmax` and {term}`sharded <ZeRO>`.") == ["softmax", "ZeRO"]


def test_the_glossary_has_terms():
    assert len(glossary_terms(GLOSSARY.read_text(encoding="utf-8"))) >= 9


def test_every_term_target_has_a_glossary_entry():
    known = {term.lower() for term in glossary_terms(GLOSSARY.read_text(encoding="utf-8"))}
    unresolved = {}
    for source, text in _sources().items():
        for target in term_targets(text):
            if target.lower() not in known and target not in UNRESOLVED_TARGETS_ALLOWED:
                unresolved.setdefault(target, []).append(source)
    assert not unresolved, "{term} targets with no glossary entry (add the entry to book/glossary.md):\n" + \
        "\n".join(f"  {target!r}: {sorted(set(where))}" for target, where in sorted(unresolved.items()))


def test_every_glossary_term_is_linked_from_the_text():
    used = {target.lower() for text in _sources().values() for target in term_targets(text)}
    unused = [term for term in glossary_terms(GLOSSARY.read_text(encoding="utf-8"))
              if term.lower() not in used and term not in UNUSED_TERMS_ALLOWED]
    assert not unused, ("glossary terms that no {term} role links to (link the first use in the chapter "
                        "that teaches it):\n  " + "\n  ".join(unused))


@pytest.mark.parametrize("allowed", sorted(UNUSED_TERMS_ALLOWED | UNRESOLVED_TARGETS_ALLOWED) or [None])
def test_the_allow_lists_hold_only_real_gaps(allowed):
    """An allowed gap that has been fixed must leave the list, so the list only ever shrinks."""
    if allowed is None:
        return
    terms = {term.lower() for term in glossary_terms(GLOSSARY.read_text(encoding="utf-8"))}
    used = {target.lower() for text in _sources().values() for target in term_targets(text)}
    if allowed in UNUSED_TERMS_ALLOWED:
        assert allowed.lower() not in used, f"{allowed!r} is now linked: remove it from UNUSED_TERMS_ALLOWED"
    if allowed in UNRESOLVED_TARGETS_ALLOWED:
        assert allowed.lower() not in terms, f"{allowed!r} now has an entry: remove it from UNRESOLVED_TARGETS_ALLOWED"
