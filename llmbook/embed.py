"""Sentence embeddings from a pretrained encoder: masked mean pooling and cosine similarity.

Taught in the getting-started chapter (section "Sentence embeddings"); reused by the applications
chapters (retrieval for customer service, item similarity for recommendation).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def mean_pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average the token vectors of each sequence, ignoring padding.

    ``hidden_states`` is ``(batch, seq_len, dim)`` and ``attention_mask`` is ``(batch, seq_len)``
    with 1 for real tokens and 0 for padding. Returns ``(batch, dim)``:
    ``e_b = sum_t m_bt h_bt / sum_t m_bt``.
    """
    if hidden_states.dim() != 3:
        raise ValueError(f"hidden_states must be (batch, seq_len, dim), got shape {tuple(hidden_states.shape)}")
    if attention_mask.shape != hidden_states.shape[:2]:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not match hidden_states "
            f"(batch, seq_len) = {tuple(hidden_states.shape[:2])}"
        )
    mask = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
    counts = mask.sum(dim=1)
    if bool((counts == 0).any()):
        raise ValueError("a sequence has no real tokens (its attention_mask is all zeros)")
    return (hidden_states * mask).sum(dim=1) / counts


def cosine_similarity_matrix(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise cosine similarities ``(n, m)`` between the rows of ``a`` ``(n, d)`` and ``b`` ``(m, d)``.

    ``b`` defaults to ``a``. Rows are L2-normalised first, so the result lies in [-1, 1].
    """
    b = a if b is None else b
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected two (n, d) and (m, d) matrices, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


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
    the model is put in eval mode. A tqdm bar shows progress unless ``progress=False``.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not a single string: wrap it in a list")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: nothing to embed")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must all be str; item {bad[0]} is {type(texts[bad[0]]).__name__}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
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
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        chunks.append(mean_pool(hidden.float(), batch["attention_mask"]).cpu())
    return torch.cat(chunks)
