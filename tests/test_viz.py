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


def test_plot_history_leaves_out_epoch_and_learning_rate():
    # llmbook.train.fit logs epoch and lr with every training row; they are not quality curves.
    history = [{"step": s, "epoch": 1 + s // 5, "lr": 1e-4, "train_loss": 1 / s} for s in range(1, 11)]
    history.append({"step": 10, "epoch": 2, "val_loss": 0.3, "val_macro_f1": 0.7})
    loss_ax, metric_ax = viz.plot_history(history).axes
    assert [line.get_label() for line in loss_ax.lines] == ["train_loss", "val_loss"]
    assert [line.get_label() for line in metric_ax.lines] == ["val_macro_f1"]


def test_annotation_text_is_readable_on_light_and_dark_cells():
    # Blues is light for small values and dark for large ones; viridis the other way round.
    blues = viz.plot_confusion_matrix([0, 0, 0, 0, 1], [0, 0, 0, 1, 1], labels=["x", "y"])
    colours = {t.get_text(): t.get_color() for t in blues.texts}
    assert colours["0.75"] == "white" and colours["0.00"] == "black"  # dark cell, light cell
    dark_low = viz.plot_heatmap(np.array([[0.0, 1.0]]), annotate=True, cmap="viridis")
    assert [t.get_color() for t in dark_low.texts] == ["white", "black"]
    diverging = viz.plot_heatmap(np.array([[-1.0, 0.0, 1.0]]), annotate=True, cmap="RdBu_r", vmin=-1, vmax=1)
    assert [t.get_color() for t in diverging.texts] == ["white", "black", "white"]


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


def test_confusion_matrix_refuses_class_ids_without_a_name():
    # class 3 has no name: its examples must not silently vanish from the figure
    with pytest.raises(ValueError, match=r"y_true holds class id 3, but labels names 3 classes \(ids 0..2\)"):
        viz.plot_confusion_matrix([0, 1, 3], [0, 1, 2], labels=["x", "y", "z"])
    with pytest.raises(ValueError, match="y_pred holds class id -100"):
        viz.plot_confusion_matrix([0, 1], [0, -100], labels=["x", "y"])
    with pytest.raises(TypeError, match="integer class ids"):
        viz.plot_confusion_matrix([0.0, 1.0], [0, 1], labels=["x", "y"])
    # booleans are classes 0 and 1
    ax = viz.plot_confusion_matrix(np.array([True, False]), np.array([True, True]), labels=["no", "yes"])
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), [[0, 1], [0, 1]])


def test_flags_refuse_strings():
    # "false" is a true value in Python: it would switch the option on
    with pytest.raises(TypeError, match="annotate must be True or False, got 'false'"):
        viz.plot_heatmap(np.zeros((2, 2)), annotate="false")
    with pytest.raises(TypeError, match="colorbar must be True or False"):
        viz.plot_heatmap(np.zeros((2, 2)), colorbar="no")
    with pytest.raises(TypeError, match="normalize must be True or False"):
        viz.plot_confusion_matrix([0, 1], [1, 1], labels=["x", "y"], normalize="false")
    assert len(viz.plot_heatmap(np.zeros((2, 2)), annotate=np.bool_(True)).texts) == 4
