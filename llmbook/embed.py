"""Sentence embeddings from a pretrained encoder: masked mean pooling and cosine similarity.

Taught in the getting-started chapter (section "Sentence embeddings"); reused by the applications
chapters (retrieval for customer service, item similarity for recommendation).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from llmbook.checks import require_bool, require_int


def _require_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}; convert it with torch.as_tensor(...)")
    return value


def mean_pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token vectors of each sequence, ignoring padding.

    ``hidden_states`` is ``(batch, seq_len, dim)`` and ``attention_mask`` is ``(batch, seq_len)``
    with 1 for real tokens and 0 for padding (a bool mask works too). Returns ``(batch, dim)``:
    ``e_b = sum_t m_bt h_bt / sum_t m_bt``.
    """
    _require_tensor("hidden_states", hidden_states)
    _require_tensor("attention_mask", attention_mask)
    if hidden_states.dim() != 3:
        raise ValueError(f"hidden_states must be (batch, seq_len, dim), got shape {tuple(hidden_states.shape)}")
    if attention_mask.shape != hidden_states.shape[:2]:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not match hidden_states "
            f"(batch, seq_len) = {tuple(hidden_states.shape[:2])}"
        )
    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        # any other weight (2, 0.5, -1, NaN) would silently give a weighted average, not the mean
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token), as tokenizers return it")
    mask = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
    counts = mask.sum(dim=1)
    if bool((counts == 0).any()):
        raise ValueError("a sequence has no real tokens (its attention_mask is all zeros)")
    return (hidden_states * mask).sum(dim=1) / counts


def cosine_similarity_matrix(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise cosine similarities ``(n, m)`` between the rows of ``a`` ``(n, d)`` and ``b`` ``(m, d)``.

    ``b`` defaults to ``a``. Rows are L2-normalised first, so the result lies in [-1, 1]. Integer
    inputs are compared as floats, and two inputs of different float types in the wider one. An
    all-zero row has no direction: its similarities are 0, as in scikit-learn's ``cosine_similarity``.
    """
    _require_tensor("a", a)
    b = a if b is None else _require_tensor("b", b)
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected two (n, d) and (m, d) matrices, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    if not (dtype.is_floating_point or dtype.is_complex):
        dtype = torch.get_default_dtype()
    return F.normalize(a.to(dtype), dim=1) @ F.normalize(b.to(dtype), dim=1).T


@torch.no_grad()
def embed_texts(
    texts: Sequence[str],
    tokenizer,
    model: torch.nn.Module,
    *,
    batch_size: int = 64,
    max_length: int = 64,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Embed ``texts`` with a ``transformers`` encoder: tokenize, run, mean-pool. Returns ``(n, dim)`` on the CPU.

    Texts are processed in batches of ``batch_size`` and truncated to ``max_length`` tokens;
    the model is put in eval mode. ``model`` must return ``last_hidden_state`` (an ``AutoModel``,
    not a model with a task head). ``device`` defaults to the model's and is read as
    :func:`llmbook.runtime.get_device` reads it. A tqdm bar shows progress unless ``progress=False``.
    """
    from llmbook.runtime import get_device

    batch_size = require_int("batch_size", batch_size, minimum=1)
    max_length = require_int("max_length", max_length, minimum=1)
    progress = require_bool("progress", progress)
    if not callable(tokenizer):
        raise TypeError(f"tokenizer must be a transformers tokenizer (callable), got {type(tokenizer).__name__}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module such as transformers.AutoModel, got {type(model).__name__}")
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not a single string: wrap it in a list")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: nothing to embed")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must all be str; item {bad[0]} is {type(texts[bad[0]]).__name__}")
    if device is None:
        parameter = next(model.parameters(), None)
        if parameter is None:
            raise ValueError("model has no parameters: pass a pretrained encoder such as transformers.AutoModel")
        device = parameter.device
    else:
        device = get_device(device)
    model.eval().to(device)
    chunks = []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="embedding", unit="batch", disable=not progress or len(starts) < 2):
        batch = tokenizer(
            texts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        hidden = getattr(output, "last_hidden_state", None)
        if hidden is None:
            raise TypeError(
                f"model returned {type(output).__name__} without last_hidden_state: pass the encoder itself "
                "(transformers.AutoModel), not a model with a task head"
            )
        chunks.append(mean_pool(hidden.float(), batch["attention_mask"]).cpu())
    return torch.cat(chunks)
