"""Small Sphinx additions for the llmbook book (loaded through `sphinx.local_extensions` in _config.yml).

- ``doc:`` links in the footer (``_config.yml`` ``html.extra_footer``): ``href="doc:book/data-credits"``
  becomes the right relative URL on every page, whatever folder the page lives in.
- Bibliography labels in author–year form ("Vaswani et al., 2017"), matching the author–year citations
  in the text (style ``llmbook``; pybtex's own styles only give numbers or alpha labels such as [VSP+17]).
- The ``chapter-times`` directive: the preface's "how long each chapter takes" table, generated from each
  notebook's stamp (``metadata.llmbook``: scale, device, executed_in) and, when present, from
  ``_build/smoke_times.json``, which the repository's conftest.py writes after nbmake runs the notebooks.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList

REPO_ROOT = Path(__file__).resolve().parent.parent
SMOKE_TIMES = REPO_ROOT / "_build" / "smoke_times.json"
NOTEBOOKS = REPO_ROOT / "notebooks"

# ----------------------------------------------------------------------------------------- footer

_DOC_LINK = re.compile(r'href="doc:([^"#]+)(#[^"]*)?"')


def resolve_doc_links(html: str, pathto) -> str:
    """Replace every ``href="doc:DOCNAME[#anchor]"`` by ``pathto(DOCNAME)`` (relative to the page)."""
    return _DOC_LINK.sub(lambda m: f'href="{pathto(m.group(1))}{m.group(2) or ""}"', html)


def _fix_footer(app, pagename, templatename, context, doctree) -> None:
    footer = context.get("theme_extra_footer")
    if footer and "doc:" in footer:
        context["theme_extra_footer"] = resolve_doc_links(footer, context["pathto"])


def unique_scripts(scripts: list) -> list:
    """``scripts`` without repeats (same file and attributes, including an inline body), first kept."""
    seen, kept = set(), []
    for script in scripts:
        # An inline script's filename is None or "" depending on who added it.
        key = (str(getattr(script, "filename", script) or ""),
               tuple(sorted((k, str(v)) for k, v in getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    return kept


def _drop_duplicate_scripts(app, pagename, templatename, context, doctree) -> None:
    # sphinx-thebe adds its inline `const THEBE_JS_URL = ...` on every env-before-read-docs; when that
    # event fires twice the page declares the const twice and the browser logs a SyntaxError.
    # In place: the list is the builder's own, to which later handlers (mermaid) still add this page's
    # scripts. (A late priority would not help: html-page-context stops at the first handler that
    # returns a template name.)
    scripts = context.get("script_files")
    if isinstance(scripts, list):
        scripts[:] = unique_scripts(scripts)


# ------------------------------------------------------------------------------- author-year labels


def author_year_label(entry) -> str:
    """'Vaswani et al., 2017', 'Reimers and Gurevych, 2019', 'Rush, 2018' (editors, then the key, if no author)."""
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    names = [re.sub(r"[{}]", "", " ".join(p.last_names)) for p in people]
    if not names:
        who = re.sub(r"[{}]", "", entry.fields.get("organization", entry.fields.get("publisher", entry.key)))
    elif len(names) == 1:
        who = names[0]
    elif len(names) == 2:
        who = f"{names[0]} and {names[1]}"
    else:
        who = f"{names[0]} et al."
    year = entry.fields.get("year", "n.d.")
    return f"{who}, {year}"


def _register_pybtex_style() -> None:
    from pybtex.plugin import register_plugin
    from pybtex.style.formatting.unsrt import Style as UnsrtStyle
    from pybtex.style.labels import BaseLabelStyle

    class AuthorYearLabelStyle(BaseLabelStyle):
        def format_labels(self, sorted_entries):
            entries = list(sorted_entries)
            labels = [author_year_label(entry) for entry in entries]
            repeated = Counter(labels)
            seen: Counter = Counter()
            for label in labels:
                if repeated[label] > 1:  # "Wang et al., 2020a", "... 2020b"
                    seen[label] += 1
                    yield label + "abcdefghijklmnopqrstuvwxyz"[seen[label] - 1]
                else:
                    yield label

    class AuthorYearStyle(UnsrtStyle):
        default_label_style = AuthorYearLabelStyle
        default_sorting_style = "author_year_title"

    register_plugin("pybtex.style.labels", "llmbook_author_year", AuthorYearLabelStyle, force=True)
    register_plugin("pybtex.style.formatting", "llmbook", AuthorYearStyle, force=True)


# ------------------------------------------------------------------------------ chapter-times table


def _seconds(text) -> float | None:
    match = re.match(r"\s*([0-9.]+)\s*s\s*$", str(text or ""))
    return float(match.group(1)) if match else None


def format_duration(seconds: float | None) -> str:
    """'45 s', '12 min', '1 h 05 min'; an em dash when unknown."""
    if seconds is None:
        return "—"
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def notebook_title(notebook: dict, fallback: str) -> str:
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", "")).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def chapter_time_rows(notebooks_dir: Path = NOTEBOOKS, smoke_file: Path = SMOKE_TIMES) -> list[dict]:
    """One row per chapter notebook: its title; the scale, device and time of the run that produced its
    outputs; and its CI smoke time."""
    smoke = {}
    if smoke_file.is_file():
        try:
            smoke = json.loads(smoke_file.read_text(encoding="utf-8")).get("notebooks", {})
        except (ValueError, AttributeError):
            smoke = {}
    rows = []
    for path in sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb")):
        notebook = json.loads(path.read_text(encoding="utf-8"))
        stamp = notebook.get("metadata", {}).get("llmbook") or {}
        rows.append({
            "doc": f"notebooks/{path.stem}",
            "title": notebook_title(notebook, path.stem),
            "scale": stamp.get("scale"),
            "device": stamp.get("device"),
            "seconds": _seconds(stamp.get("executed_in")),
            "smoke_seconds": smoke.get(f"notebooks/{path.name}"),
        })
    return rows


def chapter_times_markdown(rows: list[dict], have_smoke: bool) -> str:
    lines = ["| chapter | scale | device | time | smoke (CI) |", "|---|---|---|---|---|"]
    for row in rows:
        smoke = format_duration(row["smoke_seconds"]) if have_smoke else "measured in CI"
        lines.append(
            f"| {{doc}}`{row['title']} </{row['doc']}>` | {row['scale'] or 'not yet stamped'} | "
            f"{row['device'] or '—'} | {format_duration(row['seconds'])} | {smoke} |"
        )
    return "\n".join(lines)


class ChapterTimes(Directive):
    """Render the chapter-times table (no arguments, no content)."""

    has_content = False

    def run(self):
        env = self.state.document.settings.env
        # Only chapters that are part of the book (a notebook not yet in _toc.yml has no page to link).
        rows = [row for row in chapter_time_rows() if row["doc"] in env.found_docs]
        for row in rows:
            env.note_dependency(str(REPO_ROOT / f"{row['doc']}.ipynb"))
        have_smoke = SMOKE_TIMES.is_file()
        if have_smoke:
            env.note_dependency(str(SMOKE_TIMES))
        container = nodes.container(classes=["llmbook-chapter-times"])
        # MyST parses the generated Markdown table like any other content of the page.
        self.state.nested_parse(StringList(chapter_times_markdown(rows, have_smoke).splitlines(),
                                           source="chapter-times"), self.content_offset, container)
        return [container]


def setup(app):
    _register_pybtex_style()
    app.add_directive("chapter-times", ChapterTimes)
    app.connect("html-page-context", _fix_footer)
    app.connect("html-page-context", _drop_duplicate_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
