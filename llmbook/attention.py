"""Scaled dot-product attention and multi-head attention, written out from the formula.

Taught in the attention chapter (``notebooks/02_attention.ipynb``); the Transformer, GPT and BERT
chapters build on these pieces.

    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V

Row ``i`` of the result is ``Σ_j a_ij v_j`` with ``a_ij = softmax_j(q_i · k_j / √d_k)``: the scaling
acts on the scores, before the softmax, and the sum runs over the keys ``j``.

Masks are boolean with **True = may attend**, the convention of
``torch.nn.functional.scaled_dot_product_attention`` (and the opposite of ``nn.MultiheadAttention``'s
``attn_mask``/``key_padding_mask``, where True means *blocked*); they broadcast to ``(..., L_q, L_k)``.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from llmbook.checks import require_bool

__all__ = ["scaled_dot_product_attention", "causal_mask", "padding_mask", "MultiHeadAttention"]


def _shape(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if q.dim() < 2 or k.dim() < 2 or v.dim() < 2:
        raise ValueError(
            f"q, k, v must have at least 2 dimensions (..., length, dim); got shapes "
            f"{_shape(q)}, {_shape(k)}, {_shape(v)}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share their last dimension d_k: q {_shape(q)}, k {_shape(k)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same length L_k: k {_shape(k)}, v {_shape(v)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.is_floating_point():
        raise ValueError(f"q, k, v must be floating point (e.g. torch.float32); got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    try:
        torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"the batch dimensions of q {_shape(q)}, k {_shape(k)} and v {_shape(v)} do not broadcast"
        ) from None


def _check_mask(mask: torch.Tensor, scores_shape: torch.Size, device: torch.device) -> None:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a boolean torch.Tensor (True = may attend), got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be boolean (True = may attend), got dtype {mask.dtype}; "
            "for a tokenizer's 0/1 attention_mask use padding_mask(attention_mask)"
        )
    if mask.device != device:
        raise ValueError(f"mask is on {mask.device} but q, k, v are on {device}")
    try:
        shape = torch.broadcast_shapes(mask.shape, scores_shape)
    except RuntimeError:
        shape = None
    if shape != scores_shape:
        raise ValueError(
            f"mask of shape {_shape(mask)} does not broadcast to the attention scores (..., L_q, L_k) = "
            f"{tuple(scores_shape)}"
        )


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q kᵀ / √d_k) v, returning ``(output, weights)``.

    ``q`` is ``(..., L_q, d_k)``, ``k`` is ``(..., L_k, d_k)``, ``v`` is ``(..., L_k, d_v)``; the
    result is ``(..., L_q, d_v)`` and the weights ``(..., L_q, L_k)``. Leading (batch, head)
    dimensions broadcast. ``mask`` is boolean, broadcastable to ``(..., L_q, L_k)``, True where
    attention is allowed; broadcasting aligns the last dimensions, so a 2-D mask is always
    ``(L_q, L_k)``: a tokenizer's ``(batch, L_k)`` mask must go through :func:`padding_mask` first.
    A query row whose keys are all masked gets zero weights (and a zero output) rather than NaN, as
    PyTorch's SDPA does. ``dropout_p`` drops attention weights
    (rescaling the rest) and is applied as given: pass 0 in evaluation.

    This is the *naive* implementation: it materialises the ``L_q × L_k`` score matrix, which is
    what the chapter measures against PyTorch's fused kernels.
    """
    _check_qkv(q, k, v)
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"dropout_p must be a float in [0, 1), got {dropout_p!r}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        _check_mask(mask, scores.shape, q.device)
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if mask is not None:
        # A fully masked row is softmax(-inf, ..., -inf) = NaN; it attends to nothing instead.
        # (Only those rows are touched: a NaN that comes from the inputs stays visible.)
        weights = weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=float(dropout_p))
    return weights @ v, weights


def causal_mask(length: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``(length, length)`` boolean mask, True on and below the diagonal: position i may attend to j ≤ i."""
    if isinstance(length, bool) or not isinstance(length, numbers.Integral):
        raise TypeError(f"length must be an int, got {length!r}")
    if length < 1:
        raise ValueError(f"length must be positive, got {length}")
    return torch.ones(int(length), int(length), dtype=torch.bool, device=device).tril()


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Turn a tokenizer's ``(batch, L_k)`` 1/0 attention mask into a ``(batch, 1, 1, L_k)`` boolean key mask.

    The result broadcasts over heads and query positions: every query may attend to the real
    tokens (1) and to none of the padding (0).
    """
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (batch, length), got shape {_shape(attention_mask)}")
    if attention_mask.dtype != torch.bool and not ((attention_mask == 0) | (attention_mask == 1)).all():
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token)")
    return attention_mask.bool()[:, None, None, :]


class MultiHeadAttention(nn.Module):
    """Multi-head attention: project, split into heads, attend, concatenate, project.

    ``forward(query, key, value, mask=None)`` takes ``(batch, L, d_model)`` tensors and returns
    ``(output (batch, L_q, d_model), weights (batch, heads, L_q, L_k))``. ``mask`` is boolean
    (True = may attend) and broadcastable to ``(batch, heads, L_q, L_k)``. Accepted masks:

    - 4-D ``(batch or 1, heads or 1, L_q or 1, L_k)``: always unambiguous. A tokenizer's ``(batch, L_k)``
      0/1 ``attention_mask`` becomes the ``(batch, 1, 1, L_k)`` padding mask through
      :func:`padding_mask`; an ``(L_q, L_k)`` pattern becomes ``(1, 1, L_q, L_k)`` with ``mask[None, None]``.
    - 2-D ``(L_q or 1, L_k)``, e.g. ``causal_mask(L)``: one pattern shared by every sequence and head.
      A 2-D mask is never read as ``(batch, L_k)``, and one whose first dimension equals a batch size
      above 1 is refused: if the batch size differs from ``L_q`` it can only be a padding mask passed
      raw; if it equals ``L_q`` (say batch 4 and ``causal_mask(4)``) the two readings cannot be told
      apart. Either way the error says to pass ``padding_mask(attention_mask)`` or ``mask[None, None]``.
    - 3-D masks only with a first dimension of 1: broadcasting would line a ``(batch, L_q, L_k)``
      mask's batch up with the heads; pass ``mask[:, None]`` instead.
    - 1-D ``(L_k,)``: one key mask for every query of every sequence.

    The parameters are four ``d_model × d_model`` linear maps (``q_proj``, ``k_proj``, ``v_proj``,
    ``out_proj``); ``nn.MultiheadAttention`` stores the first three stacked in ``in_proj_weight``.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("num_heads", num_heads)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} must be an int, got {value!r}")
        if d_model <= 0 or num_heads <= 0:
            raise ValueError(f"d_model and num_heads must be positive, got {d_model} and {num_heads}")
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
            raise TypeError(f"dropout must be a float in [0, 1), got {dropout!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        bias = require_bool("bias", bias)
        self.d_model, self.num_heads, self.head_dim = int(d_model), int(num_heads), int(d_model) // int(num_heads)
        self.dropout = float(dropout)
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, L, d_model) -> (batch, heads, L, head_dim)."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _check_mask_layout(self, mask: torch.Tensor, *, batch: int, l_q: int, l_k: int) -> None:
        """Refuse the mask shapes whose meaning broadcasting would silently get wrong (see the class docstring)."""
        if mask.dim() == 3 and mask.shape[0] != 1:
            raise ValueError(
                f"a 3-D mask of shape {_shape(mask)} is ambiguous: broadcasting would line its first dimension up "
                f"with the {self.num_heads} heads, not the batch. Pass (L_q, L_k), (batch, 1, L_q, L_k) "
                "(e.g. mask[:, None]) or (batch, heads, L_q, L_k)"
            )
        # Broadcasting reads a 2-D mask as (L_q, L_k); a raw (batch, L_k) padding mask would then be
        # applied to the query positions instead of the sequences, silently whenever batch == L_q.
        if mask.dim() == 2 and batch > 1 and mask.shape[0] == batch:
            if batch == l_q:
                raise ValueError(
                    f"a 2-D mask of shape {_shape(mask)} is ambiguous when the batch size and L_q are both {batch}: "
                    "it could be an (L_q, L_k) pattern or a (batch, L_k) padding mask. Pass a pattern such as "
                    "causal_mask(L) as mask[None, None] (shape (1, 1, L_q, L_k)), or a tokenizer's attention "
                    "mask as padding_mask(attention_mask) (shape (batch, 1, 1, L_k))"
                )
            raise ValueError(
                f"a 2-D mask of shape {_shape(mask)} looks like a (batch, L_k) padding mask, but 2-D masks are "
                f"read as (L_q, L_k) = ({l_q}, {l_k}); pass padding_mask(attention_mask) "
                "(shape (batch, 1, 1, L_k)) instead"
            )

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for name, x in (("query", query), ("key", key), ("value", value)):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
            if x.dim() != 3 or x.shape[-1] != self.d_model:
                raise ValueError(f"{name} must be (batch, length, d_model={self.d_model}), got {_shape(x)}")
        if key.shape[:2] != value.shape[:2] or query.shape[0] != key.shape[0]:
            raise ValueError(
                f"query {_shape(query)}, key {_shape(key)} and value {_shape(value)} must share the "
                "batch size, and key and value their length"
            )
        dtype = self.q_proj.weight.dtype
        if not (query.dtype == key.dtype == value.dtype == dtype):
            raise ValueError(
                f"query, key, value have dtypes {query.dtype}, {key.dtype}, {value.dtype} but the module's "
                f"weights are {dtype}; convert one of them (e.g. module.to(torch.float64))"
            )
        if isinstance(mask, torch.Tensor):
            self._check_mask_layout(mask, batch=query.shape[0], l_q=query.shape[1], l_k=key.shape[1])
        q = self._split_heads(self.q_proj(query))
        k = self._split_heads(self.k_proj(key))
        v = self._split_heads(self.v_proj(value))
        out, weights = scaled_dot_product_attention(
            q, k, v, mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        batch, _, length, _ = out.shape
        out = out.transpose(1, 2).reshape(batch, length, self.d_model)  # concatenate the heads
        return self.out_proj(out), weights
