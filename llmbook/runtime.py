"""Where and how the book's code runs: the scale switch, the device, seeding, mixed precision and
an environment report.

Taught in the getting-started chapter (``notebooks/00_getting_started.ipynb``) and used by every
chapter after it.

The scale switch
----------------
Every notebook runs the same code at three sizes, chosen by one environment variable::

    LLMBOOK_SCALE=smoke   # a few seconds per notebook: the CI checks that the code runs
    LLMBOOK_SCALE=cpu     # meaningful results on a laptop in minutes
    LLMBOOK_SCALE=gpu     # the full-size run, e.g. on a Colab GPU

When the variable is unset the scale is ``gpu`` if CUDA is available and ``cpu`` otherwise.
:func:`get_scale` is the only place that reads the variable; notebooks pick their sizes with
:func:`by_scale`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import random
import sys
from importlib import metadata
from pathlib import Path
from typing import Iterator, TypeVar

import numpy as np
import torch

SCALES: tuple[str, ...] = ("smoke", "cpu", "gpu")
SCALE_ENV_VAR = "LLMBOOK_SCALE"
RUN_DIR_ENV_VAR = "LLMBOOK_RUN_DIR"

T = TypeVar("T")


def get_scale() -> str:
    """Return the current scale: ``smoke``, ``cpu`` or ``gpu``.

    Reads ``LLMBOOK_SCALE`` (case and surrounding spaces ignored). Unset or empty means ``gpu``
    when CUDA is available and ``cpu`` otherwise. Any other value raises ``ValueError``.
    """
    raw = os.environ.get(SCALE_ENV_VAR, "").strip().lower()
    if not raw:
        return "gpu" if torch.cuda.is_available() else "cpu"
    if raw not in SCALES:
        raise ValueError(
            f"{SCALE_ENV_VAR}={os.environ[SCALE_ENV_VAR]!r} is not a known scale. "
            f"Use one of {', '.join(SCALES)} (or unset it to pick gpu/cpu automatically)."
        )
    return raw


def by_scale(*, smoke: T, cpu: T, gpu: T) -> T:
    """Pick the value for the current scale, e.g. ``steps = by_scale(smoke=20, cpu=2_000, gpu=20_000)``.

    All three values are required so that every notebook states its size at every scale.
    """
    return {"smoke": smoke, "cpu": cpu, "gpu": gpu}[get_scale()]


def get_device(prefer: str | None = None) -> torch.device:
    """Return the best available device: CUDA, then Apple's MPS, then the CPU.

    ``prefer`` forces one (``"cpu"``, ``"cuda"``, ``"mps"``); asking for one that is not
    available raises ``RuntimeError`` instead of failing later inside a kernel.
    """
    if prefer is not None:
        kind = torch.device(prefer).type
        available = {
            "cpu": True,
            "cuda": torch.cuda.is_available(),
            "mps": _mps_available(),
        }
        if kind not in available:
            raise ValueError(f"Unknown device {prefer!r}: use 'cpu', 'cuda' or 'mps'.")
        if not available[kind]:
            raise RuntimeError(f"Device {prefer!r} was requested but is not available on this machine.")
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def seed_everything(seed: int = 0) -> int:
    """Seed Python's ``random``, NumPy and PyTorch (all devices) so that a run can be repeated.

    Returns the seed so a notebook can print what it used. GPU kernels may still be
    nondeterministic; the book says so where it matters.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return seed


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The reduced-precision dtype :func:`autocast` uses on ``device``, or ``None`` for full precision.

    bf16 on CUDA GPUs that support it (Ampere and newer), fp16 on older CUDA GPUs, and none on
    CPU or MPS, where mixed precision is either slow or not worth the numerical risk for the book.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def autocast(device: torch.device | str) -> Iterator[None]:
    """Mixed-precision context: ``torch.autocast`` with :func:`autocast_dtype` on CUDA, a no-op elsewhere.

    fp16 (unlike bf16) also needs a gradient scaler during training; the training chapter uses
    ``torch.amp.GradScaler`` for that case.
    """
    device = torch.device(device)
    dtype = autocast_dtype(device)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def run_dir(name: str) -> Path:
    """A folder for artefacts a notebook writes (checkpoints, logs): ``runs/<name>``, created if needed.

    ``runs/`` is relative to the working directory (the notebook's folder) and git-ignored;
    ``LLMBOOK_RUN_DIR`` moves it elsewhere. Artefacts never go into the tracked tree.
    """
    if not name or Path(name).name != name or name in {".", ".."}:
        raise ValueError(f"run_dir name must be a plain folder name, got {name!r}")
    base = Path(os.environ.get(RUN_DIR_ENV_VAR) or "runs")
    path = base / name
    path.mkdir(parents=True, exist_ok=True)
    return path


_REPORTED_PACKAGES = ("llmbook", "torch", "transformers", "numpy", "pandas", "matplotlib")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "mps":
        return "mps (Apple GPU)"
    return f"cpu ({os.cpu_count()} cores, {platform.machine()})"


def environment_report() -> dict[str, str]:
    """What is producing the outputs: scale, device, Python and library versions, and the UTC date.

    Printed by every notebook's setup and written into its metadata by
    ``python -m llmbook.notebooks run``. Contains no local paths.
    """
    device = get_device()
    report = {
        "scale": get_scale(),
        "device": _device_name(device),
        "python": platform.python_version(),
        "platform": "colab" if "google.colab" in sys.modules else platform.system().lower(),
    }
    report.update({pkg: _version(pkg) for pkg in _REPORTED_PACKAGES})
    report["date"] = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
    return report


def format_report(report: dict[str, str] | None = None) -> str:
    """The environment report as aligned ``key : value`` lines, for printing."""
    report = environment_report() if report is None else report
    width = max(len(k) for k in report)
    return "\n".join(f"{k:<{width}} : {v}" for k, v in report.items())
