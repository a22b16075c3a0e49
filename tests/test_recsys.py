"""The recommendation chapter's protocol, baselines and text helpers (llmbook.recsys)."""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

from llmbook import recsys as R
from llmbook.metrics import ndcg_at_k


def toy_liked(n_users=6, n_items=12, per_user=6, seed=0):
    rng = np.random.default_rng(seed)
    rows = [(u + 100, int(b) + 1) for u in range(n_users) for b in rng.choice(n_items, per_user - (u % 2), replace=False)]
    return pd.DataFrame(rows, columns=["user_id", "book_id"])


def test_liked_pairs_keeps_four_and_five_stars_once():
    ratings = pd.DataFrame({"user_id": [1, 1, 1, 2, 2], "book_id": [3, 4, 4, 3, 5], "rating": [5, 4, 4, 3, 2]})
    liked = R.liked_pairs(ratings)
    assert liked.values.tolist() == [[1, 3], [1, 4]]
    with pytest.raises(ValueError, match="no column 'rating'"):
        R.liked_pairs(ratings.drop(columns="rating"))


def test_split_holds_out_the_last_liked_books_and_never_trains_on_them():
    liked = toy_liked()
    split = R.leave_last_liked_out(liked, n_test=2, n_validation=1, min_train=2, seed=3)
    train = set(zip(split.train.user_id, split.train.book_id))
    held = set(zip(split.test.user_id, split.test.book_id)) | set(zip(split.validation.user_id, split.validation.book_id))
    assert not train & held  # no held-out pair is ever a training pair
    assert train | held == set(zip(liked.user_id, liked.book_id))  # nothing lost
    assert (split.test.groupby("user_id").size() == 2).all() and (split.validation.groupby("user_id").size() == 1).all()
    for user, group in split.test.groupby("user_id"):
        # test items are the user's last in the seeded order: above every training and validation position
        others = pd.concat([split.train, split.validation])
        assert group.position.min() > others.loc[others.user_id == user, "position"].max()
    assert list(split.users) == sorted(split.test.user_id.unique())


def test_split_is_seeded_and_skips_users_with_short_histories():
    liked = toy_liked()
    a = R.leave_last_liked_out(liked, n_test=1, n_validation=1, min_train=4, seed=0)
    b = R.leave_last_liked_out(liked.sample(frac=1, random_state=1), n_test=1, n_validation=1, min_train=4, seed=0)
    pd.testing.assert_frame_equal(a.test, b.test)  # same seed, any input order: same split
    c = R.leave_last_liked_out(liked, n_test=1, n_validation=1, min_train=4, seed=1)
    assert not a.test.equals(c.test)
    # users with 5 liked books (odd ids) have fewer than 4 + 1 + 1: they hold out nothing and keep all in train
    short = [u for u, n in liked.groupby("user_id").size().items() if n < 6]
    assert short and not set(short) & set(a.users)
    assert all((a.train.user_id == u).sum() == 5 for u in short)
    with pytest.raises(ValueError, match="twice"):
        R.leave_last_liked_out(pd.concat([liked, liked.head(1)]))


def test_interaction_matrix_rows_follow_users_and_refuses_unknown_ones():
    pairs = pd.DataFrame({"user_id": [7, 5, 7, 7], "book_id": [1, 3, 3, 3]})
    matrix = R.interaction_matrix(pairs, np.array([7, 5]), 4)
    assert matrix.toarray().tolist() == [[1, 0, 1, 0], [0, 0, 1, 0]]
    with pytest.raises(ValueError, match="user_id 5 is not in users"):
        R.interaction_matrix(pairs, np.array([7]), 4)
    with pytest.raises(ValueError, match="book ids must lie in 1..2"):
        R.interaction_matrix(pairs, np.array([7, 5]), 2)


def test_negatives_never_hit_an_excluded_item_and_are_seeded():
    exclude = [set(range(0, 90)), {1, 2, 3}, set()]
    negatives = R.sample_negatives(exclude, 100, 10, seed=0)
    assert negatives.shape == (3, 10)
    for row, excluded in zip(negatives, exclude):
        assert len(set(row)) == 10 and not set(row) & excluded and ((0 <= row) & (row < 100)).all()
    np.testing.assert_array_equal(negatives, R.sample_negatives(exclude, 100, 10, seed=0))
    with pytest.raises(ValueError, match="fewer than n=11"):
        R.sample_negatives(exclude, 100, 11)


def test_popularity_and_item_cosine_by_hand():
    # users x items: items 0 and 1 are always liked together, item 2 never with them
    train = sparse.csr_matrix(np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=np.float32))
    np.testing.assert_array_equal(R.popularity_scores(train), [3, 2, 1])
    scores = R.item_cosine_scores(train, [3])  # user 3 liked item 0 only
    x = train.toarray()
    cosine = (x.T @ x) / np.sqrt(np.outer(x.sum(0), x.sum(0)))
    np.testing.assert_allclose(scores[0], cosine[0], rtol=1e-6)
    assert scores[0, 1] > 0 and scores[0, 2] == 0


def test_bpr_learns_a_block_structure():
    # two groups of users who like two disjoint groups of items; one pair of each held out
    x = np.zeros((20, 10), dtype=np.float32)
    x[:10, :5] = 1
    x[10:, 5:] = 1
    x[0, 4] = x[10, 9] = 0
    model, losses = R.train_bpr(sparse.csr_matrix(x), dim=8, epochs=60, batch_size=32, lr=0.05, progress=False)
    assert losses[-1] < losses[0]
    scores = model.scores([0, 10])
    assert scores[0, 4] > scores[0, 5:].max() and scores[1, 9] > scores[1, :5].max()
    with pytest.raises(ValueError, match="no interactions"):
        R.train_bpr(sparse.csr_matrix((3, 3)), progress=False)


def test_generic_shelves_are_dropped_and_genres_kept():
    for tag in ["to-read", "currently-reading", "favorites", "owned", "books-i-own", "kindle", "read-in-2015",
                "book-club", "ebook", "audiobook", "library", "wish-list", "series", "5-stars"]:
        assert R.is_generic_shelf(tag), tag
    for tag in ["fantasy", "young-adult", "science-fiction", "historical-fiction", "mystery", "romance", "classics"]:
        assert not R.is_generic_shelf(tag), tag
    book_tags = pd.DataFrame({
        "book_id": [1, 1, 1, 1, 1, 2],
        "tag_name": ["to-read", "Fantasy", "graphic-novels", "graphic-novel", "magic", "owned"],
        "count": [100, 50, 40, 30, 20, 10],
    })
    assert R.genre_tags(book_tags, n_tags=2) == {1: ["fantasy", "graphic-novels"], 2: []}


def test_book_texts_write_title_authors_year_and_tags():
    books = pd.DataFrame({
        "book_id": [2, 1], "title": ["Dune", "Harry Potter and the Sorcerer's Stone (Harry Potter, #1)"],
        "original_title": ["Dune", "Harry Potter and the Philosopher's Stone"],
        "authors": ["Frank Herbert", "J.K. Rowling,Mary GrandPré"], "original_publication_year": [1965.0, np.nan],
    })
    texts = R.book_texts(books, {2: ["science-fiction"]})
    assert texts[1] == "Dune by Frank Herbert, 1965. Tags: science-fiction"
    assert texts[0] == ("Harry Potter and the Sorcerer's Stone (Harry Potter, #1) [Harry Potter and the "
                        "Philosopher's Stone] by J.K. Rowling, Mary GrandPré")
    with pytest.raises(ValueError, match="no row for book_id 3"):
        R.book_texts(books, n_items=3)


def test_mean_profiles_and_the_retrieval_index_agree():
    from llmbook.retrieval import EmbeddingIndex

    vectors = np.array([[1, 0], [0, 2], [1, 1]], dtype=np.float32)
    train = sparse.csr_matrix(np.array([[1, 1, 0], [0, 0, 1]], dtype=np.float32))
    profiles = R.mean_profiles(train, [0, 1], vectors)
    np.testing.assert_allclose(profiles[0], [2 ** -0.5, 2 ** -0.5], rtol=1e-6)  # mean of two unit vectors
    index = EmbeddingIndex(vectors)
    np.testing.assert_allclose(index.scores(profiles), profiles @ index.embeddings.T, rtol=1e-6)
    with pytest.raises(ValueError, match="no training items"):
        R.mean_profiles(sparse.csr_matrix((1, 3), dtype=np.float32), [0], vectors)


def test_nearest_item_scores_keep_the_closest_liked_item():
    # a reader of two unrelated genres: items 0 and 1 are the liked books, at right angles
    vectors = np.array([[1, 0], [0, 3], [0.99, 0.14], [1, 1]], dtype=np.float32)
    train = sparse.csr_matrix(np.array([[1, 1, 0, 0]], dtype=np.float32))
    scores = R.nearest_item_scores(train, [0], vectors)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = np.maximum(unit @ unit[0], unit @ unit[1])
    np.testing.assert_allclose(scores[0], expected, rtol=1e-6)
    # item 2 is almost a copy of liked item 0; item 3 lies between the two tastes.
    # The maximum ranks the near copy first, the mean profile the item in between.
    assert scores[0, 2] > scores[0, 3]
    mean_scores = R.mean_profiles(train, [0], vectors) @ unit.T
    assert mean_scores[0, 3] > mean_scores[0, 2]


def test_nearest_item_scores_match_a_brute_force_maximum():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(30, 8)).astype(np.float32)
    likes = rng.random((6, 30)) < 0.2
    likes[:, 7] = True  # every user likes something
    train = sparse.csr_matrix(likes.astype(np.float32))
    rows = [4, 0, 2]
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = np.array([np.max([unit @ unit[j] for j in train[r].indices], axis=0) for r in rows])
    np.testing.assert_allclose(R.nearest_item_scores(train, rows, vectors), expected, rtol=1e-5, atol=1e-6)


def test_nearest_item_scores_refuse_bad_input():
    vectors = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="no training items"):
        R.nearest_item_scores(sparse.csr_matrix((1, 3), dtype=np.float32), [0], vectors)
    with pytest.raises(ValueError, match="item_vectors must be"):
        R.nearest_item_scores(sparse.csr_matrix(np.ones((1, 4), dtype=np.float32)), [0], vectors)


def test_co_liked_pairs_come_from_one_users_likes():
    train = sparse.csr_matrix(np.array([[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 0, 0]], dtype=np.float32))
    anchors, positives = R.co_liked_pairs(train, 50, seed=0)
    pairs = set(zip(anchors.tolist(), positives.tolist()))
    assert pairs <= {(0, 1), (1, 0), (2, 3), (3, 2)}


def test_cross_encoder_pairs_use_the_most_recent_book_as_positive():
    train = pd.DataFrame({"user_id": [1, 1, 1, 2], "book_id": [3, 1, 2, 4], "position": [2, 0, 1, 0]})
    titles = [f"title {i}" for i in range(10)]
    texts = [f"text {i}" for i in range(10)]
    exclude = {1: {0, 1, 2}, 2: {3}}
    pairs = R.cross_encoder_pairs(train, titles, texts, exclude, users=[1, 2], n_history=5, n_negatives=2, seed=0)
    assert list(pairs.user_id) == [1, 1, 1]  # user 2 has one training book: no history
    assert pairs.label.tolist() == [1, 0, 0]
    assert pairs.text[0] == "text 2 [SEP] title 0; title 1"  # candidate first, then history in order
    assert not set(pairs.item[1:]) & exclude[1]
    assert R.cross_encoder_text(["a"], "b", sep="</s>") == "b </s> a"


def test_top_k_excludes_training_items_and_breaks_ties_at_random():
    scores = np.zeros((2, 50))
    scores[:, 7] = 5
    exclude = sparse.csr_matrix(np.eye(2, 50))  # user 0 excludes item 0, user 1 item 1
    top = R.top_k(scores, 10, exclude=exclude, seed=0)
    assert (top[:, 0] == 7).all() and 0 not in top[0] and 1 not in top[1]
    assert not (np.sort(top[0, 1:]) == np.arange(1, 10)).all()  # ties are not broken by item index
    assert all(len(set(row)) == 10 for row in top)


def test_merge_rankings_and_rank_candidates():
    merged = R.merge_rankings(np.array([[1, 2, 3]]), np.array([[2, 4, 5]]), k=4)
    assert merged[0].tolist() == [1, 2, 4, 3]
    ranked = R.rank_candidates(np.array([[0.1, 0.9, 0.1]]), np.array([[10, 11, 12]]))
    assert ranked.tolist() == [[11, 10, 12]]


def test_ranking_metrics_per_user_match_the_metrics_module():
    ranked = [[1, 2, 3, 4], [4, 3, 2, 1]]
    relevant = [3, [1, 2]]
    table = R.ranking_metrics(ranked, relevant, k=2)
    assert table["HitRate@2"].tolist() == [0.0, 0.0]
    table = R.ranking_metrics(ranked, relevant, k=3)
    assert table["Recall@3"].tolist() == [1.0, 0.5]
    assert table["NDCG@3"].mean() == pytest.approx(ndcg_at_k(ranked, relevant, 3))
    assert table["RR"].tolist() == [pytest.approx(1 / 3), pytest.approx(1 / 3)]


def test_coverage_and_popularity_percentile():
    assert R.catalogue_coverage([[0, 1], [1, 2]], 10) == pytest.approx(0.3)
    popularity = np.array([10, 5, 1, 0])
    assert R.mean_popularity_percentile([[0], [0]], popularity) == pytest.approx(75.0)
    assert R.mean_popularity_percentile([[3, 2]], popularity) == pytest.approx(12.5)


def test_cross_encoder_scores_keep_input_order():
    class Toy(torch.nn.Module):
        def forward(self, input_ids, attention_mask, token_type_ids=None):
            from types import SimpleNamespace

            length = attention_mask.sum(1, keepdim=True).float()
            return SimpleNamespace(logits=torch.cat([torch.zeros_like(length), length], 1))

    class Tok:
        def __call__(self, texts, **kwargs):
            from transformers.tokenization_utils_base import BatchEncoding

            n = max(len(t.split()) for t in texts)
            mask = torch.tensor([[1] * len(t.split()) + [0] * (n - len(t.split())) for t in texts])
            return BatchEncoding({"input_ids": mask.clone(), "attention_mask": mask})

    scores = R.cross_encoder_scores(Toy(), Tok(), ["a b c", "a", "a b"], batch_size=2, device="cpu")
    np.testing.assert_allclose(scores, [3, 1, 2])


def test_cap_item_likes_keeps_at_most_n_likes_of_the_chosen_items_only():
    rng = np.random.default_rng(0)
    train = sparse.csr_matrix((rng.random((40, 6)) < 0.5).astype(np.float32))
    before = train.copy()
    capped = R.cap_item_likes(train, [1, 4], 2, seed=3)
    counts = np.asarray(capped.sum(axis=0)).ravel()
    assert counts[1] == min(2, before[:, 1].sum()) and counts[4] == min(2, before[:, 4].sum())
    for item in [0, 2, 3, 5]:  # untouched columns
        assert (capped[:, item] != before[:, item]).nnz == 0
    assert (capped - capped.multiply(before)).nnz == 0  # only removals, never an invented like
    assert (train != before).nnz == 0  # the input is not modified
    assert (R.cap_item_likes(train, [1, 4], 2, seed=3) != capped).nnz == 0  # seeded
    assert R.cap_item_likes(train, [1], 0).getcol(1).nnz == 0  # a new arrival: no likes at all
    assert (R.cap_item_likes(train, [1], 100) != train).nnz == 0  # a cap above the count changes nothing


def test_cap_item_likes_refuses_bad_input():
    train = sparse.csr_matrix(np.ones((3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="max_likes must be at least 0"):
        R.cap_item_likes(train, [0], -1)
    with pytest.raises(ValueError, match=r"column indices in 0..3"):
        R.cap_item_likes(train, [4], 1)
    with pytest.raises(TypeError, match="scipy sparse"):
        R.cap_item_likes(np.ones((3, 4)), [0], 1)
