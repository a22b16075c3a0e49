"""Executing, stamping and checking the book's notebooks.

Maintainer tooling (the book's contributing notes and the getting-started chapter explain it):

    python -m llmbook.notebooks run --scale cpu notebooks/00_getting_started.ipynb
    python -m llmbook.notebooks check notebooks/*.ipynb
    python -m llmbook.notebooks sync-setup notebooks/*.ipynb

``run`` executes a notebook in place at a chosen scale, with its own folder as the working
directory, and stamps ``metadata.llmbook`` with what produced the outputs (scale, device, library
versions, date). It writes the file only when every cell ran: a failed run leaves it byte for byte
as it was. Every write is atomic (a temporary file in the same folder, flushed to disk, then
renamed over the notebook), so an interrupted write never leaves half a notebook. ``check`` is what the tests use: committed notebooks must have been run top to
bottom at cpu or gpu scale, carry no errors and no absolute local paths, use the ``python3``
kernel, and start with the book's setup cell.

The Colab setup cell installs llmbook from :data:`REPOSITORY` at :data:`REF`. These two constants
are the one place to change them: ``sync-setup`` rewrites every notebook's setup cell from them,
and the tests check that ``_config.yml`` and the README agree.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

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

    Returns the stamp. The setup cell is synced (see :func:`sync_setup_cell`) in the executed copy.
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
    each on stderr rather than raised, and ``run`` and ``sync-setup`` check every file before
    touching any.
    """
    parser = argparse.ArgumentParser(prog="python -m llmbook.notebooks", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="execute notebooks in place at a scale and stamp them")
    run.add_argument("--scale", required=True, choices=["smoke", "cpu", "gpu"])
    run.add_argument("--timeout", type=_positive_seconds, default=1800, help="seconds per cell (default 1800)")
    run.add_argument("notebooks", nargs="+", type=Path)
    check = commands.add_parser("check", help="check committed notebooks (outputs, stamp, setup cell, paths)")
    check.add_argument("notebooks", nargs="+", type=Path)
    sync = commands.add_parser("sync-setup", help="rewrite every notebook's setup cell from REPOSITORY/REF")
    sync.add_argument("notebooks", nargs="+", type=Path)
    args = parser.parse_args(argv)

    if args.command == "check":
        problems = [p for path in args.notebooks for p in check_notebook(path)]
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

    changed = [path for path in args.notebooks if sync_setup_cell(path)]
    print(f"updated {len(changed)} of {len(args.notebooks)} setup cell(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
