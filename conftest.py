"""Repository-wide pytest setup (tests/conftest.py holds the unit tests' fixtures).

1. Notebooks executed by nbmake (`pytest`, or `pytest --nbmake notebooks/`) run at smoke scale unless
   LLMBOOK_SCALE is set explicitly: without this a laptop would silently run every chapter at cpu scale
   (hours), and a GPU machine at gpu scale. The kernels nbmake starts inherit this process's environment,
   which is set for the duration of each notebook's test only.
2. After nbmake ran, each passed notebook's duration is written to `_build/smoke_times.json`, from which
   the book's preface builds its "how long each chapter takes" table (_ext/llmbook_book.py).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent
SMOKE_TIMES = REPO_ROOT / "_build" / "smoke_times.json"
DEFAULT_NOTEBOOK_SCALE = "smoke"


def default_notebook_scale(environ, nbmake_enabled: bool) -> str | None:
    """Set LLMBOOK_SCALE to smoke in ``environ`` when nbmake runs and no scale was given; return the scale used.

    An explicit non-empty value always wins; without nbmake nothing changes.
    """
    if not nbmake_enabled:
        return environ.get("LLMBOOK_SCALE")
    if not environ.get("LLMBOOK_SCALE"):
        environ["LLMBOOK_SCALE"] = DEFAULT_NOTEBOOK_SCALE
    return environ["LLMBOOK_SCALE"]


def pytest_configure(config):
    nbmake_enabled = bool(getattr(config.option, "nbmake", False))
    # Computed on a copy: the unit tests in the same run never see the notebooks' default.
    config._llmbook_notebook_scale = default_notebook_scale(dict(os.environ), nbmake_enabled)


def _is_notebook(item) -> bool:
    return str(getattr(item, "path", "")).endswith(".ipynb")


def pytest_runtest_setup(item):
    # nbmake starts each notebook's kernel inside the test, with this process's environment.
    if _is_notebook(item) and item.config._llmbook_notebook_scale:
        item._llmbook_previous_scale = os.environ.get("LLMBOOK_SCALE")
        os.environ["LLMBOOK_SCALE"] = item.config._llmbook_notebook_scale


def pytest_runtest_teardown(item):
    if hasattr(item, "_llmbook_previous_scale"):
        if item._llmbook_previous_scale is None:
            os.environ.pop("LLMBOOK_SCALE", None)
        else:
            os.environ["LLMBOOK_SCALE"] = item._llmbook_previous_scale


def pytest_report_header(config):
    scale = getattr(config, "_llmbook_notebook_scale", None)
    if scale:
        return f"llmbook: notebooks run with LLMBOOK_SCALE={scale}"
    return None


def pytest_runtest_logreport(report):
    location = report.nodeid.split("::")[0]
    if report.when == "call" and report.passed and location.endswith(".ipynb"):
        _times_of_this_session[location] = round(report.duration, 1)


_times_of_this_session: dict[str, float] = {}


def write_smoke_times(times: dict[str, float], path: Path = SMOKE_TIMES) -> None:
    """Merge ``times`` (notebook path -> seconds) into the JSON at ``path``, written atomically."""
    data = {"scale": DEFAULT_NOTEBOOK_SCALE, "notebooks": {}}
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            data.setdefault("notebooks", {})
        except ValueError:
            pass
    data["notebooks"].update(times)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".smoke_times-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def pytest_sessionfinish(session, exitstatus):
    # Only smoke runs feed the table (a cpu run's time is in the notebook's own stamp).
    if _times_of_this_session and getattr(session.config, "_llmbook_notebook_scale", None) == "smoke":
        write_smoke_times(dict(_times_of_this_session))
