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
import pickle
import platform
import random
import re
import socket
import sys
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, TypeVar

import numpy as np
import torch

from llmbook.checks import require_int

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


_DEVICE_KINDS = ("cpu", "cuda", "mps")


def _parse_device(device: torch.device | str, argument: str, *, book_kinds_only: bool = True) -> torch.device:
    """``device`` as a ``torch.device``: a ``torch.device`` or a name such as ``"cuda"``, ``" CUDA:1 "``.

    Names are case-insensitive and may carry spaces (as ``LLMBOOK_SCALE`` may). With
    ``book_kinds_only`` only the kinds the book supports (cpu, cuda, mps) are accepted, with an
    optional index; otherwise any device type PyTorch knows is.
    """
    if isinstance(device, torch.device):
        parsed = device
    elif isinstance(device, str):
        try:
            parsed = torch.device(device.strip().lower())
        except RuntimeError:  # torch's own message lists 20 backends the book never uses
            parsed = None
        if parsed is None:
            raise ValueError(
                f"Unknown device {device!r}: use 'cpu', 'cuda' or 'mps' (optionally with an index, e.g. 'cuda:1')."
            )
    else:
        raise TypeError(
            f"{argument} must be a device name such as 'cpu' or 'cuda', or a torch.device, "
            f"got {device!r} ({type(device).__name__})."
        )
    if book_kinds_only and parsed.type not in _DEVICE_KINDS:
        raise ValueError(f"Unknown device {device!r}: use 'cpu', 'cuda' or 'mps' (optionally with an index, e.g. 'cuda:1').")
    return parsed


def get_device(prefer: torch.device | str | None = None) -> torch.device:
    """Return the best available device: CUDA, then Apple's MPS, then the CPU.

    ``prefer`` forces one: a name (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``; case and
    surrounding spaces ignored, like ``LLMBOOK_SCALE``) or a ``torch.device``. Asking for one that
    is not available, or for a GPU index this machine does not have, raises ``RuntimeError``
    instead of failing later inside a kernel; an unknown name raises ``ValueError``.
    """
    if prefer is not None:
        device = _parse_device(prefer, "prefer")
        available = {
            "cpu": True,
            "cuda": torch.cuda.is_available(),
            "mps": _mps_available(),
        }
        if not available[device.type]:
            raise RuntimeError(f"Device {prefer!r} was requested but is not available on this machine.")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"Device {prefer!r} was requested but this machine has {torch.cuda.device_count()} CUDA "
                f"device(s), numbered from 0."
            )
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


SEED_MAX = 2**64 - 1
"""The largest seed :func:`seed_everything` accepts: the most ``torch.manual_seed`` can take."""


def seed_everything(seed: int = 0) -> int:
    """Seed Python's ``random``, NumPy and PyTorch (all devices) so that a run can be repeated.

    ``seed`` is an integer from 0 to :data:`SEED_MAX` (``2**64 - 1``, PyTorch's limit). NumPy's
    global generator takes at most ``2**32 - 1``, so it receives ``seed % 2**32``. Returns the seed
    so a notebook can print what it used. GPU kernels may still be nondeterministic; the book says
    so where it matters.
    """
    seed = require_int("seed", seed, minimum=0, maximum=SEED_MAX)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return seed


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The reduced-precision dtype :func:`autocast` uses on ``device``, or ``None`` for full precision.

    bf16 on CUDA GPUs that support it (Ampere and newer), fp16 on older CUDA GPUs, and none on
    CPU or MPS, where mixed precision is either slow or not worth the numerical risk for the book.
    ``device`` is a ``torch.device`` or a name, read as :func:`get_device` reads it.
    """
    device = _parse_device(device, "device", book_kinds_only=False)
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def autocast(device: torch.device | str) -> Iterator[None]:
    """Mixed-precision context: ``torch.autocast`` with :func:`autocast_dtype` on CUDA, a no-op elsewhere.

    fp16 (unlike bf16) also needs a gradient scaler during training; the training chapter uses
    ``torch.amp.GradScaler`` for that case.
    """
    device = _parse_device(device, "device", book_kinds_only=False)
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
    if not isinstance(name, str):
        raise TypeError(f"run_dir name must be a str such as 'finetune', got {name!r} ({type(name).__name__})")
    if not name or Path(name).name != name or name in {".", ".."}:
        raise ValueError(f"run_dir name must be a plain folder name, got {name!r}")
    base = Path(os.environ.get(RUN_DIR_ENV_VAR) or "runs")
    path = base / name
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        # mkdir's own message names only the path, not why a folder cannot be there
        raise NotADirectoryError(
            f"Cannot create the run folder {path}: a file is in the way. Remove it, or set "
            f"{RUN_DIR_ENV_VAR} to a folder."
        ) from None
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for torchrun's ``--master_port``, or a local server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_atomic(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], object]) -> Path:
    """Write a file all or nothing: ``data`` (bytes, or a function that writes to an open binary file)
    goes to a uniquely named temporary file in the same folder, is flushed to disk, then renamed over
    ``path`` (``os.replace``, atomic within one file system). If anything fails on the way — a full
    disk, an object that cannot be serialised, an interrupt — the previous file at ``path`` is left as
    it was and the temporary file is removed. The package's checkpoints, service folders and run results
    are written through here. (``llmbook.data`` and ``llmbook.notebooks`` keep their own few lines for
    this: they set the file's permissions and must not import torch, which this module does.)
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: give a file path inside it")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"the folder {path.parent} does not exist: create it first (run_dir does)")
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(temporary, "xb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX); folders cannot be opened like this on Windows, where it is skipped."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def read_torch_file(path: str | os.PathLike, *, what: str = "checkpoint", remedy: str = "save it again",
                    weights_only: bool = True) -> Any:
    """``torch.load`` a file onto the CPU with one clear error line instead of pickle's internals.

    ``what`` names the file in messages ("GPT checkpoint") and ``remedy`` says how to get a good one
    ("run notebooks/04_gpt.ipynb at this scale"). A missing path raises ``FileNotFoundError``; an empty,
    truncated or foreign file ``ValueError``; with ``weights_only=True`` (the default, which cannot run
    code hidden in a file) an object that safe loading refuses also raises ``ValueError``, naming it.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a {what} file")
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}: {remedy}")
    if path.stat().st_size == 0:
        raise ValueError(f"the {what} {path} is empty (0 bytes): it was never fully written; {remedy}")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as exc:
        unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if unsupported is None:
            raise ValueError(f"cannot read the {what} {path}: the file is corrupt or not a PyTorch file; "
                             f"{remedy}") from None
        raise ValueError(
            f"the {what} {path} holds a {unsupported.group(1)} object (e.g. a NumPy scalar), which safe loading "
            "refuses. If you trust the file, load it once with weights_only=False and save it again with plain "
            "numbers (llmbook.train.save_checkpoint converts them)"
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, IndexError, AttributeError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise ValueError(
            f"cannot read the {what} {path}: the file is corrupt, truncated or not a PyTorch file ({reason}); "
            f"{remedy}"
        ) from None


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
    if not isinstance(report, dict) or not report:
        raise ValueError(f"report must be a non-empty dict such as environment_report() returns, got {report!r}")
    width = max(len(str(k)) for k in report)
    return "\n".join(f"{k:<{width}} : {v}" for k, v in report.items())
