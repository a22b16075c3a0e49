"""NDCG@k and HitRate@k (recommendation chapter), beside the existing Recall@k and MRR."""

import math

import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from llmbook.metrics import hit_rate, mean_reciprocal_rank, ndcg_at_k, recall_at_k


def test_ndcg_hand_computed_cases():
    # one relevant item at rank 3: 1/log2(4) = 0.5
    assert ndcg_at_k([[7, 8, 9, 10]], [9], k=4) == pytest.approx(0.5)
    # two relevant at ranks 1 and 3 out of two: (1 + 0.5) / (1 + 1/log2(3))
    assert ndcg_at_k([[1, 2, 3]], [{1, 3}], k=3) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    # relevant item beyond k scores 0; the mean is over queries
    assert ndcg_at_k([[1, 2, 3], [4, 5, 6]], [3, 4], k=2) == pytest.approx(0.5)
    # more relevant ids than k: the ideal ranking fills all k places
    assert ndcg_at_k([["a", "b"]], [["a", "b", "c"]], k=2) == pytest.approx(1.0)


@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_ndcg_agrees_with_sklearn(k):
    rng = np.random.default_rng(0)
    n_queries, n_items = 20, 12
    y_true = (rng.random((n_queries, n_items)) < 0.25).astype(int)
    y_true[y_true.sum(axis=1) == 0, 0] = 1  # every query has a relevant item
    y_score = rng.random((n_queries, n_items))  # untied
    ranked = np.argsort(-y_score, axis=1)
    relevant = [np.flatnonzero(row) for row in y_true]
    assert ndcg_at_k(ranked, relevant, k) == pytest.approx(ndcg_score(y_true, y_score, k=k))


def test_hit_rate_and_recall_agree_with_one_relevant_item():
    ranked = [[3, 1, 2], [2, 3, 1], [1, 2, 3]]
    relevant = [2, 1, 1]
    assert hit_rate(ranked, relevant, k=1) == pytest.approx(1 / 3)
    assert hit_rate(ranked, relevant, k=2) == pytest.approx(1 / 3)
    assert hit_rate(ranked, relevant, k=3) == 1.0
    for k in (1, 2, 3):
        assert hit_rate(ranked, relevant, k) == recall_at_k(ranked, relevant, k)
    # with several relevant ids a hit needs only one of them
    assert hit_rate([[5, 6, 7]], [{6, 9}], k=2) == 1.0 and recall_at_k([[5, 6, 7]], [{6, 9}], k=2) == 0.5
    assert mean_reciprocal_rank(ranked, relevant) == pytest.approx((1 / 3 + 1 / 3 + 1) / 3)


@pytest.mark.parametrize("metric", [ndcg_at_k, hit_rate])
def test_ranking_errors_are_clear(metric):
    with pytest.raises(ValueError, match="ranked is empty"):
        metric([], [], k=1)
    with pytest.raises(ValueError, match="relevant\\[0\\] is empty"):
        metric([[1, 2]], [[]], k=1)
    with pytest.raises(ValueError, match="k must be"):
        metric([[1, 2]], [1], k=0)
    with pytest.raises(ValueError, match="lists id 2 more than once"):
        metric([[1, 2, 2]], [1], k=3)
    with pytest.raises(ValueError, match="lists only 2 ids"):
        metric([[1, 2]], [1], k=3)
    with pytest.raises(ValueError, match="ranked has 1 queries but relevant has 2"):
        metric([[1, 2]], [1, 2], k=1)
    with pytest.raises(TypeError, match="2-D"):
        metric([1, 2], [1, 2], k=1)
