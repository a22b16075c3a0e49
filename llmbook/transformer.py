"""The encoder–decoder Transformer of Vaswani et al. (2017), built from the attention chapter's pieces.

Taught in the Transformer chapter (``notebooks/03_transformer.ipynb``), which trains it to translate
English into French; the GPT chapter reuses :func:`sinusoidal_positional_encoding` and
:class:`PositionwiseFeedForward`.

Pieces, bottom up:

- :func:`sinusoidal_positional_encoding` and :class:`PositionalEncoding` (adds it to embeddings);
- :class:`PositionwiseFeedForward` — ``Linear → ReLU → dropout → Linear``;
- :class:`EncoderLayer` — self-attention and feed-forward, each in a residual block with layer norm;
- :class:`DecoderLayer` — causal self-attention, cross-attention to the encoder, feed-forward;
- :class:`Seq2SeqTransformer` — embeddings, the two stacks and the (tied) output projection;
- :func:`greedy_decode` and :func:`beam_search` (with length normalisation).

Conventions: tensors are batch first, ``(batch, length, d_model)``. Masks are boolean with
**True = may attend**, as in :mod:`llmbook.attention` (PyTorch's ``key_padding_mask`` arguments use
the opposite convention, True = ignore). ``norm_first=True`` gives the pre-LN layer
``x + sublayer(norm(x))``; ``norm_first=False`` the post-LN layer ``norm(x + sublayer(x))`` of the
original paper. Both match ``torch.nn.TransformerEncoderLayer`` with the same flag.
"""

from __future__ import annotations

import math
import numbers
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from llmbook.attention import MultiHeadAttention, causal_mask
from llmbook.checks import defines_no_distribution, require_bool
from llmbook.runtime import read_torch_file, write_atomic

__all__ = [
    "sinusoidal_positional_encoding",
    "PositionalEncoding",
    "PositionwiseFeedForward",
    "EncoderLayer",
    "DecoderLayer",
    "Seq2SeqTransformer",
    "greedy_decode",
    "beam_search",
    "copy_weights_from_torch_encoder_layer",
]


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_dropout(p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")


def _check_hidden(x: torch.Tensor, d_model: int, name: str) -> None:
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"{name} must be (batch, length, d_model={d_model}), got shape {tuple(x.shape)}")


def _check_token_ids(ids: torch.Tensor, vocab_size: int, name: str) -> None:
    if ids.dim() != 2:
        raise ValueError(f"{name} must be (batch, length) token ids, got shape {tuple(ids.shape)}")
    if ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must hold integer token ids (int64), got dtype {ids.dtype}")
    if ids.shape[1] == 0:
        raise ValueError(f"{name} is empty: it has length 0")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(
            f"{name} holds token ids outside [0, {vocab_size}): min {int(ids.min())}, max {int(ids.max())}"
        )


# --------------------------------------------------------------------------------------------------
# Positional encoding
# --------------------------------------------------------------------------------------------------


def sinusoidal_positional_encoding(length: int, d_model: int) -> torch.Tensor:
    """The ``(length, d_model)`` table of Vaswani et al.: PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...).

    Each pair of columns is a sine/cosine of one frequency; frequencies fall geometrically from 1 to
    1/10000 across the columns, so nearby positions get similar vectors and PE[pos + k] is a fixed
    rotation of PE[pos] for every pos. ``d_model`` must be even.
    """
    _check_positive(length=length, d_model=d_model)
    if d_model % 2:
        raise ValueError(f"d_model must be even for sine/cosine pairs, got {d_model}")
    position = torch.arange(length, dtype=torch.float32)[:, None]  # (length, 1)
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table


class PositionalEncoding(nn.Module):
    """Add the sinusoidal table to ``(batch, length, d_model)`` embeddings, then apply dropout.

    The table is a buffer (saved with the model, moved with ``.to(device)``, never trained) of
    ``max_len`` rows; a longer input raises ``ValueError``.
    """

    def __init__(self, d_model: int, max_len: int = 512, dropout: float = 0.0) -> None:
        super().__init__()
        _check_dropout(dropout)
        self.register_buffer("pe", sinusoidal_positional_encoding(max_len, d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        max_len, d_model = self.pe.shape
        _check_hidden(x, d_model, "x")
        if x.shape[1] > max_len:
            raise ValueError(f"sequence length {x.shape[1]} exceeds the positional table's max_len={max_len}")
        return self.dropout(x + self.pe[: x.shape[1]].to(x.dtype))


# --------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------


class PositionwiseFeedForward(nn.Module):
    """``linear2(dropout(relu(linear1(x))))``, applied to every position independently (d_model → d_ff → d_model)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0) -> None:
        super().__init__()
        _check_positive(d_model=d_model, d_ff=d_ff)
        _check_dropout(dropout)
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each wrapped as a residual block with layer norm.

    ``norm_first=True`` (pre-LN): ``x = x + drop(attn(norm1(x)))``; ``x = x + drop(ff(norm2(x)))``.
    ``norm_first=False`` (post-LN, the original paper): ``x = norm1(x + drop(attn(x)))``;
    ``x = norm2(x + drop(ff(x)))``. The same computation, parameter names aside, as
    ``torch.nn.TransformerEncoderLayer(d_model, num_heads, d_ff, dropout, batch_first=True,
    norm_first=...)`` — see :func:`copy_weights_from_torch_encoder_layer`.

    ``forward(x, mask=None)`` takes ``(batch, L, d_model)`` and a boolean mask broadcastable to
    ``(batch, heads, L, L)`` (True = may attend), typically ``(batch, 1, 1, L)`` for padding (from
    :func:`llmbook.attention.padding_mask`). The mask goes to
    :class:`llmbook.attention.MultiHeadAttention`, whose docstring lists the shapes it accepts: a 2-D
    mask is an ``(L, L)`` pattern, refused when the batch size is also ``L`` (pass ``mask[None, None]``).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        dropout: float = 0.1,
        norm_first: bool = True,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        _check_positive(d_model=d_model, num_heads=num_heads, d_ff=d_ff)
        _check_dropout(dropout)
        self.d_model, self.norm_first = d_model, require_bool("norm_first", norm_first)
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout=dropout)
        self.feed_forward = PositionwiseFeedForward(d_model, d_ff, dropout)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def _attend(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.dropout1(self.self_attn(x, x, x, mask=mask)[0])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_hidden(x, self.d_model, "x")
        if self.norm_first:
            x = x + self._attend(self.norm1(x), mask)
            return x + self.dropout2(self.feed_forward(self.norm2(x)))
        x = self.norm1(x + self._attend(x, mask))
        return self.norm2(x + self.dropout2(self.feed_forward(x)))


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention to the encoder output, feed-forward; residuals + layer norm.

    ``forward(y, memory, self_mask, memory_mask)``: ``y`` is ``(batch, T, d_model)`` (the target so
    far), ``memory`` is ``(batch, S, d_model)`` (the encoder output). ``self_mask`` broadcasts to
    ``(batch, heads, T, T)`` — causal, and padding if any; ``memory_mask`` to ``(batch, heads, T, S)``
    — the source padding. Both go to :class:`llmbook.attention.MultiHeadAttention`, whose docstring
    lists the mask shapes it accepts. In cross-attention the queries come from the decoder, keys and
    values from the encoder. ``norm_first`` as in :class:`EncoderLayer`.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        dropout: float = 0.1,
        norm_first: bool = True,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        _check_positive(d_model=d_model, num_heads=num_heads, d_ff=d_ff)
        _check_dropout(dropout)
        self.d_model, self.norm_first = d_model, require_bool("norm_first", norm_first)
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout=dropout)
        self.cross_attn = MultiHeadAttention(d_model, num_heads, dropout=dropout)
        self.feed_forward = PositionwiseFeedForward(d_model, d_ff, dropout)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm3 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(
        self,
        y: torch.Tensor,
        memory: torch.Tensor,
        self_mask: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        _check_hidden(y, self.d_model, "y")
        _check_hidden(memory, self.d_model, "memory")
        if y.shape[0] != memory.shape[0]:
            raise ValueError(f"y {tuple(y.shape)} and memory {tuple(memory.shape)} must have the same batch size")

        def self_block(h: torch.Tensor) -> torch.Tensor:
            return self.dropout1(self.self_attn(h, h, h, mask=self_mask)[0])

        def cross_block(h: torch.Tensor) -> torch.Tensor:
            return self.dropout2(self.cross_attn(h, memory, memory, mask=memory_mask)[0])

        if self.norm_first:
            y = y + self_block(self.norm1(y))
            y = y + cross_block(self.norm2(y))
            return y + self.dropout3(self.feed_forward(self.norm3(y)))
        y = self.norm1(y + self_block(y))
        y = self.norm2(y + cross_block(y))
        return self.norm3(y + self.dropout3(self.feed_forward(y)))


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


class Seq2SeqTransformer(nn.Module):
    """Encoder–decoder Transformer for sequence-to-sequence tasks such as translation.

    ``forward(src, tgt_in)`` maps source ids ``(batch, S)`` and the shifted target ids
    ``(batch, T)`` (``<bos> y1 ... y_{T-1}``) to next-token logits ``(batch, T, tgt_vocab_size)``.
    Padding (``pad_id``) is masked out of every attention; the decoder is causal.

    ``tie_output`` ties the output projection to the target embedding (one matrix, used twice);
    ``share_embeddings`` also shares it with the source embedding, which needs one joint vocabulary
    (``src_vocab_size == tgt_vocab_size``). Embeddings are scaled by √d_model before the positional
    encoding is added. With ``norm_first`` (pre-LN), each stack ends with a final layer norm.
    """

    def __init__(
        self,
        src_vocab_size: int,
        tgt_vocab_size: int,
        *,
        d_model: int = 128,
        num_heads: int = 4,
        num_encoder_layers: int = 2,
        num_decoder_layers: int = 2,
        d_ff: int = 512,
        dropout: float = 0.1,
        max_len: int = 256,
        pad_id: int = 0,
        norm_first: bool = True,
        tie_output: bool = True,
        share_embeddings: bool = False,
    ) -> None:
        super().__init__()
        _check_positive(
            src_vocab_size=src_vocab_size,
            tgt_vocab_size=tgt_vocab_size,
            d_model=d_model,
            num_heads=num_heads,
            num_encoder_layers=num_encoder_layers,
            num_decoder_layers=num_decoder_layers,
            d_ff=d_ff,
            max_len=max_len,
        )
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}")
        norm_first = require_bool("norm_first", norm_first)
        tie_output = require_bool("tie_output", tie_output)
        share_embeddings = require_bool("share_embeddings", share_embeddings)
        if not 0 <= pad_id < min(src_vocab_size, tgt_vocab_size):
            raise ValueError(f"pad_id={pad_id} is not a valid id of both vocabularies")
        if share_embeddings and src_vocab_size != tgt_vocab_size:
            raise ValueError(
                "share_embeddings needs one joint vocabulary, but src_vocab_size="
                f"{src_vocab_size} != tgt_vocab_size={tgt_vocab_size}"
            )
        self.src_vocab_size, self.tgt_vocab_size = src_vocab_size, tgt_vocab_size
        self.d_model, self.pad_id, self.max_len = d_model, pad_id, max_len
        # The constructor's arguments, so a checkpoint can rebuild the same model (save_translation_checkpoint).
        self.config = dict(
            src_vocab_size=src_vocab_size,
            tgt_vocab_size=tgt_vocab_size,
            d_model=d_model,
            num_heads=num_heads,
            num_encoder_layers=num_encoder_layers,
            num_decoder_layers=num_decoder_layers,
            d_ff=d_ff,
            dropout=dropout,
            max_len=max_len,
            pad_id=pad_id,
            norm_first=norm_first,
            tie_output=tie_output,
            share_embeddings=share_embeddings,
        )
        self.src_embed = nn.Embedding(src_vocab_size, d_model, padding_idx=pad_id)
        self.tgt_embed = self.src_embed if share_embeddings else nn.Embedding(tgt_vocab_size, d_model, padding_idx=pad_id)
        self.positional = PositionalEncoding(d_model, max_len, dropout)
        self.encoder_layers = nn.ModuleList(
            EncoderLayer(d_model, num_heads, d_ff, dropout, norm_first) for _ in range(num_encoder_layers)
        )
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(d_model, num_heads, d_ff, dropout, norm_first) for _ in range(num_decoder_layers)
        )
        # Pre-LN leaves the residual stream un-normalised: one last norm before it is read.
        self.encoder_norm = nn.LayerNorm(d_model) if norm_first else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d_model) if norm_first else nn.Identity()
        self.output = nn.Linear(d_model, tgt_vocab_size, bias=False)
        self._init_weights()
        if tie_output:
            self.output.weight = self.tgt_embed.weight

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        # With tied weights the embedding is also the output layer: a small normal init keeps the
        # first logits near zero (uniform predictions), and √d_model scaling restores its size as input.
        for embedding in {id(self.src_embed): self.src_embed, id(self.tgt_embed): self.tgt_embed}.values():
            nn.init.normal_(embedding.weight, std=self.d_model**-0.5)
            with torch.no_grad():
                embedding.weight[self.pad_id].zero_()

    def make_src_mask(self, src: torch.Tensor) -> torch.Tensor:
        """``(batch, 1, 1, S)`` key mask, True at real source tokens (broadcasts over heads and queries)."""
        return (src != self.pad_id)[:, None, None, :]

    def make_tgt_mask(self, tgt: torch.Tensor) -> torch.Tensor:
        """``(batch, 1, T, T)`` mask: position i may attend to real target tokens j ≤ i."""
        keys = (tgt != self.pad_id)[:, None, None, :]
        return keys & causal_mask(tgt.shape[1], device=tgt.device)

    def _embed(self, embedding: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.max_len:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds max_len={self.max_len}")
        return self.positional(embedding(ids) * math.sqrt(self.d_model))

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Source ids ``(batch, S)`` → memory ``(batch, S, d_model)``."""
        _check_token_ids(src, self.src_vocab_size, "src")
        src_mask = self.make_src_mask(src) if src_mask is None else src_mask
        x = self._embed(self.src_embed, src)
        for layer in self.encoder_layers:
            x = layer(x, src_mask)
        return self.encoder_norm(x)

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        """Target ids ``(batch, T)`` and memory ``(batch, S, d_model)`` → logits ``(batch, T, tgt_vocab_size)``."""
        _check_token_ids(tgt, self.tgt_vocab_size, "tgt")
        _check_hidden(memory, self.d_model, "memory")
        if tgt.shape[0] != memory.shape[0]:
            raise ValueError(f"tgt {tuple(tgt.shape)} and memory {tuple(memory.shape)} must share the batch size")
        return self.output(self._decoder_states(tgt, memory, src_mask))

    def decode_last(self, tgt: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, tgt_vocab_size)`` of the last target position only: ``decode(...)[:, -1]``.

        What one decoding step needs; it skips projecting every earlier position onto the vocabulary,
        the largest matrix product of a step when the vocabulary is large.
        """
        _check_token_ids(tgt, self.tgt_vocab_size, "tgt")
        _check_hidden(memory, self.d_model, "memory")
        if tgt.shape[0] != memory.shape[0]:
            raise ValueError(f"tgt {tuple(tgt.shape)} and memory {tuple(memory.shape)} must share the batch size")
        return self.output(self._decoder_states(tgt, memory, src_mask)[:, -1])

    def _decoder_states(self, tgt: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        tgt_mask = self.make_tgt_mask(tgt)
        y = self._embed(self.tgt_embed, tgt)
        for layer in self.decoder_layers:
            y = layer(y, memory, tgt_mask, src_mask)
        return self.decoder_norm(y)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, T, tgt_vocab_size)`` for every target position (teacher forcing)."""
        _check_token_ids(src, self.src_vocab_size, "src")
        _check_token_ids(tgt, self.tgt_vocab_size, "tgt")
        if src.shape[0] != tgt.shape[0]:
            raise ValueError(f"src {tuple(src.shape)} and tgt {tuple(tgt.shape)} must have the same batch size")
        src_mask = self.make_src_mask(src)
        return self.decode(tgt, self.encode(src, src_mask), src_mask)


def copy_weights_from_torch_encoder_layer(ours: EncoderLayer, theirs: nn.TransformerEncoderLayer) -> None:
    """Copy the weights of ``torch.nn.TransformerEncoderLayer`` into :class:`EncoderLayer` ``ours``.

    PyTorch stacks the query, key and value projections into one ``in_proj_weight`` of shape
    ``(3 d_model, d_model)``; it is split into our three ``nn.Linear``. Sizes and the norm placement
    must agree, otherwise ``ValueError``.
    """
    if not isinstance(theirs, nn.TransformerEncoderLayer):
        raise TypeError(f"theirs must be torch.nn.TransformerEncoderLayer, got {type(theirs).__name__}")
    if theirs.norm_first != ours.norm_first:
        raise ValueError(f"norm placement differs: ours norm_first={ours.norm_first}, theirs {theirs.norm_first}")
    mha = theirs.self_attn
    if mha.embed_dim != ours.d_model or mha.num_heads != ours.self_attn.num_heads:
        raise ValueError(
            f"sizes differ: ours d_model={ours.d_model}, heads={ours.self_attn.num_heads}; "
            f"theirs d_model={mha.embed_dim}, heads={mha.num_heads}"
        )
    if theirs.linear1.out_features != ours.feed_forward.linear1.out_features:
        raise ValueError(
            f"d_ff differs: ours {ours.feed_forward.linear1.out_features}, theirs {theirs.linear1.out_features}"
        )
    if mha.in_proj_weight is None or mha.in_proj_bias is None:
        raise ValueError("theirs must use a packed in_proj with bias (the default)")
    with torch.no_grad():
        for proj, w, b in zip(
            (ours.self_attn.q_proj, ours.self_attn.k_proj, ours.self_attn.v_proj),
            mha.in_proj_weight.chunk(3),
            mha.in_proj_bias.chunk(3),
        ):
            proj.weight.copy_(w)
            proj.bias.copy_(b)
        pairs = [
            (ours.self_attn.out_proj, mha.out_proj),
            (ours.feed_forward.linear1, theirs.linear1),
            (ours.feed_forward.linear2, theirs.linear2),
            (ours.norm1, theirs.norm1),
            (ours.norm2, theirs.norm2),
        ]
        for mine, other in pairs:
            mine.weight.copy_(other.weight)
            mine.bias.copy_(other.bias)


# --------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------


class Seq2SeqModel(Protocol):
    """What the decoders need: :class:`Seq2SeqTransformer`, or any model with these three methods."""

    def make_src_mask(self, src: torch.Tensor) -> torch.Tensor: ...

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor: ...

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor: ...


DEFAULT_DECODE_MAX_LEN = 64


def _check_decode_args(
    model: Seq2SeqModel, src: torch.Tensor, bos_id: int, eos_id: int, max_len: int | None
) -> int:
    """Check the decoders' arguments; return ``max_len``, with ``None`` resolved as the decoders document."""
    if not isinstance(src, torch.Tensor) or src.dim() != 2 or src.shape[0] == 0 or src.shape[1] == 0:
        shape = tuple(src.shape) if isinstance(src, torch.Tensor) else type(src).__name__
        raise ValueError(f"src must be a non-empty (batch, length) tensor of token ids, got {shape}")
    # The decoder reads up to max_len target tokens (<bos> and max_len - 1 generated ones); a longer
    # max_len would only fail at the step that outgrows the model's positional table.
    model_max_len = getattr(model, "max_len", None)
    if not isinstance(model_max_len, int):
        model_max_len = None
    if max_len is None:
        max_len = DEFAULT_DECODE_MAX_LEN if model_max_len is None else min(DEFAULT_DECODE_MAX_LEN, model_max_len)
    _check_positive(max_len=max_len)
    if model_max_len is not None and max_len > model_max_len:
        raise ValueError(
            f"max_len={max_len} is longer than the model's max_len={model_max_len} (the rows of its positional "
            f"encoding), so decoding would fail at step {model_max_len + 1}; pass max_len <= {model_max_len}"
        )
    vocab_size = getattr(model, "tgt_vocab_size", None)
    for name, value in (("bos_id", bos_id), ("eos_id", eos_id)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        if isinstance(vocab_size, int) and value >= vocab_size:
            raise ValueError(f"{name}={value} is outside the target vocabulary [0, {vocab_size})")
    return max_len


def _last_logits(model: Seq2SeqModel, tokens: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
    """Next-token logits ``(batch, V)``: ``model.decode_last`` when the model has it, else ``decode(...)[:, -1]``."""
    decode_last = getattr(model, "decode_last", None)
    if callable(decode_last):
        return decode_last(tokens, memory, src_mask)
    return model.decode(tokens, memory, src_mask)[:, -1]


def _check_next_token_logits(logits: torch.Tensor, step: int) -> None:
    """Refuse logits that do not define a distribution over the next token.

    NaN, +inf, or a row with no finite logit would make arg-max and top-k return token 0 (or an
    arbitrary id) without a word. A logit of -inf is allowed: it is how a model rules a token out.
    """
    if defines_no_distribution(logits):
        raise ValueError(
            f"the model's next-token logits at decoding step {step} contain NaN or +inf, or a row with no "
            "finite value, so there is no next token to choose. The model is broken (diverged training, or "
            "float16 overflow): check its weights and run it in float32."
        )


@torch.no_grad()
def greedy_decode(
    model: Seq2SeqModel, src: torch.Tensor, *, bos_id: int, eos_id: int, max_len: int | None = None
) -> list[list[int]]:
    """Translate a batch by always taking the most probable next token.

    Returns one list of generated ids per source sentence, without ``<bos>`` and ``<eos>``;
    generation stops at ``<eos>`` or after ``max_len`` tokens. Call ``model.eval()`` first.
    ``max_len`` may not exceed the model's own ``max_len`` (checked before decoding starts); the
    default ``None`` means 64, or the model's ``max_len`` if that is smaller. NaN, +inf, or a row
    without a finite logit raise ``ValueError`` rather than becoming token 0.
    """
    max_len = _check_decode_args(model, src, bos_id, eos_id, max_len)
    src_mask = model.make_src_mask(src)
    memory = model.encode(src, src_mask)
    tokens = torch.full((src.shape[0], 1), bos_id, dtype=torch.long, device=src.device)
    finished = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    for step in range(1, max_len + 1):
        logits = _last_logits(model, tokens, memory, src_mask)
        _check_next_token_logits(logits, step)
        next_token = logits.argmax(dim=-1)
        next_token = next_token.masked_fill(finished, eos_id)  # finished rows just repeat <eos>
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        finished |= next_token == eos_id
        if bool(finished.all()):
            break
    out = []
    for row in tokens[:, 1:].tolist():
        out.append(row[: row.index(eos_id)] if eos_id in row else row)
    return out


@torch.no_grad()
def beam_search(
    model: Seq2SeqModel,
    src: torch.Tensor,
    *,
    bos_id: int,
    eos_id: int,
    beam_size: int = 4,
    max_len: int | None = None,
    length_penalty: float = 0.6,
    return_scores: bool = False,
) -> list[list[int]] | tuple[list[list[int]], list[float]]:
    """Translate a batch with beam search; hypotheses are ranked by ``log p(y | x) / len(y) ** length_penalty``.

    ``len(y)`` counts the generated tokens including ``<eos>``. ``length_penalty=0`` ranks by the
    raw log-probability, which favours short outputs (every token multiplies in a probability
    < 1); ``1`` ranks by the mean log-probability per token.

    At each step every live hypothesis is extended by every token and the ``2 * beam_size`` best
    candidates are examined: those ending in ``<eos>`` that rank among the best ``beam_size`` become
    finished hypotheses, the best ``beam_size`` others stay alive. A sentence is done once it has ``beam_size`` finished
    hypotheses, or when no live one can still overtake the best finished one; a hypothesis that
    reaches ``max_len`` tokens without ``<eos>`` is finished as it is. Returns the best hypothesis
    per sentence (ids without ``<bos>``/``<eos>``), and with ``return_scores`` also its score.
    ``beam_size=1`` is greedy decoding. ``max_len`` and non-finite logits are checked as in
    :func:`greedy_decode`.
    """
    max_len = _check_decode_args(model, src, bos_id, eos_id, max_len)
    _check_positive(beam_size=beam_size)
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, numbers.Real):
        raise TypeError(f"length_penalty must be a number >= 0, got {length_penalty!r}")
    if not 0 <= length_penalty < float("inf"):
        raise ValueError(f"length_penalty must be a finite number >= 0, got {length_penalty}")
    return_scores = require_bool("return_scores", return_scores)
    batch, k, device = src.shape[0], beam_size, src.device
    src_mask = model.make_src_mask(src)
    memory = model.encode(src, src_mask)
    memory = memory.repeat_interleave(k, dim=0)  # (batch * k, S, d)
    src_mask = src_mask.repeat_interleave(k, dim=0)
    tokens = torch.full((batch * k, 1), bos_id, dtype=torch.long, device=device)
    # Raw log-probabilities of the live hypotheses; at the start only beam 0 of each sentence is live.
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch

    def normalised(raw: float, length: int) -> float:
        return raw / (length**length_penalty)

    for step in range(1, max_len + 1):
        logits = _last_logits(model, tokens, memory, src_mask).float()
        _check_next_token_logits(logits, step)
        log_probs = F.log_softmax(logits, dim=-1)  # (batch * k, V)
        vocab = log_probs.shape[-1]
        candidates = (scores.view(-1, 1) + log_probs).view(batch, k * vocab)
        n_top = min(2 * k, k * vocab)
        top_scores, top_index = candidates.topk(n_top, dim=-1)  # (batch, n_top)
        beam_of, token_of = top_index // vocab, top_index % vocab
        new_scores = torch.full((batch, k), float("-inf"), device=device)
        new_rows = torch.zeros(batch, k, dtype=torch.long, device=device)
        new_tokens = torch.full((batch, k), eos_id, dtype=torch.long, device=device)
        top_scores_l, beam_l, token_l = top_scores.tolist(), beam_of.tolist(), token_of.tolist()
        prefixes = tokens[:, 1:].tolist()
        for b in range(batch):
            if done[b]:
                continue
            alive = 0
            for rank, (score, beam, token) in enumerate(zip(top_scores_l[b], beam_l[b], token_l[b])):
                if score == float("-inf"):
                    break
                prefix = prefixes[b * k + beam]
                if token == eos_id and rank >= k:
                    continue  # an <eos> outside the top k: a live hypothesis outranks it (as in fairseq)
                if token == eos_id or step == max_len:
                    ended = prefix if token == eos_id else prefix + [token]
                    finished[b].append((normalised(score, step), ended))
                elif alive < k:
                    new_scores[b, alive] = score
                    new_rows[b, alive] = b * k + beam
                    new_tokens[b, alive] = token
                    alive += 1
                if alive == k and len(finished[b]) >= k:
                    break
            best_done = max((s for s, _ in finished[b]), default=float("-inf"))
            # Raw scores only fall as a hypothesis grows; the most its normalised score can reach
            # is its raw score divided by the largest length penalty, at max_len.
            best_alive = float(new_scores[b].max()) / (max_len**length_penalty) if alive else float("-inf")
            if len(finished[b]) >= k or best_done >= best_alive or alive == 0:
                done[b] = True
                new_scores[b] = float("-inf")
        if all(done):
            break
        rows = new_rows.view(-1)
        tokens = torch.cat([tokens[rows], new_tokens.view(-1, 1)], dim=1)
        scores = new_scores
    best = [max(hyps, key=lambda h: h[0]) for hyps in finished]
    sequences = [seq for _, seq in best]
    if return_scores:
        return sequences, [score for score, _ in best]
    return sequences


# --------------------------------------------------------------------------------------------------
# The trained translator: text in, text out; checkpoints; the fixed test set
# --------------------------------------------------------------------------------------------------

CHECKPOINT_FORMAT = "llmbook.translation/1"


def normalise_tatoeba(text: str, *, french: bool = False) -> str:
    """The Transformer chapter's text normalisation of a Tatoeba sentence (section 1.2 of the chapter).

    Unicode NFKC (no-break, narrow no-break and thin spaces become plain spaces), straight
    apostrophes, no soft hyphens, single spaces; for French (``french=True``) exactly one space
    before ``? ! : ;``. Case and punctuation are kept: they are part of a correct translation.
    """
    import re
    import unicodedata

    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\u00ad", "").replace("\u2019", "'").replace("\u2018", "'")
    if french:
        text = re.sub(r"\s*([?!:;])", r" \1", text)
    return re.sub(r"\s+", " ", text).strip()


def tatoeba_test_set(n: int | None = None, split: str = "test"):
    """The chapter's test set: distinct English sentences of ``tatoeba_fra_eng_full`` with all their references.

    Returns a DataFrame with columns ``english`` (normalised, str) and ``references`` (the list of
    its normalised French translations in file order, at least one), in the split's fixed order;
    ``n`` keeps the first ``n`` sentences (the chapter scores the first ``n_test``, recorded in its
    checkpoint's metadata, so the evaluation chapter scores the same sentences). ``split`` may also
    be ``"validation"``.
    """
    import pandas as pd

    from llmbook.data import load_dataset

    if split not in ("validation", "test"):
        raise ValueError(f"split must be 'validation' or 'test', got {split!r}")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n <= 0):
        raise ValueError(f"n must be a positive int or None, got {n!r}")
    frame = load_dataset("tatoeba_fra_eng_full", split)
    grouped: dict[str, list[str]] = {}
    for english, french in zip(frame.english, frame.french):
        refs = grouped.setdefault(normalise_tatoeba(english), [])
        french = normalise_tatoeba(french, french=True)
        if french not in refs:
            refs.append(french)
    items = list(grouped.items())[:n]
    return pd.DataFrame({"english": [e for e, _ in items], "references": [r for _, r in items]})


def _special_id(tokenizer, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise ValueError(f"the tokenizer has no {token!r} token: train it with special_tokens that include {token!r}")
    return int(token_id)


def _check_tokenizer(tokenizer) -> None:
    if not all(hasattr(tokenizer, name) for name in ("to_str", "encode_batch", "decode_batch", "token_to_id")):
        raise TypeError(f"tokenizer must be a tokenizers.Tokenizer, got {type(tokenizer).__name__}")


@torch.no_grad()
def translate(
    model: Seq2SeqTransformer,
    tokenizer,
    sentences: list[str],
    *,
    beam_size: int = 1,
    length_penalty: float = 0.6,
    batch_size: int = 100,
    max_extra_tokens: int = 10,
    normalise: bool = True,
    bos_token: str = "<bos>",
    eos_token: str = "<eos>",
) -> list[str]:
    """Translate English sentences with a trained :class:`Seq2SeqTransformer` and its ``tokenizers.Tokenizer``.

    ``beam_size=1`` is :func:`greedy_decode`, larger values :func:`beam_search` with
    ``length_penalty``. Each batch may generate up to its longest source length plus
    ``max_extra_tokens`` tokens (capped by the model's ``max_len``). With ``normalise`` the inputs go
    through :func:`normalise_tatoeba` first, as the training data did. Puts the model in eval mode
    and runs on the device its parameters are on. Returns one str per sentence.
    """
    _check_tokenizer(tokenizer)
    if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
        raise TypeError("sentences must be a list of str (wrap a single sentence in a list)")
    _check_positive(beam_size=beam_size, batch_size=batch_size)
    if not isinstance(max_extra_tokens, int) or isinstance(max_extra_tokens, bool) or max_extra_tokens < 0:
        raise ValueError(f"max_extra_tokens must be an int >= 0, got {max_extra_tokens!r}")
    normalise = require_bool("normalise", normalise)
    bos, eos = _special_id(tokenizer, bos_token), _special_id(tokenizer, eos_token)
    texts = [normalise_tatoeba(s) if normalise else s for s in sentences]
    device = next(model.parameters()).device
    model.eval()
    out: list[str] = []
    empty = [i for i, text in enumerate(texts) if not tokenizer.encode(text).ids]
    if empty:
        raise ValueError(
            f"sentences {empty[:5]} are empty (nothing to translate after normalisation); remove them first"
        )
    for start in range(0, len(texts), batch_size):
        encoded = [e.ids for e in tokenizer.encode_batch(texts[start : start + batch_size])]
        width = max(len(ids) for ids in encoded)
        if width > model.max_len:
            raise ValueError(
                f"a sentence is {width} tokens long, more than the model's max_len={model.max_len}; shorten or split it"
            )
        src = torch.tensor([ids + [model.pad_id] * (width - len(ids)) for ids in encoded], device=device)
        max_len = min(model.max_len, width + max_extra_tokens)
        if beam_size == 1:
            hyps = greedy_decode(model, src, bos_id=bos, eos_id=eos, max_len=max_len)
        else:
            hyps = beam_search(
                model, src, bos_id=bos, eos_id=eos, beam_size=beam_size, max_len=max_len, length_penalty=length_penalty
            )
        out += tokenizer.decode_batch(hyps)
    return out


def save_translation_checkpoint(
    path,
    model: Seq2SeqTransformer,
    tokenizer,
    *,
    scale: str,
    metadata: dict | None = None,
):
    """Save a trained translator to ``path`` (one file, written atomically); returns the path.

    The file holds the model's constructor arguments (``model.config``) and weights, the tokenizer
    (``tokenizer.to_str()``), the scale it was trained at, and ``metadata``: a dict of str keys and
    plain values (numbers, str, bool, None, lists and dicts of them) such as the training
    configuration, the BLEU it reached and ``n_test`` (how many sentences of
    :func:`tatoeba_test_set` it was scored on). :func:`load_translation_checkpoint` reads it back.
    """
    import json

    if not isinstance(model, Seq2SeqTransformer):
        raise TypeError(f"model must be a Seq2SeqTransformer, got {type(model).__name__}")
    _check_tokenizer(tokenizer)
    if not isinstance(scale, str) or not scale:
        raise ValueError(f"scale must be a non-empty str such as 'cpu', got {scale!r}")
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        metadata_json = json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata must hold only plain values (numbers, str, lists, dicts): {exc}") from None
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": dict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "tokenizer": tokenizer.to_str(),
        "scale": scale,
        "metadata": metadata_json,
    }
    return write_atomic(path, lambda handle: torch.save(payload, handle))


def load_translation_checkpoint(path, *, device: str | torch.device = "cpu"):
    """Read a file of :func:`save_translation_checkpoint`: returns ``(model, tokenizer, info)``.

    ``model`` is the :class:`Seq2SeqTransformer` in eval mode on ``device``, ``tokenizer`` the
    ``tokenizers.Tokenizer``, and ``info`` a dict with ``scale``, ``config`` and ``metadata``.
    A missing file raises ``FileNotFoundError``, a file that is not such a checkpoint ``ValueError``.
    """
    import json

    from tokenizers import Tokenizer

    payload = read_torch_file(path, what="translation checkpoint",
                              remedy="run notebooks/03_transformer.ipynb at this scale first")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a translation checkpoint of llmbook ({CHECKPOINT_FORMAT}); rerun chapter 3")
    model = Seq2SeqTransformer(**payload["config"])
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    tokenizer = Tokenizer.from_str(payload["tokenizer"])
    info = {"scale": payload["scale"], "config": dict(payload["config"]), "metadata": json.loads(payload["metadata"])}
    return model, tokenizer, info


@torch.no_grad()
def cross_attention_weights(model: Seq2SeqTransformer, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
    """The decoder's cross-attention weights, ``(num_decoder_layers, batch, heads, T, S)``.

    Runs the model on source ids ``src`` ``(batch, S)`` and decoder input ``tgt_in`` ``(batch, T)``
    (``<bos>`` then the translation) in eval mode and records, for every decoder layer, how much
    each target position's query attends to each source token. Each row sums to 1 over the real
    (non-padding) source tokens.
    """
    if not isinstance(model, Seq2SeqTransformer):
        raise TypeError(f"model must be a Seq2SeqTransformer, got {type(model).__name__}")
    model.eval()
    recorded: list[torch.Tensor] = []
    hooks = [
        layer.cross_attn.register_forward_hook(lambda module, args, output: recorded.append(output[1].detach()))
        for layer in model.decoder_layers
    ]
    try:
        model(src, tgt_in)
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(recorded)


__all__ += [
    "normalise_tatoeba",
    "tatoeba_test_set",
    "translate",
    "save_translation_checkpoint",
    "load_translation_checkpoint",
    "cross_attention_weights",
]


# --------------------------------------------------------------------------------------------------
# Training the chapter's translator in one call (the evaluation chapter's fallback)
# --------------------------------------------------------------------------------------------------

TRANSLATION_SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")


def train_bpe_tokenizer(texts: list[str], vocab_size: int, *, min_frequency: int = 2):
    """The chapter's joint BPE tokenizer: Metaspace + punctuation pre-tokenizer, specials ``<pad> <unk> <bos> <eos>``.

    Trained on ``texts`` (the English and French training sentences); ids 0-3 are the specials in that
    order. Decoding is exact: ``tokenizer.decode(tokenizer.encode(t).ids) == t`` for normalised text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    _check_positive(vocab_size=vocab_size)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(TRANSLATION_SPECIALS), min_frequency=min_frequency, show_progress=False
    )
    tokenizer.train_from_iterator(list(texts), trainer)
    return tokenizer


def token_budget_batches(
    src: list[list[int]],
    tgt: list[list[int]],
    max_tokens: int,
    *,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Indices of sentence pairs grouped into batches of at most ``max_tokens`` padded tokens per side.

    Pairs are sorted by (source length, target length) — after a shuffle with ``generator`` if one is
    given, so equal lengths come in random order — and cut greedily so that
    ``len(batch) * max(longest source, longest target + 2)`` stays within ``max_tokens`` (the
    target gets ``<bos>`` and ``<eos>``); a single pair longer than the budget is a batch of its own.
    With ``generator`` the batches are returned in random order.
    """
    if len(src) != len(tgt):
        raise ValueError(f"src and tgt must have the same number of sentences, got {len(src)} and {len(tgt)}")
    _check_positive(max_tokens=max_tokens)
    order = torch.randperm(len(src), generator=generator).tolist() if generator is not None else list(range(len(src)))
    order.sort(key=lambda i: (len(src[i]), len(tgt[i])))
    batches: list[list[int]] = []
    batch: list[int] = []
    width = 0
    for i in order:
        new_width = max(width, len(src[i]), len(tgt[i]) + 2)
        if batch and new_width * (len(batch) + 1) > max_tokens:
            batches.append(batch)
            batch, new_width = [], max(len(src[i]), len(tgt[i]) + 2)
        batch.append(i)
        width = new_width
    if batch:
        batches.append(batch)
    if generator is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def train_translation_model(cfg: dict, *, seed: int = 0, device: str | torch.device = "cpu", progress: bool = True):
    """Train the chapter's English→French translator from a sizes dict; returns ``(model, tokenizer, info)``.

    ``cfg`` has the keys of the chapter's sizes cell (``n_train`` (None = all), ``vocab``,
    ``max_tokens``, ``d_model``, ``heads``, ``layers``, ``d_ff``, ``dropout``, ``batch_tokens``,
    ``steps``, ``warmup``, ``lr``; others are ignored). The recipe is the chapter's: normalised
    ``tatoeba_fra_eng_full`` training pairs, a joint BPE tokenizer, pairs of at most ``max_tokens``
    tokens per side, token-budget batches, a pre-LN Transformer with all embeddings shared and tied,
    label smoothing 0.1, AdamW (β₂ = 0.98, weight decay 0.01), linear warmup + cosine decay, gradient
    clipping at 1. ``info`` has ``steps`` and ``train_seconds``. The evaluation chapter calls it when
    chapter 3's checkpoint is missing.
    """
    import time

    from transformers import get_cosine_schedule_with_warmup

    from llmbook.data import load_dataset

    required = ("n_train", "vocab", "max_tokens", "d_model", "heads", "layers", "d_ff", "dropout",
                "batch_tokens", "steps", "warmup", "lr")
    missing = [key for key in required if key not in cfg]
    if missing:
        raise ValueError(f"cfg lacks {', '.join(missing)}: pass the chapter's sizes dict (CFG of notebooks/03)")
    progress = require_bool("progress", progress)
    torch.manual_seed(seed)
    train = load_dataset("tatoeba_fra_eng_full", "train").iloc[: cfg["n_train"]]
    english = [normalise_tatoeba(t) for t in train.english]
    french = [normalise_tatoeba(t, french=True) for t in train.french]
    tokenizer = train_bpe_tokenizer(english + french, cfg["vocab"])
    pad, bos, eos = (_special_id(tokenizer, t) for t in ("<pad>", "<bos>", "<eos>"))
    src = [e.ids for e in tokenizer.encode_batch(english)]
    tgt = [e.ids for e in tokenizer.encode_batch(french)]
    keep = [i for i in range(len(src)) if len(src[i]) <= cfg["max_tokens"] and len(tgt[i]) <= cfg["max_tokens"]]
    src, tgt = [src[i] for i in keep], [tgt[i] for i in keep]
    vocab = tokenizer.get_vocab_size()
    model = Seq2SeqTransformer(
        vocab, vocab, d_model=cfg["d_model"], num_heads=cfg["heads"], num_encoder_layers=cfg["layers"],
        num_decoder_layers=cfg["layers"], d_ff=cfg["d_ff"], dropout=cfg["dropout"], max_len=128, pad_id=pad,
        norm_first=True, tie_output=True, share_embeddings=True,
    ).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.98), weight_decay=0.01)
    scheduler = get_cosine_schedule_with_warmup(optimizer, cfg["warmup"], cfg["steps"])
    criterion = nn.CrossEntropyLoss(ignore_index=pad, label_smoothing=0.1)

    def padded(seqs: list[list[int]]) -> torch.Tensor:
        width = max(len(s) for s in seqs)
        return torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)

    generator = torch.Generator().manual_seed(seed)
    step, start = 0, time.perf_counter()
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg["steps"], desc="training the translator")
    model.train()
    while step < cfg["steps"]:
        for batch in token_budget_batches(src, tgt, cfg["batch_tokens"], generator=generator):
            batch_src = padded([src[i] for i in batch])
            batch_tgt = padded([[bos] + tgt[i] + [eos] for i in batch])
            logits = model(batch_src, batch_tgt[:, :-1])
            loss = criterion(logits.float().reshape(-1, vocab), batch_tgt[:, 1:].reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            if progress:
                bar.update(1)
            if step == cfg["steps"]:
                break
    if progress:
        bar.close()
    model.eval()
    return model, tokenizer, {"steps": step, "train_seconds": time.perf_counter() - start}


__all__ += ["train_bpe_tokenizer", "token_budget_batches", "train_translation_model"]
