"""Argument checks shared by every ``llmbook`` module.

Each check raises one clear error that names the argument, what it got and what to pass instead, so
that a reader who passes a wrong value sees that line, not a stack trace from deep inside PyTorch or
a silently wrong answer. Used throughout the package (the reliability work behind every chapter).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def require_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a real ``bool`` (or NumPy bool); raise ``TypeError`` otherwise.

    Why: ``if "false":`` is true, so a string passed where a flag is expected silently does the
    opposite of what the reader wrote.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__}).")


def require_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as an ``int`` if it is an integer within ``[minimum, maximum]``.

    Booleans are refused (``True`` is an ``int`` in Python, but never the count a reader meant).
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__}).")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value}.")
    return value


def require_finite(name: str, values: Any, hint: str = "") -> None:
    """Raise ``ValueError`` if a tensor, array or number contains NaN or infinity.

    ``hint`` is appended to the message: say what usually causes the non-finite value and the fix.
    """
    if isinstance(values, torch.Tensor):
        ok = bool(torch.isfinite(values).all()) if values.is_floating_point() or values.is_complex() else True
    elif isinstance(values, (float, int, np.floating, np.integer)):
        ok = math.isfinite(float(values))
    else:
        array = np.asarray(values)
        ok = bool(np.isfinite(array).all()) if np.issubdtype(array.dtype, np.number) else True
    if not ok:
        message = f"{name} contains NaN or infinite values."
        raise ValueError(f"{message} {hint}".strip())


def defines_no_distribution(logits: torch.Tensor) -> bool:
    """True if some row of ``logits`` (..., vocab) holds a NaN or +inf, or no finite value at all.

    Such a row defines no next-token distribution: arg-max would return token 0 (or an arbitrary id)
    and sampling would fail. A logit of -inf alone is fine: it is how decoders rule a token out.
    """
    broken = torch.isnan(logits) | (logits == float("inf"))
    return bool(broken.any() | ~torch.isfinite(logits).any(dim=-1).all())
