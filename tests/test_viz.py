import matplotlib as mpl
import numpy as np
import pandas as pd
import pytest
import torch

from llmbook import viz


def test_use_book_style_sets_rcparams():
    mpl.rcdefaults()
    viz.use_book_style()
    assert mpl.rcParams["axes.spines.top"] is False and mpl.rcParams["axes.grid"] is True


def test_plot_heatmap_draws_the_matrix_with_labels():
    matrix = np.arange(6, dtype=float).reshape(2, 3)
    ax = viz.plot_heatmap(matrix, x_labels=["a", "b", "c"], y_labels=["q1", "q2"], annotate=True, title="t")
    np.testing.assert_array_equal(ax.images[0].get_array(), matrix)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert len(ax.texts) == 6 and ax.get_title() == "t"


def test_plot_heatmap_accepts_tensors_that_require_grad():
    weights = torch.softmax(torch.randn(4, 4, requires_grad=True), dim=-1)
    ax = viz.plot_heatmap(weights, colorbar=False)
    assert ax.images[0].get_array().shape == (4, 4)


def test_plot_heatmap_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"must be 2-D .* got shape \(2, 3, 4\)"):
        viz.plot_heatmap(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"x_labels has 2 labels but the matrix of shape \(2, 3\) needs 3"):
        viz.plot_heatmap(np.zeros((2, 3)), x_labels=["a", "b"])
    with pytest.raises(ValueError, match="numeric"):
        viz.plot_heatmap(np.array([["a", "b"]]))


def test_confusion_matrix_rows_are_recall():
    ax = viz.plot_confusion_matrix([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], labels=["x", "y", "z"])
    values = np.asarray(ax.images[0].get_array())
    np.testing.assert_allclose(values, [[0.5, 0.5, 0], [0, 1, 0], [1, 0, 0]])
    counts = viz.plot_confusion_matrix([0, 1], [1, 1], labels=["x", "y"], normalize=False)
    np.testing.assert_array_equal(np.asarray(counts.images[0].get_array()), [[0, 1], [0, 1]])
    with pytest.raises(ValueError, match="same shape"):
        viz.plot_confusion_matrix([0, 1], [1], labels=["x", "y"])


def test_plot_history_splits_losses_and_metrics():
    history = [{"step": s, "train_loss": 1 / s} for s in range(1, 11)]
    history[4]["val_loss"], history[9]["val_loss"] = 0.5, 0.2
    history[4]["val_accuracy"], history[9]["val_accuracy"] = 0.6, 0.8
    fig = viz.plot_history(history, title="run")
    loss_ax, metric_ax = fig.axes
    assert [line.get_label() for line in loss_ax.lines] == ["train_loss", "val_loss"]
    assert list(loss_ax.lines[1].get_xdata()) == [5, 10]  # sparse evaluations are plotted at their own steps
    assert [line.get_label() for line in metric_ax.lines] == ["val_accuracy"]


def test_plot_history_accepts_dicts_and_frames():
    assert len(viz.plot_history({"loss": [3, 2, 1]}, x=None).axes) == 1
    assert len(viz.plot_history(pd.DataFrame({"step": [1, 2], "accuracy": [0.1, 0.2]})).axes) == 1


def test_plot_history_bad_input():
    with pytest.raises(ValueError, match="empty"):
        viz.plot_history([])
    with pytest.raises(TypeError, match="history must be"):
        viz.plot_history(42)
    with pytest.raises(ValueError, match="no numeric columns"):
        viz.plot_history([{"step": 1, "note": "x"}])
