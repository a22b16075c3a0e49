import os

import matplotlib
import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure

from llmbook import diagrams


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _drawn_in(tmp_path, monkeypatch, draw):
    """Call ``draw`` in an empty working directory and check that it wrote no file there."""
    monkeypatch.chdir(tmp_path)
    fig = draw()
    assert os.listdir(tmp_path) == []
    assert isinstance(fig, Figure)
    return diagrams.figure_texts(fig)


def test_transformer_diagram_has_both_stacks_and_the_cross_attention(tmp_path, monkeypatch):
    texts = _drawn_in(tmp_path, monkeypatch, lambda: diagrams.draw_transformer(num_layers=6))
    for label in ("Encoder", "Decoder", "Input embedding", "Output embedding", "Multi-head self-attention",
                  "Masked multi-head self-attention", "Cross-attention", "Feed-forward", "Linear", "Softmax",
                  "encoder output → keys, values", "6×", "×6"):
        assert label in texts, label
    assert texts.count("+ positional encoding") == 2
    assert texts.count("Add & Norm") == 5  # two per encoder layer, three per decoder layer


def test_attention_head_diagram_follows_the_formula(tmp_path, monkeypatch):
    texts = _drawn_in(tmp_path, monkeypatch, diagrams.draw_attention_head)
    for label in ("× W_Q", "× W_K", "× W_V", "Q (queries)", "K (keys)", "V (values)", "scores\nQ Kᵀ / √d_k",
                  "softmax over\nkeys → A", "weighted sum\nA V"):
        assert label in texts, label
    assert not any(t.startswith("mask") for t in texts)
    masked = diagrams.figure_texts(diagrams.draw_attention_head(masked=True))
    assert "mask\n(blocked → −∞)" in masked


def test_multi_head_diagram_has_one_box_and_one_weight_matrix_per_head(tmp_path, monkeypatch):
    texts = _drawn_in(tmp_path, monkeypatch, lambda: diagrams.draw_multi_head(num_heads=3, d_model=96))
    heads = [t for t in texts if t.startswith("head ")]
    assert heads == [f"head {i}: attention\non 32 features → A_{i}" for i in (1, 2, 3)]
    assert "split into 3 × 32" in texts and "concatenate\n(L × 96)" in texts and "× W_O\noutput" in texts


def test_multi_head_diagram_refuses_a_width_the_heads_do_not_divide():
    with pytest.raises(ValueError, match=r"d_model \(100\) must be divisible by num_heads \(3\)"):
        diagrams.draw_multi_head(num_heads=3, d_model=100)
    with pytest.raises(TypeError, match="num_heads must be an integer"):
        diagrams.draw_multi_head(num_heads=2.0)


def test_mask_diagram_draws_the_book_masks(tmp_path, monkeypatch):
    tokens = ["a", "b", "[PAD]"]
    fig_texts = _drawn_in(tmp_path, monkeypatch, lambda: diagrams.draw_masks(tokens))
    assert "Padding mask: no query looks at [PAD]" in fig_texts
    assert "Causal mask: no query looks ahead" in fig_texts
    fig = plt.gcf()
    padding_ax, causal_ax = fig.axes
    marks = lambda ax: [t.get_text() for t in ax.texts]  # noqa: E731 - row by row, left to right
    assert marks(padding_ax) == ["✓", "✓", "×"] * 3
    assert marks(causal_ax) == ["✓", "×", "×", "✓", "✓", "×", "✓", "✓", "✓"]
    assert [t.get_text() for t in causal_ax.get_xticklabels()] == tokens
    with pytest.raises(ValueError, match="non-empty list of strings"):
        diagrams.draw_masks([])
