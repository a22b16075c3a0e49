"""The glossary and the {term} links to it: every term is used somewhere, every {term} resolves.

The `-W` book build catches a {term} with no glossary entry, but only when the book is built; this test
runs with the unit tests and also catches the opposite: an entry no chapter links to. It also holds each
entry to the glossary's form, English term · 中文 · one-line definition · link to the section that teaches
it, and checks that the link's text ("chapter 2, §1") names the section its label sits on.
"""

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GLOSSARY = ROOT / "book" / "glossary.md"

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
            if target.lower() not in known:
                unresolved.setdefault(target, []).append(source)
    assert not unresolved, "{term} targets with no glossary entry (add the entry to book/glossary.md):\n" + \
        "\n".join(f"  {target!r}: {sorted(set(where))}" for target, where in sorted(unresolved.items()))


def test_every_glossary_term_is_linked_from_the_text():
    used = {target.lower() for text in _sources().values() for target in term_targets(text)}
    unused = [term for term in glossary_terms(GLOSSARY.read_text(encoding="utf-8"))
              if term.lower() not in used]
    assert not unused, ("glossary terms that no {term} role links to (link the first use in the chapter "
                        "that teaches it):\n  " + "\n  ".join(unused))


_ENTRY_FORM = re.compile(r"^\*\*(?P<zh>[^*·]*[\u4e00-\u9fff][^*·]*)\*\* · (?P<definition>.+) · "
                         r"\{ref\}`(?P<where>[^`<>]+) <(?P<label>[^`<>]+)>`$", re.S)


def glossary_entries(text: str) -> dict[str, str]:
    """Each entry's first term and its definition text (indented lines joined by spaces)."""
    entries = {}
    for block in re.findall(r"^```\{glossary\}[^\n]*\n(.*?)^```", text, re.S | re.M):
        for entry in re.split(r"\n\s*\n(?=\S)", block.strip()):
            lines = entry.splitlines()
            terms = [line for line in lines if line.strip() and not line[0].isspace()]
            entries[terms[0].strip()] = " ".join(line.strip() for line in lines if line[:1].isspace())
    return entries


def section_labels() -> dict[str, tuple[str, str | None]]:
    """Every `(label)=` placed on a heading: label -> (where, section number), where is "chapter N" for a
    notebook and the page title (before any colon) for a book page; the number is the heading's own or, for an unnumbered
    ### heading, that of the ## heading above it."""
    labels = {}
    pages = [(p, "".join("".join(c["source"]) + "\n" for c in json.loads(p.read_text(encoding="utf-8"))["cells"]
                         if c["cell_type"] == "markdown")) for p in sorted((ROOT / "notebooks").glob("*.ipynb"))]
    pages += [(p, p.read_text(encoding="utf-8")) for p in sorted((ROOT / "book").glob("*.md")) if p != GLOSSARY]
    for path, text in pages:
        if path.suffix == ".ipynb":
            where = f"chapter {int(path.name[:2])}"
        else:
            where = re.search(r"^# +([^:\n]+)", text, re.M).group(1).strip()  # "Outlook: trends, ..." -> "Outlook"
        section = None
        for match in re.finditer(r"^(?:\(([^()\s]+)\)=\n)?(#{2,3}) +(\d+(?:\.\d+)*)?", text, re.M):
            label, level, number = match.groups()
            if level == "##":
                section = number
            if label:
                labels[label] = (where, number or section)
    return labels


def test_every_entry_reads_english_chinese_definition_and_section():
    """English term · 中文 · one-line definition · a link to the section that teaches it."""
    entries = glossary_entries(GLOSSARY.read_text(encoding="utf-8"))
    malformed = [term for term, body in entries.items() if not _ENTRY_FORM.match(body)]
    assert not malformed, ("glossary entries not in the form '**中文** · definition · {ref}`chapter N, §X <label>`':\n  "
                           + "\n  ".join(malformed))


def test_every_section_link_names_the_section_it_points_at():
    labels = section_labels()
    wrong = []
    for term, body in glossary_entries(GLOSSARY.read_text(encoding="utf-8")).items():
        match = _ENTRY_FORM.match(body)
        if not match:
            continue
        label = match["label"]
        if label not in labels:
            wrong.append(f"{term}: no heading carries the label {label!r}")
            continue
        where, number = labels[label]
        expected = f"{where}, §{number}" if number else where
        if match["where"] != expected:
            wrong.append(f"{term}: the link says {match['where']!r}, the label is on {expected!r}")
    assert not wrong, "\n".join(wrong)


def test_the_entry_helpers_read_the_form():
    text = ("```{glossary}\nSoftmax\n  **归一化指数函数** · Turns scores into probabilities. ·\n"
            "  {ref}`chapter 2, §1 <ch02-x>`\n\nZeRO\n  def without the form.\n```\n")
    entries = glossary_entries(text)
    assert _ENTRY_FORM.match(entries["Softmax"])["label"] == "ch02-x"
    assert _ENTRY_FORM.match(entries["ZeRO"]) is None
