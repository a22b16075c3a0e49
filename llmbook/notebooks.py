"""Executing, stamping and checking the book's notebooks.

Maintainer tooling (the book's contributing notes and the getting-started chapter explain it):

    python -m llmbook.notebooks run --scale cpu notebooks/00_getting_started.ipynb
    python -m llmbook.notebooks check notebooks/*.ipynb
    python -m llmbook.notebooks sync-setup notebooks/*.ipynb

``run`` executes a notebook in place at a chosen scale, with its own folder as the working
directory, and stamps ``metadata.llmbook`` with what produced the outputs (scale, device, library
versions, date). ``check`` is what the tests use: committed notebooks must have been run top to
bottom at cpu or gpu scale, carry no errors and no absolute local paths, use the ``python3``
kernel, and start with the book's setup cell.

The Colab setup cell installs llmbook from :data:`REPOSITORY` at :data:`REF`. These two constants
are the one place to change them: ``sync-setup`` rewrites every notebook's setup cell from them,
and the tests check that ``_config.yml`` and the README agree.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Sequence

import nbformat

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


def sync_setup_cell(path: str | Path) -> bool:
    """Make the first code cell the canonical setup cell (inserting one if needed); True if changed."""
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    canonical = setup_cell_source()
    if code_cells and code_cells[0].source.strip() == canonical:
        return False
    if code_cells and "IN_COLAB" in code_cells[0].source:
        code_cells[0].source = canonical
    else:
        first_code = nb.cells.index(code_cells[0]) if code_cells else len(nb.cells)
        nb.cells.insert(first_code, nbformat.v4.new_code_cell(canonical))
    nbformat.write(nb, path)
    return True


def run_notebook(path: str | Path, scale: str, timeout: int = 1800) -> dict[str, str]:
    """Execute ``path`` in place at ``scale`` (its folder as working directory) and stamp it.

    Returns the stamp. Raises ``nbclient.exceptions.CellExecutionError`` if a cell fails (the
    notebook file is then left untouched) and ``ValueError`` if the result fails :func:`check_notebook`.
    """
    from nbclient import NotebookClient

    from llmbook.runtime import SCALE_ENV_VAR, SCALES, environment_report

    path = Path(path)
    if scale not in SCALES:
        raise ValueError(f"Unknown scale {scale!r}: use one of {', '.join(SCALES)}")
    if not path.is_file():
        raise FileNotFoundError(f"No notebook at {path}")
    sync_setup_cell(path)
    nb = nbformat.read(path, as_version=4)
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
    nb.metadata[STAMP_KEY] = stamp
    nbformat.write(nb, path)
    problems = check_notebook(path)
    if scale == "smoke":  # a smoke run is never committed; only report real problems
        problems = [p for p in problems if "scale" not in p]
    if problems:
        raise ValueError("The executed notebook has problems:\n  " + "\n  ".join(problems))
    return stamp


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmbook.notebooks", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="execute notebooks in place at a scale and stamp them")
    run.add_argument("--scale", required=True, choices=["smoke", "cpu", "gpu"])
    run.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    run.add_argument("notebooks", nargs="+", type=Path)
    check = commands.add_parser("check", help="check committed notebooks (outputs, stamp, setup cell, paths)")
    check.add_argument("notebooks", nargs="+", type=Path)
    sync = commands.add_parser("sync-setup", help="rewrite every notebook's setup cell from REPOSITORY/REF")
    sync.add_argument("notebooks", nargs="+", type=Path)
    args = parser.parse_args(argv)

    if args.command == "run":
        for path in args.notebooks:
            stamp = run_notebook(path, args.scale, args.timeout)
            print(f"{path}: executed at scale {stamp['scale']} on {stamp['device']} in {stamp['executed_in']}")
        return 0
    if args.command == "check":
        problems = [p for path in args.notebooks for p in check_notebook(path)]
        print("\n".join(problems) if problems else f"{len(args.notebooks)} notebook(s) OK")
        return 1 if problems else 0
    changed = [path for path in args.notebooks if sync_setup_cell(path)]
    print(f"updated {len(changed)} of {len(args.notebooks)} setup cell(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
