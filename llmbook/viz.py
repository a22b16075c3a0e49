"""The book's figures: one matplotlib style, training curves and heatmaps.

Introduced in the getting-started chapter; the training, attention and evaluation chapters reuse
:func:`plot_history`, :func:`plot_heatmap` and :func:`plot_confusion_matrix`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from llmbook.checks import require_bool
from llmbook.metrics import confusion_matrix

BOOK_STYLE: dict[str, object] = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.frameon": False,
    "font.size": 10,
    "image.cmap": "viridis",
    "axes.prop_cycle": mpl.cycler(
        color=["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f"]
    ),
}


def use_book_style() -> None:
    """Apply the book's matplotlib style to every figure that follows."""
    mpl.rcParams.update(BOOK_STYLE)


def _as_2d_array(matrix: object, what: str) -> np.ndarray:
    if hasattr(matrix, "detach"):  # a torch tensor, possibly on a GPU or requiring grad
        matrix = matrix.detach().float().cpu().numpy()
    array = np.array(matrix)  # a copy: later edits to the input must not change the figure
    if array.ndim != 2:
        raise ValueError(f"{what} must be 2-D (rows x columns), got shape {tuple(array.shape)}")
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{what} must be numeric, got dtype {array.dtype}")
    return array


def plot_heatmap(
    matrix: object,
    *,
    x_labels: Sequence[str] | None = None,
    y_labels: Sequence[str] | None = None,
    title: str | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    annotate: bool = False,
    fmt: str = ".2f",
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar: bool = True,
    ax: Axes | None = None,
) -> Axes:
    """Draw a 2-D array (NumPy, pandas or torch) as a heatmap, e.g. attention weights or similarities.

    Row ``i`` is drawn top to bottom, so ``matrix[i, j]`` is "row label i, column label j" — the
    way attention matrices (query rows, key columns) are read. ``annotate`` writes each value.
    """
    annotate, colorbar = require_bool("annotate", annotate), require_bool("colorbar", colorbar)
    data = _as_2d_array(matrix, "matrix")
    for labels, size, axis in ((x_labels, data.shape[1], "x_labels"), (y_labels, data.shape[0], "y_labels")):
        if labels is not None and len(labels) != size:
            raise ValueError(f"{axis} has {len(labels)} labels but the matrix of shape {data.shape} needs {size}")
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.45 * data.shape[1] + 2), max(3.0, 0.4 * data.shape[0] + 1.5)))
    image = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.grid(False)
    if x_labels is not None:
        ax.set_xticks(range(len(x_labels)), labels=list(x_labels), rotation=60, ha="right", rotation_mode="anchor")
    if y_labels is not None:
        ax.set_yticks(range(len(y_labels)), labels=list(y_labels))
    if annotate:
        for (i, j), value in np.ndenumerate(data):
            ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=8,
                    color=_text_colour_on(image.cmap(image.norm(value))))
    if colorbar:
        ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title or "")
    ax.set_xlabel(xlabel or "")
    ax.set_ylabel(ylabel or "")
    return ax


def _text_colour_on(rgba: Sequence[float]) -> str:
    """Black or white, whichever is readable on a cell of colour ``rgba``.

    Decided by the cell's luminance, not by the value, so it is right for every colour map:
    light-to-dark ones such as ``Blues``, dark-to-light ones such as ``viridis`` and diverging ones.
    """
    red, green, blue = rgba[:3]
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"


def plot_confusion_matrix(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    labels: Sequence[str],
    *,
    normalize: bool = True,
    title: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Heatmap of the confusion matrix (rows: true class, columns: predicted class).

    With ``normalize`` each row sums to 1, so the diagonal is per-class recall. Class ids must be
    ``0 .. len(labels) - 1`` (``labels[k]`` names class ``k``); any other id raises ``ValueError``
    rather than leave its examples out of the figure.
    """
    normalize = require_bool("normalize", normalize)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must have the same shape")
    if y_true.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D arrays of class ids, got shape {y_true.shape}")
    if isinstance(labels, str) or len(labels) == 0:
        raise ValueError(f"labels must be a non-empty list of class names, got {labels!r}")
    checked = []
    for name, ids in (("y_true", y_true), ("y_pred", y_pred)):
        if ids.dtype == bool:
            ids = ids.astype(np.int64)  # False / True are classes 0 and 1
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"{name} must hold integer class ids, got dtype {ids.dtype}")
        outside = ids[(ids < 0) | (ids >= len(labels))]
        if outside.size:
            raise ValueError(
                f"{name} holds class id {int(outside[0])}, but labels names {len(labels)} classes "
                f"(ids 0..{len(labels) - 1}): pass a name for every class"
            )
        checked.append(ids.astype(np.int64))
    if y_true.size:
        counts = confusion_matrix(*checked, num_classes=len(labels))
    else:  # nothing to count: an empty (all-zero) matrix
        counts = np.zeros((len(labels), len(labels)), dtype=np.int64)
    if normalize:
        totals = counts.sum(axis=1, keepdims=True)
        values = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    else:
        values = counts
    return plot_heatmap(
        values,
        x_labels=labels,
        y_labels=labels,
        annotate=len(labels) <= 12,
        fmt=".2f" if normalize else "d",
        vmin=0,
        vmax=1 if normalize else None,
        cmap="Blues",
        title=title or ("Confusion matrix (row-normalised)" if normalize else "Confusion matrix"),
        xlabel="predicted",
        ylabel="true",
        ax=ax,
    )


def _history_frame(history: object) -> pd.DataFrame:
    if isinstance(history, pd.DataFrame):
        return history
    if isinstance(history, Mapping):
        return pd.DataFrame({k: pd.Series(v, dtype=float) for k, v in history.items()})
    if isinstance(history, Sequence) and all(isinstance(row, Mapping) for row in history):
        return pd.DataFrame.from_records(list(history))
    raise TypeError(
        "history must be a DataFrame, a dict of lists ({'train_loss': [...]}) or a list of dicts "
        f"([{{'step': 1, 'train_loss': 2.3}}, ...]); got {type(history).__name__}"
    )


_BOOKKEEPING = ("epoch", "lr", "learning_rate")


def plot_history(history: object, *, x: str | None = "step", title: str | None = None) -> Figure:
    """Training curves: losses on the left panel, every other metric on the right.

    ``history`` is a list of dicts logged during training (``{"step": 100, "train_loss": 1.2,
    "val_accuracy": 0.8}``), a dict of lists, or a DataFrame. Columns whose name contains ``loss``
    are losses. Missing values (a metric logged less often than the loss) are skipped, so
    evaluation points show as markers on their own steps. ``x`` names the column for the x-axis
    (default ``step``; if absent, the row number is used). Bookkeeping columns — ``epoch`` and the
    learning rate (``lr``, ``learning_rate``) — are not curves of the model's quality and are left out.
    """
    frame = _history_frame(history)
    if frame.empty:
        raise ValueError("history is empty: log at least one step before plotting")
    xs = frame[x] if x is not None and x in frame else pd.Series(np.arange(len(frame)), index=frame.index)
    columns = [c for c in frame.columns
               if c != x and c not in _BOOKKEEPING and pd.api.types.is_numeric_dtype(frame[c])]
    losses = [c for c in columns if "loss" in c.lower()]
    metrics = [c for c in columns if c not in losses]
    if not columns:
        raise ValueError(f"history has no numeric columns to plot besides {x!r}: {list(frame.columns)}")
    panels = [group for group in (losses, metrics) if group]
    # Two panels share the book's column (about 9 inches at most), so the labels stay legible there.
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 if len(panels) == 1 else 9.0, 3.6), squeeze=False)
    for ax, group, label in zip(axes[0], panels, ["loss" if losses else "metric", "metric"]):
        for column in group:
            series = frame[column]
            known = series.notna()
            sparse = known.sum() < 0.5 * len(series)
            ax.plot(xs[known], series[known], marker="o" if sparse else None, markersize=4, label=column)
        ax.set_xlabel(x if x is not None and x in frame else "step")
        ax.set_ylabel(label)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
