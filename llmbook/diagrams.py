"""Block diagrams of the Transformer, drawn with matplotlib from code (no image files).

Chapter 1 and chapter 3 (``notebooks/03_transformer.ipynb``) show the encoder–decoder with
:func:`draw_transformer`; the attention chapter (``notebooks/02_attention.ipynb``) shows one head
(:func:`draw_attention_head`), how multi-head attention splits and concatenates
(:func:`draw_multi_head`) and the two masks (:func:`draw_masks`).

Every function returns a :class:`~matplotlib.figure.Figure` and writes no file; each box is a
text artist, so a test (or a reader) can list what a diagram contains with :func:`figure_texts`.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle
from matplotlib.text import Text

from llmbook.checks import require_bool, require_int

__all__ = ["draw_transformer", "draw_attention_head", "draw_multi_head", "draw_masks", "figure_texts"]

# One colour per kind of block, the same in every diagram, so a reader can match blocks across figures.
COLOURS: dict[str, str] = {
    "embed": "#fde2c8",      # embeddings and positional encoding
    "attention": "#f7c6c7",  # any attention block
    "norm": "#fff3b0",       # add & norm
    "ffn": "#c6e2f7",        # feed-forward and linear layers
    "output": "#d5f0d0",     # softmax / outputs
    "tensor": "#eeeeee",     # data (Q, K, V, scores, ...)
}


def figure_texts(fig: Figure) -> list[str]:
    """Every non-empty string shown on ``fig`` (box labels, titles, axis and tick labels), in drawing order.

    Tick labels of axes that are switched off (the diagrams' drawing canvas) are not shown, so not listed.
    """
    texts: list[Text] = list(fig.texts)
    if fig._suptitle is not None:
        texts.append(fig._suptitle)
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, *ax.texts]
        if ax.axison:
            texts += [ax.xaxis.label, ax.yaxis.label, *ax.get_xticklabels(), *ax.get_yticklabels()]
    return [t.get_text() for t in texts if t.get_visible() and t.get_text().strip()]


def _canvas(width: float, height: float, xlim: float, ylim: float) -> tuple[Figure, Axes]:
    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_xlim(0, xlim)
    ax.set_ylim(0, ylim)
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def _box(ax: Axes, x: float, y: float, w: float, h: float, text: str, kind: str, *, fontsize: float = 8.5) -> None:
    """A rounded box with its lower-left corner at ``(x, y)`` and ``text`` centred in it."""
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.12",
                                facecolor=COLOURS[kind], edgecolor="#444444", linewidth=0.9))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float], *, style: str = "-|>",
           connection: str = "arc3", colour: str = "#333333") -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=10, linewidth=1.0,
                                 color=colour, connectionstyle=connection, shrinkA=0, shrinkB=0))


def _residual(ax: Axes, x_centre: float, x_edge: float, y_from: float, y_to: float, side: float) -> None:
    """A residual connection: from the main path at ``(x_centre, y_from)`` out past the box edge
    ``x_edge`` on ``side`` (-1 left, +1 right), along, and back into the box at height ``y_to``."""
    x_out = x_edge + side * 0.3
    ax.plot([x_centre, x_out, x_out], [y_from, y_from, y_to], color="#888888", linewidth=0.9)
    _arrow(ax, (x_out, y_to), (x_edge, y_to), colour="#888888")


def _stack(ax: Axes, x: float, y0: float, w: float, blocks: Sequence[tuple[str, str]], *, h: float = 0.55,
           gap: float = 0.35) -> list[tuple[float, float]]:
    """Draw ``blocks`` (label, kind) bottom to top with arrows between them; return each box's (bottom, top)."""
    spans = []
    y = y0
    for i, (label, kind) in enumerate(blocks):
        _box(ax, x, y, w, h, label, kind)
        if i:
            _arrow(ax, (x + w / 2, y - gap), (x + w / 2, y))
        spans.append((y, y + h))
        y += h + gap
    return spans


def draw_transformer(
    *, num_layers: str | int = "N", title: str | None = "The Transformer (encoder–decoder)"
) -> Figure:
    """The encoder–decoder Transformer of Vaswani et al. (2017), as a block diagram.

    Left, the encoder: token embedding plus positional encoding, then ``num_layers`` identical layers of
    multi-head self-attention and a feed-forward network, each followed by a residual connection and
    layer normalisation ("Add & Norm", the post-LN order of the paper). Right, the decoder: the same, with
    *masked* (causal) self-attention and a cross-attention block whose keys and values are the encoder's
    output (the arrow across). On top: a linear layer to vocabulary logits and a softmax giving
    p(next token). ``num_layers`` labels the repeat brackets ("N" or a number such as 6).
    """
    if not isinstance(num_layers, str):
        num_layers = str(require_int("num_layers", num_layers, minimum=1))
    fig, ax = _canvas(7.2, 7.6, 10.0, 10.6)
    w, h, gap = 3.2, 0.55, 0.35
    enc_x, dec_x = 0.6, 6.0

    # Encoder (left).
    ax.text(enc_x + w / 2, 0.15, "source tokens", ha="center", va="center", fontsize=9, style="italic")
    enc = _stack(ax, enc_x, 0.6, w, [
        ("Input embedding", "embed"),
        ("+ positional encoding", "embed"),
        ("Multi-head self-attention", "attention"),
        ("Add & Norm", "norm"),
        ("Feed-forward", "ffn"),
        ("Add & Norm", "norm"),
    ], h=h, gap=gap)
    _arrow(ax, (enc_x + w / 2, 0.3), (enc_x + w / 2, enc[0][0]))
    # Residual connections skip around each sub-layer.
    for sub, norm in ((2, 3), (4, 5)):
        _residual(ax, enc_x + w / 2, enc_x, enc[sub][0] - gap / 2, (enc[norm][0] + enc[norm][1]) / 2, -1)
    bracket_bottom, bracket_top = enc[2][0] - 0.12, enc[5][1] + 0.12
    ax.add_patch(Rectangle((enc_x - 0.45, bracket_bottom), w + 0.9, bracket_top - bracket_bottom,
                           fill=False, edgecolor="#777777", linestyle="--", linewidth=0.9))
    ax.text(enc_x - 0.55, (bracket_bottom + bracket_top) / 2, f"{num_layers}×", ha="right", va="center", fontsize=10)
    ax.text(enc_x - 0.45, bracket_top + 0.1, "Encoder", ha="left", va="bottom", fontsize=11, weight="bold")

    # Decoder (right).
    ax.text(dec_x + w / 2, 0.15, "target tokens, shifted right", ha="center", va="center", fontsize=9, style="italic")
    dec = _stack(ax, dec_x, 0.6, w, [
        ("Output embedding", "embed"),
        ("+ positional encoding", "embed"),
        ("Masked multi-head self-attention", "attention"),
        ("Add & Norm", "norm"),
        ("Cross-attention", "attention"),
        ("Add & Norm", "norm"),
        ("Feed-forward", "ffn"),
        ("Add & Norm", "norm"),
        ("Linear", "ffn"),
        ("Softmax", "output"),
    ], h=h, gap=gap)
    _arrow(ax, (dec_x + w / 2, 0.3), (dec_x + w / 2, dec[0][0]))
    for sub, norm in ((2, 3), (4, 5), (6, 7)):
        _residual(ax, dec_x + w / 2, dec_x + w, dec[sub][0] - gap / 2, (dec[norm][0] + dec[norm][1]) / 2, +1)
    bracket_bottom, bracket_top = dec[2][0] - 0.12, dec[7][1] + 0.12
    ax.add_patch(Rectangle((dec_x - 0.45, bracket_bottom), w + 0.9, bracket_top - bracket_bottom,
                           fill=False, edgecolor="#777777", linestyle="--", linewidth=0.9))
    ax.text(dec_x + w + 0.55, (bracket_bottom + bracket_top) / 2, f"×{num_layers}", ha="left", va="center",
            fontsize=10)
    ax.text(dec_x + w + 0.55, bracket_top, "Decoder", ha="left", va="top", fontsize=11, weight="bold")
    _arrow(ax, (dec_x + w / 2, dec[-1][1]), (dec_x + w / 2, dec[-1][1] + 0.35))
    ax.text(dec_x + w / 2, dec[-1][1] + 0.45, "p(next target token)", ha="center", va="bottom", fontsize=9,
            style="italic")

    # The encoder's output feeds every decoder layer's cross-attention as keys and values: up from the
    # encoder, across the gap, down beside the decoder and into its cross-attention block.
    enc_top = enc[-1][1]
    cross_mid = (dec[4][0] + dec[4][1]) / 2
    lane_x, lane_y = dec_x - 0.75, enc_top + 0.45
    ax.plot([enc_x + w / 2, enc_x + w / 2, lane_x, lane_x], [enc_top, lane_y, lane_y, cross_mid],
            color="#b22222", linewidth=1.0)
    _arrow(ax, (lane_x, cross_mid), (dec_x, cross_mid), colour="#b22222")
    ax.text((enc_x + w + lane_x) / 2, lane_y + 0.08, "encoder output → keys, values", ha="center", va="bottom",
            fontsize=8, color="#b22222")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def draw_attention_head(*, masked: bool = False, title: str | None = "One attention head") -> Figure:
    """One head of scaled dot-product attention, left to right.

    The input ``X`` (one row per token) is projected three times, by ``W_Q``, ``W_K``, ``W_V``, into
    queries, keys and values; the scores ``Q Kᵀ / √d_k`` compare every query with every key; a softmax
    over the keys (each row sums to 1) turns them into weights ``A``; the output ``A V`` is, for each
    query, the weighted sum of the values. With ``masked`` a mask step sits before the softmax.
    """
    masked = require_bool("masked", masked)
    fig, ax = _canvas(8.0, 3.6, 16.0, 7.0)
    bw, bh = 1.9, 0.9
    _box(ax, 0.12, 3.0, 1.58, 1.0, "X\n(L × d_model)", "tensor", fontsize=7.5)
    rows = {"Q": 5.6, "K": 3.05, "V": 0.5}
    for name, y in rows.items():
        _arrow(ax, (1.7, 3.5), (2.5, y + bh / 2), connection="arc3,rad=0")
        _box(ax, 2.5, y, bw, bh, f"× W_{name}", "ffn")
        _arrow(ax, (2.5 + bw, y + bh / 2), (4.9, y + bh / 2))
        _box(ax, 4.9, y, 1.8, bh, {"Q": "Q (queries)", "K": "K (keys)", "V": "V (values)"}[name], "tensor", fontsize=8)
    score_y = 4.3
    _arrow(ax, (6.7, rows["Q"] + bh / 2), (7.3, score_y + bh / 2 + 0.2))
    _arrow(ax, (6.7, rows["K"] + bh / 2), (7.3, score_y + bh / 2 - 0.2))
    steps: list[tuple[str, str]] = [("scores\nQ Kᵀ / √d_k", "tensor")]
    if masked:
        steps.append(("mask\n(blocked → −∞)", "tensor"))
    steps.append(("softmax over\nkeys → A", "attention"))
    x = 7.3
    width = 2.3 if masked else 2.8
    for i, (label, kind) in enumerate(steps):
        _box(ax, x, score_y, width, bh + 0.1, label, kind, fontsize=8)
        if i + 1 < len(steps):
            _arrow(ax, (x + width, score_y + 0.5), (x + width + 0.35, score_y + 0.5))
        x += width + 0.35
    weighted_x = x - 0.35 - width / 2 - 1.2
    _box(ax, weighted_x, 1.3, 2.6, bh + 0.1, "weighted sum\nA V", "output", fontsize=8.5)
    _arrow(ax, (x - 0.35 - width / 2, score_y), (weighted_x + 1.6, 1.3 + bh + 0.1))
    _arrow(ax, (6.7, rows["V"] + bh / 2), (weighted_x, 1.8), connection="arc3,rad=0")
    _arrow(ax, (weighted_x + 2.6, 1.8), (weighted_x + 3.1, 1.8))
    ax.text(weighted_x + 3.2, 1.8, "output\n(L × d_v)", ha="left", va="center", fontsize=8.5)
    ax.text(x - 0.35 - width / 2 + 0.15, 3.6, "each row of A\nsums to 1", ha="left", va="center", fontsize=7.5,
            style="italic")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def draw_multi_head(num_heads: int = 4, d_model: int = 512, *,
                    title: str | None = "Multi-head attention: split, attend, concatenate") -> Figure:
    """Multi-head attention with ``num_heads`` heads over a width of ``d_model``.

    Q, K and V (each ``L × d_model``) are projected and split along the feature axis into ``num_heads``
    slices of ``d_model / num_heads`` features; each head runs its own scaled dot-product attention
    (its own weight matrix ``A_h``, one per head); the outputs are concatenated back to ``d_model``
    features and mixed by ``W_O``.
    """
    num_heads = require_int("num_heads", num_heads, minimum=1, maximum=8)
    d_model = require_int("d_model", d_model, minimum=1)
    if d_model % num_heads:
        raise ValueError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads}): pick e.g. "
                         f"d_model={num_heads * max(1, round(d_model / num_heads))}")
    d_head = d_model // num_heads
    height = max(4.0, 1.1 * num_heads + 1.0)
    fig, ax = _canvas(8.0, max(3.0, 0.55 * height + 0.8), 15.0, height)
    mid = height / 2
    _box(ax, 0.2, mid - 0.6, 2.3, 1.2, f"Q, K, V\n(L × {d_model})", "tensor")
    _box(ax, 3.0, mid - 0.6, 2.3, 1.2, "project\n× W_Q, W_K, W_V", "ffn")
    _arrow(ax, (2.5, mid), (3.0, mid))
    head_y = [height - 1.0 - i * (height - 1.0) / num_heads for i in range(num_heads)]
    for i, y in enumerate(head_y):
        centre = y - 0.2
        _arrow(ax, (5.3, mid), (6.2, centre), connection="arc3,rad=0")
        _box(ax, 6.2, centre - 0.4, 3.2, 0.8, f"head {i + 1}: attention\non {d_head} features → A_{i + 1}",
             "attention", fontsize=7.5)
        _arrow(ax, (9.4, centre), (10.2, mid), connection="arc3,rad=0")
    ax.text(5.75, height - 0.25, f"split into {num_heads} × {d_head}", ha="center", va="center", fontsize=8)
    _box(ax, 10.2, mid - 0.6, 2.0, 1.2, f"concatenate\n(L × {d_model})", "tensor")
    _box(ax, 12.6, mid - 0.6, 2.2, 1.2, "× W_O\noutput", "output")
    _arrow(ax, (12.2, mid), (12.6, mid))
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def _draw_mask(ax: Axes, allowed: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str],
               title: str) -> None:
    rows, cols = allowed.shape
    ax.imshow(np.where(allowed, 1, 0), cmap=ListedColormap(["#d9d9d9", "#ffffff"]), vmin=0, vmax=1, aspect="equal")
    for i in range(rows):
        for j in range(cols):
            ax.text(j, i, "✓" if allowed[i, j] else "×", ha="center", va="center", fontsize=9,
                    color="#1a7f37" if allowed[i, j] else "#b22222")
    ax.set_xticks(range(cols), labels=list(col_labels), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(rows), labels=list(row_labels))
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    ax.grid(False)
    ax.set_title(title, fontsize=10)


def draw_masks(tokens: Sequence[str] = ("the", "cat", "sat", "[PAD]", "[PAD]"), *,
               pad_token: str = "[PAD]") -> Figure:
    """The two masks side by side for one padded sequence: padding mask (left) and causal mask (right).

    ✓ marks a (query, key) pair that may attend, × one that is blocked (its score is set to −∞ before
    the softmax, so its weight is exactly 0). The padding mask blocks the key columns of ``pad_token``;
    the causal mask blocks every key after the query (the upper triangle), so position ``t`` sees only
    positions ``≤ t``. The masks drawn are the book's own: :func:`llmbook.attention.padding_mask` and
    :func:`llmbook.attention.causal_mask`.
    """
    import torch

    from llmbook.attention import causal_mask, padding_mask

    tokens = list(tokens)
    if not tokens or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"tokens must be a non-empty list of strings, got {tokens!r}")
    real = torch.tensor([[t != pad_token for t in tokens]], dtype=torch.long)
    padding = padding_mask(real)[0, 0].expand(len(tokens), len(tokens)).numpy()
    causal = causal_mask(len(tokens)).numpy()
    fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.8))
    _draw_mask(axes[0], padding, tokens, tokens, "Padding mask: no query looks at [PAD]".replace("[PAD]", pad_token))
    _draw_mask(axes[1], causal, tokens, tokens, "Causal mask: no query looks ahead")
    fig.tight_layout()
    return fig
