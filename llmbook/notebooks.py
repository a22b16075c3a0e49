"""Executing, stamping and checking the book's notebooks.

Maintainer tooling (the book's contributing notes and the getting-started chapter explain it):

    python -m llmbook.notebooks run --scale cpu notebooks/00_getting_started.ipynb
    python -m llmbook.notebooks check notebooks/*.ipynb
    python -m llmbook.notebooks sync-setup notebooks/*.ipynb
    python -m llmbook.notebooks text-bars notebooks/*.ipynb

``run`` executes a notebook in place at a chosen scale, with its own folder as the working
directory, and stamps ``metadata.llmbook`` with what produced the outputs (scale, device, library
versions, date). It writes the file only when every cell ran: a failed run leaves it byte for byte
as it was. Every write is atomic (a temporary file in the same folder, flushed to disk, then
renamed over the notebook), so an interrupted write never leaves half a notebook. ``check`` is what the tests use: committed notebooks must have been run top to
bottom at cpu or gpu scale, carry no errors and no absolute local paths, use the ``python3``
kernel, and start with the book's setup cell.

``run`` also turns every tqdm progress bar into one line of plain text holding the bar's final
state (see :func:`progress_bars_to_text`): a saved widget bar shows only its *initial* state
without the widget bundle (4 MB of JavaScript), and a text bar on stderr shows in red. ``text-bars``
does the same to committed notebooks without running them, and ``check --text-bars`` reports any
widget bar left.

The Colab setup cell installs llmbook from :data:`REPOSITORY` at :data:`REF`. These two constants
are the one place to change them: ``sync-setup`` rewrites every notebook's setup cell from them,
and the tests check that ``_config.yml`` and the README agree.
"""

from __future__ import annotations

import argparse
import base64
import bisect
import binascii
import contextlib
import os
import re
import stat
import sys
import tempfile
import time
import warnings
from html import unescape
from pathlib import Path
from typing import Any, Sequence

import nbformat

from llmbook.checks import require_int

REPOSITORY = "llmbook/llmbook"
"""GitHub ``owner/name`` of the book."""
REF = "main"
"""Branch or tag that Colab readers install llmbook from and that launch buttons open."""

STAMP_KEY = "llmbook"
STAMP_FIELDS = ("scale", "device", "python", "torch", "transformers", "llmbook", "date")
KERNEL_NAME = "python3"


def setup_cell_source() -> str:
    """The first code cell of every notebook: installs llmbook on Colab, does nothing elsewhere."""
    return (
        "# Setup: installs llmbook on Colab; elsewhere it is already installed.\n"
        "import sys\n"
        "\n"
        'IN_COLAB = "google.colab" in sys.modules\n'
        "if IN_COLAB:\n"
        f'    %pip install -q "llmbook @ git+https://github.com/{REPOSITORY}@{REF}"\n'
        "\n"
        "from llmbook.runtime import format_report\n"
        "\n"
        "print(format_report())"
    )


def colab_url(notebook: str) -> str:
    """The Colab link that opens ``notebook`` (a path such as ``notebooks/00_getting_started.ipynb``)."""
    return f"https://colab.research.google.com/github/{REPOSITORY}/blob/{REF}/{notebook}"


# Absolute local paths that must never appear in committed outputs: home and temp folders,
# virtualenvs and site-packages, Colab's /content, Windows drives.
_LOCAL_PATH = re.compile(
    r"(?<![\w.:/])(/home/|/root/|/Users/|/tmp/|/var/folders/|/work/|/content/|/opt/conda|/usr/local/lib/python)"
    r"|site-packages|dist-packages|\b[A-Z]:\\\\?[A-Za-z]"
)


# The book's text column is about 688 px wide (Jupyter Book's theme at a 1280-px window). A figure wider
# than this is shown at less than 55 % of its size, and 10-pt labels become unreadably small; at the
# book style's 110 dpi it corresponds to a figure about 11 inches wide (figsize), so 9 is a safe maximum.
MAX_FIGURE_PIXELS = 1250


def png_size(encoded: str | list[str]) -> tuple[int, int] | None:
    """Width and height of a base64-encoded PNG, read from its header; ``None`` if it is not a PNG."""
    text = "".join(encoded) if isinstance(encoded, list) else encoded
    try:
        header = base64.b64decode("".join(text[:64].split())[:44])
    except (binascii.Error, ValueError):
        return None
    if len(header) < 24 or header[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def _output_texts(output: dict) -> list[str]:
    texts = []
    if "text" in output:
        texts.append("".join(output["text"]) if isinstance(output["text"], list) else output["text"])
    for mime, value in output.get("data", {}).items():
        if mime.startswith("text/") or mime.endswith("json"):
            texts.append(value if isinstance(value, str) else "".join(map(str, value)) if isinstance(value, list) else str(value))
    if output.get("output_type") == "error":
        texts.extend(output.get("traceback", []))
    return texts


def check_notebook(path: str | Path) -> list[str]:
    """Problems that keep a committed notebook out of the book; an empty list means it is fine."""
    path = Path(path)
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:  # unreadable JSON is a problem to report, not a crash
        return [f"{path.name}: cannot be read as a notebook ({exc})"]
    problems = []
    kernel = nb.metadata.get("kernelspec", {}).get("name")
    if kernel != KERNEL_NAME:
        problems.append(f"{path.name}: kernelspec is {kernel!r}, expected {KERNEL_NAME!r}")
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    if not code_cells:
        return problems + [f"{path.name}: has no code cells"]
    if code_cells[0].source.strip() != setup_cell_source():
        problems.append(f"{path.name}: the first code cell is not the book's setup cell (run sync-setup)")
    counts = [c.execution_count for c in code_cells if c.source.strip()]
    if any(n is None for n in counts):
        problems.append(f"{path.name}: {sum(n is None for n in counts)} code cells were not executed")
    elif counts != list(range(1, len(counts) + 1)):
        problems.append(f"{path.name}: cells were not executed once, top to bottom (execution counts {counts[:8]}...)")
    if not any(c.get("outputs") for c in code_cells):
        problems.append(f"{path.name}: committed without outputs")
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                problems.append(f"{path.name}: cell {index} has an error output ({output.get('ename')})")
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                text = "".join(output.get("text", ""))
                if "Traceback" in text:
                    problems.append(f"{path.name}: cell {index} printed an error to stderr")
            size = png_size(output.get("data", {}).get("image/png", ""))
            if size and size[0] > MAX_FIGURE_PIXELS:
                problems.append(
                    f"{path.name}: cell {index} has a figure {size[0]} px wide, shown below 55 % of its size in the "
                    f"book's column, where its labels become too small; make it at most 9 inches wide (figsize)"
                )
            for text in _output_texts(output):
                match = _LOCAL_PATH.search(text)
                if match:
                    start = max(0, match.start() - 30)
                    problems.append(
                        f"{path.name}: cell {index} output contains a local path: ...{text[start:match.end() + 30]!r}"
                    )
                    break
    stamp = nb.metadata.get(STAMP_KEY)
    if not isinstance(stamp, dict) or any(field not in stamp for field in STAMP_FIELDS):
        problems.append(f"{path.name}: no complete provenance stamp in metadata.{STAMP_KEY} (run it with `run`)")
    elif stamp["scale"] not in ("cpu", "gpu"):
        problems.append(f"{path.name}: outputs were produced at scale {stamp['scale']!r}; commit a cpu or gpu run")
    return problems


# A decimal (0.293, 29.3, −0.013, 1,234.5) or a whole percentage (75 %) in the prose.
_PROSE_NUMBER = re.compile(r"(?<![\w.])[−+-]?\d[\d,]*(?:\.\d+(?![\d.])|(?= ?%))")
# What may precede a section number such as §4.1, "section 2.3" or "### 1.2": not a measured value.
_SECTION_PREFIX = re.compile(r"(§|[Ss]ections? |#+ |[Cc]hapter |[Ss]ections? \d+\.\d+–)$")
_SECTION_NUMBER = re.compile(r"[1-9]\d?\.\d{1,2}(\.\d{1,2})?")
_PRINTED_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _printed_values(nb: nbformat.NotebookNode) -> list[float]:
    """Every number in the outputs and code cells of ``nb``, sorted (thousands separators removed)."""
    texts = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            texts.append(cell.source)  # a constant set in code may be quoted in the text
            for output in cell.get("outputs", []):
                texts.extend(_output_texts(output))
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", unescape("\n".join(texts)))
    values = set()
    for match in _PRINTED_NUMBER.finditer(text):
        try:
            values.add(float(match.group()))
        except (ValueError, OverflowError):
            continue
    return sorted(values)


def _is_printed(token: str, values: list[float]) -> bool:
    """Whether some value rounds to ``token`` at its precision, as it is or as a percentage or fraction."""
    digits = token.replace("−", "").lstrip("+-").replace(",", "")
    decimals = len(digits.partition(".")[2])
    target = float(digits)
    tolerance = 0.5 * 10.0**-decimals + 1e-9
    for scale in (1.0, 100.0, 0.01):  # 29.3 % may be printed as 0.293, and 0.293 as 29.3%
        low = bisect.bisect_left(values, (target - tolerance) / scale)
        if low < len(values) and values[low] * scale <= target + tolerance:
            return True
    return False


def unprinted_numbers(path: str | Path) -> list[tuple[int, str, str]]:
    """Numbers in a notebook's prose that none of its outputs prints: ``(cell index, number, context)``.

    The book's rule is that prose states what is printed, so after a re-run every decimal in the
    markdown (and every whole percentage) should be an output rounded to the prose's precision,
    possibly as a percentage of a printed fraction or the other way round; numbers set in code
    cells count as printed. Section numbers (§4.1, "section 2.3", "### 1.2") are skipped. What is
    left is either a stale number or one the text derives or cites (a difference of two printed
    values, a datasheet figure), which a reader of the list has to judge.
    """
    nb = read_notebook(path)
    values = _printed_values(nb)
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        for match in _PROSE_NUMBER.finditer(cell.source):
            token = match.group()
            before = cell.source[max(0, match.start() - 12):match.start()]
            if _SECTION_NUMBER.fullmatch(token) and _SECTION_PREFIX.search(before):
                continue
            if not _is_printed(token, values):
                context = cell.source[max(0, match.start() - 60):match.end() + 30].replace("\n", " ")
                found.append((index, token, context))
    return found


def read_notebook(path: str | Path) -> nbformat.NotebookNode:
    """Read and validate the notebook at ``path``, with one clear error for anything else.

    ``FileNotFoundError`` if nothing is there; ``ValueError`` for a folder, a file that is not an
    ``.ipynb``, or one whose content is not a valid notebook.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No notebook at {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a notebook: pass the .ipynb files in it")
    if path.suffix != ".ipynb":
        raise ValueError(f"{path} is not a notebook: expected an .ipynb file")
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except Exception as exc:  # bad JSON, a JSON file that is no notebook, bad encoding: all one problem
        summary = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{path} cannot be read as a notebook ({summary[:120]})") from None
    return nb


def write_notebook(nb: nbformat.NotebookNode, path: str | Path) -> None:
    """Write ``nb`` to ``path`` atomically, as ``nbformat.write`` formats it.

    The text goes to a temporary file in the same folder, is flushed and fsynced, and then replaces
    ``path`` in one ``os.replace``: a failure at any point leaves the previous file intact. The
    file keeps its permissions.
    """
    path = Path(path)
    text = nbformat.writes(nb)
    if not text.endswith("\n"):
        text += "\n"
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)  # mkstemp creates it readable by its owner only
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


# --- progress bars as text ------------------------------------------------------------------------

WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"
_MODEL_REFERENCE = re.compile(r"IPY_MODEL_([0-9A-Za-z_-]+)")
# tqdm's own text bar (tqdm.std.Bar with its default width and Unicode charset).
_BAR_WIDTH = 10
_BAR_CHARSET = " " + "".join(map(chr, range(0x258F, 0x2587, -1)))
# A line that tqdm printed as a text bar ends in its times and rate: "desc:  40%|████      | 4/10
# [00:01<00:01, 3.9it/s]", "[04:35<00:00,  3.13it/s, loss=0.16]", "[00:09, 2.4batch/s]" (no total),
# "[00:00<?, ?it/s]" (not started), "[1:02:03<20:00, 744.60s/it]".
_TEXT_BAR_LINE = re.compile(
    r"\[(?:\d+:)?\d+:\d\d(?:<(?:(?:\d+:)?\d+:\d\d|\?))?, *(?:\?|[\d.]+[kMGTPEZY]?)(?:\w*/s|s/\w+)(?:, [^\]]*)?\]\s*$"
)


def _text_bar(fraction: float) -> str:
    """The bar tqdm prints for ``fraction`` done (``tqdm.std.Bar`` at its default width)."""
    fraction = min(max(fraction, 0.0), 1.0)
    steps = len(_BAR_CHARSET) - 1
    full, partial = divmod(int(fraction * _BAR_WIDTH * steps), steps)
    bar = _BAR_CHARSET[-1] * full
    if full < _BAR_WIDTH:
        bar += _BAR_CHARSET[partial] + _BAR_CHARSET[0] * (_BAR_WIDTH - full - 1)
    return bar


def _html_text(value: Any) -> str:
    """The text of a tqdm HTML label: tqdm escapes it and writes spaces as U+2007 (figure space)."""
    return unescape(str(value or "")).replace("\u2007", " ")


def _widget_models(nb: nbformat.NotebookNode) -> dict[str, Any]:
    widgets = nb.metadata.get("widgets")
    saved = widgets.get(WIDGET_STATE_MIME) if isinstance(widgets, dict) else None
    models = saved.get("state") if isinstance(saved, dict) else None
    return models if isinstance(models, dict) else {}


def _model_state(models: dict[str, Any], model_id: str) -> dict[str, Any] | None:
    model = models.get(model_id)
    state = model.get("state") if isinstance(model, dict) else None
    return state if isinstance(state, dict) else None


def _model_name(models: dict[str, Any], model_id: str) -> str | None:
    model = models.get(model_id)
    return model.get("model_name") if isinstance(model, dict) else None


def _referenced_id(reference: Any) -> str | None:
    match = _MODEL_REFERENCE.fullmatch(reference) if isinstance(reference, str) else None
    return match.group(1) if match else None


def _tqdm_bar_parts(models: dict[str, Any], model_id: str) -> tuple[dict, dict, dict, dict] | None:
    """The states (box, left label, progress, right label) if ``model_id`` is a tqdm bar, else None.

    tqdm.notebook draws a bar as an HBox of exactly three widgets: an HTML label (description and
    percentage), a FloatProgress and an HTML label (counts, times, rate). That structure, not the
    text, is what identifies one.
    """
    box = _model_state(models, model_id)
    if box is None or _model_name(models, model_id) != "HBoxModel":
        return None
    children = [_referenced_id(child) for child in box.get("children", [])]
    if len(children) != 3 or None in children:
        return None
    names = [_model_name(models, child) for child in children]
    if names != ["HTMLModel", "FloatProgressModel", "HTMLModel"]:
        return None
    left, progress, right = (_model_state(models, child) for child in children)
    if left is None or progress is None or right is None:
        return None
    return box, left, progress, right


def _bar_is_hidden(models: dict[str, Any], box: dict[str, Any]) -> bool:
    """True for a bar that tqdm hid when it closed (``leave=False``): Jupyter does not show it."""
    layout_id = _referenced_id(box.get("layout"))
    layout = _model_state(models, layout_id) if layout_id else None
    return box.get("visible") is False or (layout or {}).get("visibility") == "hidden"


def _tqdm_bar_line(left: dict[str, Any], progress: dict[str, Any], right: dict[str, Any]) -> str:
    """The line tqdm would have printed for the bar's final state."""
    description = _html_text(left.get("value"))
    stats = _html_text(right.get("value"))
    if not description:  # no total: tqdm printed no bar, only "12it [00:01, 9.5it/s]"
        return stats.strip()
    try:
        low, high, value = (float(progress.get(key) or 0.0) for key in ("min", "max", "value"))
        fraction = (value - low) / (high - low) if high > low else 0.0
    except (TypeError, ValueError):
        fraction = 0.0
    return f"{description}|{_text_bar(fraction)}|{stats}".rstrip()


def _references(value: Any, found: set[str]) -> None:
    """Add to ``found`` every model id that ``value`` (a widget state, or an output) refers to."""
    if isinstance(value, str):
        model_id = _referenced_id(value)
        if model_id:
            found.add(model_id)
    elif isinstance(value, dict):
        view = value.get(WIDGET_VIEW_MIME)
        if isinstance(view, dict) and isinstance(view.get("model_id"), str):
            found.add(view["model_id"])
        for item in value.values():
            _references(item, found)
    elif isinstance(value, list):
        for item in value:
            _references(item, found)


def _reachable(models: dict[str, Any], roots: set[str]) -> set[str]:
    """Every model reachable from ``roots`` through ``IPY_MODEL_`` references (children, layout, style...)."""
    seen: set[str] = set()
    pending = list(roots)
    while pending:
        model_id = pending.pop()
        if model_id in seen:
            continue
        seen.add(model_id)
        found: set[str] = set()
        _references(_model_state(models, model_id), found)
        pending.extend(found - seen)
    return seen


def _stream_text(output: dict[str, Any]) -> str:
    text = output.get("text", "")
    return "".join(text) if isinstance(text, list) else str(text)


def _final_lines(text: str) -> list[str]:
    """The lines a terminal shows for ``text``: each line is what follows its last carriage return."""
    return [line.rsplit("\r", 1)[-1] for line in text.split("\n")]


def _stderr_bars_as_stdout(output: dict[str, Any]) -> nbformat.NotebookNode | None:
    """A stdout stream with the final line of each tqdm text bar in ``output``, or None.

    Only a stderr stream made of nothing but tqdm bar lines is converted; one that mixes bars
    with warnings or other messages is left as it is, since those belong on stderr.
    """
    if output.get("output_type") != "stream" or output.get("name") != "stderr":
        return None
    lines = [line for line in _final_lines(_stream_text(output)) if line.strip()]
    if not lines or not all(_TEXT_BAR_LINE.search(line) for line in lines):
        return None
    return nbformat.v4.new_output("stream", name="stdout", text="".join(line.rstrip() + "\n" for line in lines))


def _merge_bar_streams(outputs: list, converted: list[int]) -> list:
    """Merge each converted bar's stdout line into the stdout streams right next to it."""
    marked = {id(outputs[i]) for i in converted}
    merged: list = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if (
            previous is not None
            and output.get("output_type") == "stream" == previous.get("output_type")
            and output.get("name") == "stdout" == previous.get("name")
            and (id(output) in marked or id(previous) in marked)
            and _stream_text(previous).endswith("\n")
        ):
            text = _stream_text(previous) + _stream_text(output)
            merged[-1] = nbformat.v4.new_output("stream", name="stdout", text=text)
            marked.add(id(merged[-1]))
            continue
        merged.append(output)
    return merged


def progress_bars_to_text(nb: nbformat.NotebookNode) -> int:
    """Replace every tqdm progress bar in ``nb`` (in memory) by one line of text; returns how many.

    A bar that tqdm.auto drew as a widget is saved as a widget view whose ``text/plain`` is only
    its *initial* state ("0%| | 0/38"), while its final state sits in ``metadata.widgets``. Each
    such view becomes a stdout stream holding the line tqdm would print for the final state
    (``desc: 100%|██████████| 38/38 [00:04<00:00, 8.20it/s]``), merged with the stdout text right
    next to it; a bar that tqdm hid on closing (``leave=False``) is removed, as Jupyter shows
    nothing there. A stderr stream made only of tqdm text bars becomes their final lines on stdout.
    When a bar was converted, widget models that no remaining output uses are then dropped from
    ``metadata.widgets`` (the whole key when none is left), so a page whose only widgets were bars
    needs no widget bundle. Real widgets (sliders, ``interact``, boxes of controls, links between
    them) and their state are kept.

    A bar is recognised by its saved structure (an HBox of HTML, FloatProgress and HTML). A widget
    view whose state is missing but whose ``text/plain`` is a tqdm bar is replaced by that text,
    with a ``UserWarning`` naming the cell, since its final state is lost. Running this twice
    changes nothing the second time.
    """
    models = _widget_models(nb)
    bar_models: set[str] = set()
    converted = 0
    without_state = []
    for index, cell in enumerate(nb.cells):
        outputs = cell.get("outputs")
        if not outputs:
            continue
        new_outputs = []
        new_bars = []
        for output in outputs:
            view = output.get("data", {}).get(WIDGET_VIEW_MIME) if isinstance(output.get("data"), dict) else None
            stderr_bars = _stderr_bars_as_stdout(output)
            if stderr_bars is not None:
                new_bars.append(len(new_outputs))
                new_outputs.append(stderr_bars)
                converted += 1
                continue
            model_id = view.get("model_id") if isinstance(view, dict) else None
            if not isinstance(model_id, str):
                new_outputs.append(output)
                continue
            parts = _tqdm_bar_parts(models, model_id)
            if parts is not None:
                box, left, progress, right = parts
                bar_models.add(model_id)
                converted += 1
                if not _bar_is_hidden(models, box):
                    new_bars.append(len(new_outputs))
                    line = _tqdm_bar_line(left, progress, right)
                    new_outputs.append(nbformat.v4.new_output("stream", name="stdout", text=line + "\n"))
                continue
            plain = output.get("data", {}).get("text/plain", "")
            plain = "".join(plain) if isinstance(plain, list) else str(plain)
            if model_id not in models and _TEXT_BAR_LINE.search(plain.strip()):
                without_state.append(index)
                converted += 1
                new_bars.append(len(new_outputs))
                new_outputs.append(nbformat.v4.new_output("stream", name="stdout", text=plain.strip() + "\n"))
                continue
            new_outputs.append(output)
        if new_bars:
            cell.outputs = _merge_bar_streams(new_outputs, new_bars)
    if without_state:
        warnings.warn(
            f"{len(without_state)} progress bar(s) had no saved widget state (cells {sorted(set(without_state))}): "
            "they now show their initial text; re-run the notebook to get their final state",
            UserWarning,
            stacklevel=2,
        )
    if bar_models:
        _drop_unused_models(nb, models)
    return converted


def _drop_unused_models(nb: nbformat.NotebookNode, models: dict[str, Any]) -> None:
    """Remove the widget models that no output shows, and ``metadata.widgets`` if none is left.

    A model is kept when an output shows it, when a shown model refers to it (children, layout,
    style...), or when it refers to a shown model itself (a ``jslink`` between two sliders).
    """
    shown: set[str] = set()
    for cell in nb.cells:
        _references(cell.get("outputs", []), shown)
    keep = _reachable(models, shown & set(models))
    changed = True
    while changed:  # links and other models that act on shown widgets without being shown
        changed = False
        for model_id in set(models) - keep:
            found: set[str] = set()
            _references(_model_state(models, model_id), found)
            if found & keep:
                keep |= _reachable(models, {model_id})
                changed = True
    for model_id in set(models) - keep:
        del models[model_id]
    if not models:
        nb.metadata.pop("widgets", None)


def widget_bar_problems(path: str | Path) -> list[str]:
    """Problems for every tqdm widget bar still saved in the notebook at ``path`` (empty when none).

    A separate check (``check --text-bars``), since notebooks executed before ``run`` converted bars
    still contain them: ``text-bars`` fixes a committed notebook without running it.
    """
    path = Path(path)
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:
        return [f"{path.name}: cannot be read as a notebook ({exc})"]
    models = _widget_models(nb)
    problems = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            data = output.get("data")
            view = data.get(WIDGET_VIEW_MIME) if isinstance(data, dict) else None
            model_id = view.get("model_id") if isinstance(view, dict) else None
            if isinstance(model_id, str) and _tqdm_bar_parts(models, model_id) is not None:
                problems.append(
                    f"{path.name}: cell {index} has a tqdm widget progress bar"
                    " (run `python -m llmbook.notebooks text-bars` on it)"
                )
                break
    return problems


def text_bars_in_file(path: str | Path) -> int:
    """Apply :func:`progress_bars_to_text` to the notebook file at ``path``; returns how many bars.

    The file is rewritten (atomically) only when it had a bar: otherwise it stays byte for byte.
    """
    nb = read_notebook(path)
    count = progress_bars_to_text(nb)
    if count:
        write_notebook(nb, path)
    return count


def _sync_setup(nb: nbformat.NotebookNode) -> bool:
    """Make the first code cell of ``nb`` (in memory) the canonical setup cell; True if changed."""
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    canonical = setup_cell_source()
    if code_cells and code_cells[0].source.strip() == canonical:
        return False
    if code_cells and "IN_COLAB" in code_cells[0].source:
        code_cells[0].source = canonical
    else:
        first_code = nb.cells.index(code_cells[0]) if code_cells else len(nb.cells)
        nb.cells.insert(first_code, nbformat.v4.new_code_cell(canonical))
    return True


def sync_setup_cell(path: str | Path) -> bool:
    """Make the first code cell the canonical setup cell (inserting one if needed); True if changed."""
    nb = read_notebook(path)
    if not _sync_setup(nb):
        return False
    write_notebook(nb, path)
    return True


def run_notebook(path: str | Path, scale: str, timeout: int = 1800) -> dict[str, str]:
    """Execute ``path`` in place at ``scale`` (its folder as working directory) and stamp it.

    Progress bars in the outputs become lines of text (:func:`progress_bars_to_text`). Returns the stamp. The setup cell is synced (see :func:`sync_setup_cell`) in the executed copy.
    Raises ``nbclient.exceptions.CellExecutionError`` if a cell fails (or another nbclient error if
    the kernel dies or a cell times out); the notebook file is then left byte for byte untouched.
    Raises ``ValueError`` if the result fails :func:`check_notebook`: the executed notebook is still
    written, so that the problem can be inspected. ``timeout`` is the limit per cell, in seconds.
    """
    from nbclient import NotebookClient

    from llmbook.runtime import SCALE_ENV_VAR, SCALES, environment_report

    path = Path(path)
    if not isinstance(scale, str) or scale not in SCALES:
        raise ValueError(f"Unknown scale {scale!r}: use one of {', '.join(SCALES)}")
    timeout = require_int("timeout", timeout, minimum=1)
    nb = read_notebook(path)
    _sync_setup(nb)
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python 3", "language": "python"}
    previous = os.environ.get(SCALE_ENV_VAR)
    os.environ[SCALE_ENV_VAR] = scale  # the kernel inherits this environment
    started = time.perf_counter()
    try:
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name=KERNEL_NAME,
            record_timing=False,
            resources={"metadata": {"path": str(path.parent.resolve())}},
        )
        client.execute()
        stamp = environment_report()
    finally:
        if previous is None:
            os.environ.pop(SCALE_ENV_VAR, None)
        else:
            os.environ[SCALE_ENV_VAR] = previous
    stamp["executed_in"] = f"{time.perf_counter() - started:.0f} s"
    progress_bars_to_text(nb)  # final states as text, and no widget bundle just for bars
    nb.metadata[STAMP_KEY] = stamp
    write_notebook(nb, path)
    problems = check_notebook(path)
    if scale == "smoke":  # a smoke run is never committed; only report real problems
        problems = [p for p in problems if "scale" not in p]
    if problems:
        raise ValueError("The executed notebook has problems:\n  " + "\n  ".join(problems))
    return stamp


def _positive_seconds(text: str) -> int:
    """argparse type of ``--timeout``: a whole number of seconds, at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of seconds, at least 1, got {text!r}")
    return value


def _execution_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean "the notebook did not run": a failing cell, a timeout, a dead or missing kernel."""
    from jupyter_client.kernelspec import NoSuchKernel
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    return CellExecutionError, CellTimeoutError, DeadKernelError, NoSuchKernel


def main(argv: Sequence[str] | None = None) -> int:
    """The command line. Returns the exit status: 0 when everything worked, 1 otherwise.

    Problems with the files given (missing, not a notebook, a failed run) are printed as one line
    each on stderr rather than raised, and ``run``, ``sync-setup`` and ``text-bars`` check every
    file before touching any.
    """
    parser = argparse.ArgumentParser(prog="python -m llmbook.notebooks", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="execute notebooks in place at a scale and stamp them")
    run.add_argument("--scale", required=True, choices=["smoke", "cpu", "gpu"])
    run.add_argument("--timeout", type=_positive_seconds, default=1800, help="seconds per cell (default 1800)")
    run.add_argument("notebooks", nargs="+", type=Path)
    check = commands.add_parser("check", help="check committed notebooks (outputs, stamp, setup cell, paths)")
    check.add_argument(
        "--text-bars", action="store_true", help="also report tqdm progress bars still saved as widgets"
    )
    check.add_argument("notebooks", nargs="+", type=Path)
    sync = commands.add_parser("sync-setup", help="rewrite every notebook's setup cell from REPOSITORY/REF")
    sync.add_argument("notebooks", nargs="+", type=Path)
    bars = commands.add_parser(
        "text-bars", help="replace saved tqdm widget progress bars by their final state as text, in place"
    )
    bars.add_argument("notebooks", nargs="+", type=Path)
    args = parser.parse_args(argv)

    if args.command == "check":
        problems = [p for path in args.notebooks for p in check_notebook(path)]
        if args.text_bars:
            problems += [p for path in args.notebooks for p in widget_bar_problems(path)]
        print("\n".join(problems) if problems else f"{len(args.notebooks)} notebook(s) OK")
        return 1 if problems else 0

    # Check every file first: a typo in the last name must not surface after an hour of running.
    unreadable = []
    for path in args.notebooks:
        try:
            read_notebook(path)
        except (FileNotFoundError, ValueError) as exc:
            unreadable.append(str(exc))
    if unreadable:
        print("\n".join(f"error: {line}" for line in unreadable), file=sys.stderr)
        return 1

    if args.command == "run":
        failed = 0
        for path in args.notebooks:
            try:
                stamp = run_notebook(path, args.scale, args.timeout)
            except _execution_errors() as exc:
                failed += 1
                print(f"error: {path} did not run to the end; the file was left unchanged.\n{exc}", file=sys.stderr)
                continue
            except ValueError as exc:  # ran, but the result fails check_notebook
                failed += 1
                print(f"error: {path}: {exc}", file=sys.stderr)
                continue
            print(f"{path}: executed at scale {stamp['scale']} on {stamp['device']} in {stamp['executed_in']}")
        return 1 if failed else 0

    if args.command == "text-bars":
        for path in args.notebooks:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                count = text_bars_in_file(path)
            print(f"{path}: {count} progress bar(s) as text" if count else f"{path}: no progress bars, unchanged")
            for warning in caught:
                print(f"warning: {path}: {warning.message}", file=sys.stderr)
        return 0

    changed = [path for path in args.notebooks if sync_setup_cell(path)]
    print(f"updated {len(changed)} of {len(args.notebooks)} setup cell(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
