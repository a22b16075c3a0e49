"""Recommendation from implicit feedback: the protocol, classic baselines and language-model scorers.

Taught in the recommendation chapter (``notebooks/11_recommendation.ipynb``), on goodbooks-10k.

- **Protocol.** :func:`liked_pairs` turns star ratings into implicit feedback (4 or 5 stars =
  liked); :func:`leave_last_liked_out` holds out each user's last liked books in a fixed, seeded
  order (the sample has no timestamps); :func:`interaction_matrix` is the user × item 0/1 matrix;
  :func:`sample_negatives` draws items a user never rated, for the sampled protocol and for training;
  :func:`cap_item_likes` keeps at most ``n`` likes of chosen items, to ask how many likes a new
  item needs before behaviour can rank it.
- **Baselines.** :func:`popularity_scores`, :func:`item_cosine_scores` (item–item collaborative
  filtering, cosine on the interaction matrix), and matrix factorisation trained with BPR
  (:class:`MatrixFactorization`, :func:`train_bpr`).
- **Text.** :func:`genre_tags` keeps a book's genre-like user tags (generic shelves such as
  ``to-read`` or ``owned`` dropped); :func:`book_texts` writes each book as one line of text;
  :func:`mean_profiles` makes the user tower of a two-tower model (the mean of the liked items'
  embeddings; the item tower is :class:`llmbook.retrieval.EmbeddingIndex`); :func:`co_liked_pairs`
  are the training pairs for contrastive fine-tuning.
- **Cross-encoder.** :func:`cross_encoder_text` and :func:`cross_encoder_pairs` build the
  "candidate [SEP] titles of the user's recent liked books → liked?" examples;
  :func:`cross_encoder_scores` scores them with a fine-tuned classifier.
- **Evaluation.** :func:`top_k` (training items excluded, ties broken at random, not by id),
  :func:`merge_rankings` (multi-channel candidate generation), :func:`rank_candidates` (the sampled
  protocol), :func:`ranking_metrics` (per-user Recall@k, NDCG@k, HitRate@k and reciprocal rank, from
  :mod:`llmbook.metrics`), :func:`catalogue_coverage` and :func:`mean_popularity_percentile`.

Item indices are ``book_id - 1`` throughout (goodbooks-10k's ids run from 1 to 10,000); user
indices are rows of the interaction matrix, in the order of the ``users`` array that built it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import sparse

from llmbook.checks import require_bool, require_int

__all__ = [
    "LIKED_THRESHOLD",
    "GENERIC_SHELF",
    "Split",
    "liked_pairs",
    "leave_last_liked_out",
    "interaction_matrix",
    "sample_negatives",
    "cap_item_likes",
    "popularity_scores",
    "item_cosine_scores",
    "MatrixFactorization",
    "train_bpr",
    "is_generic_shelf",
    "genre_tags",
    "book_texts",
    "mean_profiles",
    "co_liked_pairs",
    "cross_encoder_text",
    "cross_encoder_pairs",
    "cross_encoder_scores",
    "top_k",
    "merge_rankings",
    "rank_candidates",
    "ranking_metrics",
    "catalogue_coverage",
    "mean_popularity_percentile",
]

LIKED_THRESHOLD = 4
"""A rating of at least this many stars counts as "liked" (implicit positive feedback)."""

GENERIC_SHELF = re.compile(
    r"read|^to-|own|fav|kindle|e-?books?$|audi|librar|wish|buy|shel|tbr|club|stars?$|^my-|default|dnf|"
    r"finish|abandon|borrow|challenge|nook|^i-|have|gave-up|series|stand-alone|(19|20)\d\d|1001|^\d+$"
)
"""User shelves that say what a reader did with a book (to-read, owned, kindle, read-in-2015,
favorites, book-club, ...) rather than what the book is. :func:`genre_tags` drops them."""


def _require_frame(frame: object, name: str, columns: Sequence[str]) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame with columns {', '.join(columns)}, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} has no column {missing[0]!r}: it needs {', '.join(columns)}")
    return frame


def _require_csr(matrix: object, name: str) -> sparse.csr_matrix:
    if not sparse.issparse(matrix):
        raise TypeError(f"{name} must be a scipy sparse user x item matrix (from interaction_matrix), got {type(matrix).__name__}")
    return sparse.csr_matrix(matrix)


# --------------------------------------------------------------------------------------------------
# Protocol
# --------------------------------------------------------------------------------------------------


def liked_pairs(ratings: pd.DataFrame, threshold: int = LIKED_THRESHOLD) -> pd.DataFrame:
    """The ``(user_id, book_id)`` pairs rated at least ``threshold`` stars: implicit positive feedback.

    Duplicate pairs are kept once. Rows come out sorted by user and book, so the result does not
    depend on the order of ``ratings``.
    """
    ratings = _require_frame(ratings, "ratings", ["user_id", "book_id", "rating"])
    threshold = require_int("threshold", threshold, minimum=1)
    liked = ratings.loc[ratings["rating"] >= threshold, ["user_id", "book_id"]].drop_duplicates()
    return liked.sort_values(["user_id", "book_id"], kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class Split:
    """The per-user split of :func:`leave_last_liked_out`.

    ``train``, ``validation`` and ``test`` have columns ``user_id``, ``book_id`` and ``position``
    (the book's place in the user's seeded order; the highest positions are the "most recent").
    ``users`` are the users with held-out books, in increasing id order.
    """

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    users: np.ndarray


def leave_last_liked_out(
    liked: pd.DataFrame, *, n_test: int = 1, n_validation: int = 1, min_train: int = 3, seed: int = 0
) -> Split:
    """Hold out each user's last liked books, in a fixed random order per user (seeded).

    The ratings have no timestamps, so each user's liked books are put in an order drawn with
    ``seed`` (one generator for all users, users in increasing id order): the last ``n_test`` books
    are the test items, the ``n_validation`` before them the validation items, the rest training.
    Users with fewer than ``min_train + n_validation + n_test`` liked books hold out nothing: all
    their books stay in training (they still teach the collaborative models), and they are not in
    ``users``. No held-out pair ever appears in ``train``.
    """
    liked = _require_frame(liked, "liked", ["user_id", "book_id"])
    n_test = require_int("n_test", n_test, minimum=1)
    n_validation = require_int("n_validation", n_validation, minimum=0)
    min_train = require_int("min_train", min_train, minimum=1)
    seed = require_int("seed", seed, minimum=0)
    if liked.duplicated(["user_id", "book_id"]).any():
        raise ValueError("liked lists a (user_id, book_id) pair twice: pass liked_pairs(ratings), which keeps each once")
    rng = np.random.default_rng(seed)
    frame = liked[["user_id", "book_id"]].sort_values(["user_id", "book_id"], kind="stable").reset_index(drop=True)
    counts = frame.groupby("user_id", sort=True).size()
    position = np.empty(len(frame), dtype=np.int64)
    start = 0
    for count in counts.to_numpy():
        position[start:start + count] = rng.permutation(count)
        start += count
    frame["position"] = position
    size = frame["user_id"].map(counts).to_numpy()
    eligible = size >= min_train + n_validation + n_test
    from_end = size - position  # 1 for the last book of a user
    is_test = eligible & (from_end <= n_test)
    is_validation = eligible & ~is_test & (from_end <= n_test + n_validation)
    is_train = ~(is_test | is_validation)

    def part(mask: np.ndarray) -> pd.DataFrame:
        chosen = frame.loc[mask].sort_values(["user_id", "position"], kind="stable")
        return chosen.reset_index(drop=True)

    users = np.unique(frame.loc[is_test, "user_id"].to_numpy())
    return Split(part(is_train), part(is_validation), part(is_test), users)


def interaction_matrix(pairs: pd.DataFrame, users: Sequence[int], n_items: int) -> sparse.csr_matrix:
    """The 0/1 ``(len(users), n_items)`` matrix of ``pairs``: row = position of the user in ``users``,
    column = ``book_id - 1``.

    Pairs of users not in ``users`` are refused (so a forgotten user cannot vanish silently), as are
    book ids outside ``1 .. n_items``.
    """
    pairs = _require_frame(pairs, "pairs", ["user_id", "book_id"])
    n_items = require_int("n_items", n_items, minimum=1)
    users = np.asarray(users)
    if users.ndim != 1 or len(np.unique(users)) != len(users):
        raise ValueError("users must be a 1-D array of distinct user ids (one per row of the matrix)")
    order = np.argsort(users, kind="stable")
    found = np.searchsorted(users[order], pairs["user_id"].to_numpy())
    found = np.clip(found, 0, len(users) - 1)
    known = users[order][found] == pairs["user_id"].to_numpy()
    if not known.all():
        raise ValueError(f"user_id {pairs['user_id'].to_numpy()[~known][0]} is not in users: add it, or drop its pairs")
    items = pairs["book_id"].to_numpy() - 1
    if len(items) and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"book ids must lie in 1..{n_items}, got {int(items.min()) + 1}..{int(items.max()) + 1}")
    rows = order[found]
    matrix = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, items)), shape=(len(users), n_items))
    matrix.data[:] = 1.0  # a pair listed twice is still one interaction
    return matrix


def sample_negatives(exclude: Sequence[set[int]], n_items: int, n: int, *, seed: int = 0) -> np.ndarray:
    """``(len(exclude), n)`` item indices, row ``i`` drawn without repetition from items not in ``exclude[i]``.

    ``exclude[i]`` holds every item the user interacted with (training, validation and test
    positives, and books rated but not liked), so a sampled negative is never a positive. Seeded:
    the same arguments give the same negatives.
    """
    n_items = require_int("n_items", n_items, minimum=1)
    n = require_int("n", n, minimum=1)
    seed = require_int("seed", seed, minimum=0)
    rng = np.random.default_rng(seed)
    out = np.empty((len(exclude), n), dtype=np.int64)
    for i, excluded in enumerate(exclude):
        excluded = set(int(x) for x in excluded)
        if n_items - sum(0 <= x < n_items for x in excluded) < n:
            raise ValueError(f"row {i} excludes {len(excluded)} of {n_items} items: fewer than n={n} are left to sample")
        chosen: list[int] = []
        seen: set[int] = set()
        while len(chosen) < n:
            for item in rng.integers(0, n_items, size=2 * n).tolist():
                if item not in excluded and item not in seen:
                    seen.add(item)
                    chosen.append(item)
                    if len(chosen) == n:
                        break
        out[i] = chosen
    return out


def cap_item_likes(train: sparse.spmatrix, items: Sequence[int], max_likes: int, *, seed: int = 0) -> sparse.csr_matrix:
    """A copy of ``train`` in which each of ``items`` keeps at most ``max_likes`` of its likes.

    The kept likes of an item are a seeded random choice among its likers; every other item's column
    is unchanged. With ``max_likes=0`` the items look like new arrivals that nobody has liked yet
    (their likes also leave their likers' histories, since a new book cannot be in anyone's
    history). The input matrix is not modified.
    """
    train = _require_csr(train, "train")
    max_likes = require_int("max_likes", max_likes, minimum=0)
    seed = require_int("seed", seed, minimum=0)
    items = np.unique(np.asarray(items, dtype=np.int64))
    if items.size and (items.min() < 0 or items.max() >= train.shape[1]):
        raise ValueError(f"items must be column indices in 0..{train.shape[1] - 1}, got {int(items.min())}..{int(items.max())}")
    rng = np.random.default_rng(seed)
    columns = train.tocsc(copy=True)  # an item's likes are one contiguous slice of a CSC matrix
    for item in items.tolist():
        start, end = columns.indptr[item], columns.indptr[item + 1]
        if end - start > max_likes:
            columns.data[start + rng.permutation(end - start)[max_likes:]] = 0
    columns.eliminate_zeros()
    return columns.tocsr()


# --------------------------------------------------------------------------------------------------
# Classic baselines
# --------------------------------------------------------------------------------------------------


def popularity_scores(train: sparse.spmatrix) -> np.ndarray:
    """How many training users liked each item: the popularity baseline's score, the same for every user."""
    return np.asarray(_require_csr(train, "train").sum(axis=0)).ravel()


def item_cosine_scores(train: sparse.spmatrix, user_rows: Sequence[int]) -> np.ndarray:
    """Item–item collaborative filtering: ``(len(user_rows), n_items)`` scores.

    The similarity of items ``i`` and ``j`` is the cosine of their columns of ``train`` (how many
    users liked both, over the square root of the product of their counts); a user's score for an
    item is the sum of its similarities with the user's training items. Computed as
    ``(X_u Xn^T) Xn`` with ``Xn`` the column-normalised matrix, never forming the items × items
    matrix.
    """
    train = _require_csr(train, "train")
    rows = np.asarray(user_rows, dtype=np.int64)
    norms = np.sqrt(np.asarray(train.sum(axis=0)).ravel())
    inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    normalised = train @ sparse.diags(inverse.astype(np.float32))
    profile = train[rows] @ normalised.T  # (users, all users): the users' weighted co-occurrences
    return np.asarray((profile @ normalised).todense(), dtype=np.float32)


class MatrixFactorization(torch.nn.Module):
    """``score(u, i) = p_u · q_i + b_i``: user and item vectors of size ``dim`` and an item bias."""

    def __init__(self, n_users: int, n_items: int, dim: int = 64, *, seed: int = 0) -> None:
        super().__init__()
        n_users = require_int("n_users", n_users, minimum=1)
        n_items = require_int("n_items", n_items, minimum=1)
        dim = require_int("dim", dim, minimum=1)
        generator = torch.Generator().manual_seed(require_int("seed", seed, minimum=0))
        self.users = torch.nn.Parameter(torch.randn(n_users, dim, generator=generator) * 0.1)
        self.items = torch.nn.Parameter(torch.randn(n_items, dim, generator=generator) * 0.1)
        self.item_bias = torch.nn.Parameter(torch.zeros(n_items))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.users[users] * self.items[items]).sum(-1) + self.item_bias[items]

    @torch.no_grad()
    def scores(self, user_rows: Sequence[int]) -> np.ndarray:
        """``(len(user_rows), n_items)`` scores of every item for these users."""
        users = torch.as_tensor(np.asarray(user_rows, dtype=np.int64))
        return (self.users[users] @ self.items.T + self.item_bias).numpy()


def train_bpr(
    train: sparse.spmatrix,
    *,
    dim: int = 64,
    epochs: int = 20,
    batch_size: int = 1024,
    lr: float = 5e-3,
    l2: float = 1e-4,
    seed: int = 0,
    progress: bool = True,
) -> tuple[MatrixFactorization, list[float]]:
    """Matrix factorisation trained with BPR (Bayesian personalised ranking): a liked item above a random one.

    Each epoch visits every training pair ``(u, i)`` once in a seeded random order, draws a random
    item ``j`` for it (resampled when ``j`` is one of the user's liked items) and minimises
    ``-log σ(score(u, i) - score(u, j))`` plus ``l2`` times the squared norms of the vectors used,
    with Adam. Returns the model and the mean loss of each epoch.
    """
    train = _require_csr(train, "train")
    epochs = require_int("epochs", epochs, minimum=1)
    batch_size = require_int("batch_size", batch_size, minimum=1)
    seed = require_int("seed", seed, minimum=0)
    progress = require_bool("progress", progress)
    for name, value in (("lr", lr), ("l2", l2)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < math.inf or (name == "lr" and value == 0):
            raise ValueError(f"{name} must be a {'positive' if name == 'lr' else 'non-negative'} finite number, got {value!r}")
    if train.nnz == 0:
        raise ValueError("train has no interactions: there is nothing to learn from")
    n_users, n_items = train.shape
    coo = train.tocoo()
    users, items = coo.row.astype(np.int64), coo.col.astype(np.int64)
    liked = np.sort(users * n_items + items)  # one integer key per liked pair, for a fast membership test
    rng = np.random.default_rng(seed)
    model = MatrixFactorization(n_users, n_items, dim, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses: list[float] = []
    threads = torch.get_num_threads()
    # The steps are tiny: a second thread only adds synchronisation, which on a busy machine costs
    # 10-20x (measured); one thread is as fast on a quiet one.
    torch.set_num_threads(1)
    try:
        _bpr_epochs(model, optimizer, users, items, liked, n_items, epochs, batch_size, l2, lr, rng, losses, progress)
    finally:
        torch.set_num_threads(threads)
    return model.eval(), losses


def _bpr_epochs(model, optimizer, users, items, liked, n_items, epochs, batch_size, l2, lr, rng, losses, progress):
    from tqdm.auto import tqdm

    for _ in tqdm(range(epochs), desc="BPR epochs", disable=not progress):
        order = rng.permutation(len(users))
        total = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            u, i = users[batch], items[batch]
            j = rng.integers(0, n_items, size=len(batch))
            for _ in range(3):  # resample the few negatives that are in fact liked
                keys = u * n_items + j
                found = np.minimum(np.searchsorted(liked, keys), len(liked) - 1)
                clash = liked[found] == keys
                if not clash.any():
                    break
                j[clash] = rng.integers(0, n_items, size=int(clash.sum()))
            u_t, i_t, j_t = (torch.as_tensor(x) for x in (u, i, j))
            difference = model(u_t, i_t) - model(u_t, j_t)
            penalty = (model.users[u_t].pow(2).sum(-1) + model.items[i_t].pow(2).sum(-1)
                       + model.items[j_t].pow(2).sum(-1)).mean()
            loss = -F.logsigmoid(difference).mean() + l2 * penalty
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        losses.append(total / len(order))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"BPR loss is {losses[-1]} after epoch {len(losses)}: lower lr (now {lr})")


# --------------------------------------------------------------------------------------------------
# Item text
# --------------------------------------------------------------------------------------------------


def is_generic_shelf(tag: str) -> bool:
    """True for shelves that describe the reader's activity (``to-read``, ``owned``, ``kindle``, ``favorites``)."""
    if not isinstance(tag, str):
        raise TypeError(f"tag must be a str, got {type(tag).__name__}")
    return bool(GENERIC_SHELF.search(tag.lower())) or not re.fullmatch(r"[a-z0-9-]+", tag.lower())


def genre_tags(book_tags: pd.DataFrame, n_tags: int = 6) -> dict[int, list[str]]:
    """Each book's ``n_tags`` most-used genre-like tags (generic shelves dropped), most used first.

    ``book_tags`` is ``load_dataset("goodbooks_10k", "book_tags")``. Tags that differ only in
    hyphens and plural ``s`` (``graphic-novel``/``graphic-novels``) are kept once. Returns
    ``{book_id: [tag, ...]}``; a book whose tags are all generic maps to an empty list.
    """
    book_tags = _require_frame(book_tags, "book_tags", ["book_id", "tag_name", "count"])
    n_tags = require_int("n_tags", n_tags, minimum=1)
    names = book_tags["tag_name"].astype(str)
    generic = {name: is_generic_shelf(name) for name in names.unique()}
    kept = book_tags.loc[~names.map(generic)].sort_values(["book_id", "count"], ascending=[True, False], kind="stable")
    out: dict[int, list[str]] = {int(b): [] for b in book_tags["book_id"].unique()}
    seen: dict[int, set[str]] = {}
    for book, tag in zip(kept["book_id"].to_numpy(), kept["tag_name"].to_numpy()):
        book = int(book)
        key = tag.lower().replace("-", "").rstrip("s")
        keys = seen.setdefault(book, set())
        if len(out[book]) < n_tags and key not in keys:
            keys.add(key)
            out[book].append(tag.lower())
    return out


def _clean(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value).strip()


def book_texts(books: pd.DataFrame, tags: dict[int, list[str]] | None = None, n_items: int | None = None) -> list[str]:
    """One line of text per item index (``book_id - 1``): title, original title, authors, year, tags.

    For example ``"The Hunger Games (The Hunger Games, #1) by Suzanne Collins, 2008. Tags:
    young-adult, fiction, dystopian"``. The original title is added only when it differs from the
    title; the tags (from :func:`genre_tags`) only when given. ``n_items`` (default: the largest
    book id) sets the length of the list; a missing book is refused.
    """
    books = _require_frame(books, "books", ["book_id", "title", "original_title", "authors", "original_publication_year"])
    n_items = int(books["book_id"].max()) if n_items is None else require_int("n_items", n_items, minimum=1)
    texts: list[str | None] = [None] * n_items
    for row in books.itertuples(index=False):
        title, original = _clean(row.title), _clean(row.original_title)
        text = title if not original or original.lower() in title.lower() else f"{title} [{original}]"
        authors = _clean(row.authors).replace(",", ", ").replace("  ", " ")
        if authors:
            text += f" by {authors}"
        year = row.original_publication_year
        if year is not None and not (isinstance(year, float) and math.isnan(year)):
            text += f", {int(year)}"
        if tags is not None and tags.get(int(row.book_id)):
            text += ". Tags: " + ", ".join(tags[int(row.book_id)])
        if 1 <= int(row.book_id) <= n_items:
            texts[int(row.book_id) - 1] = text
    missing = [i + 1 for i, t in enumerate(texts) if t is None]
    if missing:
        raise ValueError(f"books has no row for book_id {missing[0]} ({len(missing)} missing of 1..{n_items})")
    return texts  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------
# Two towers and the cross-encoder
# --------------------------------------------------------------------------------------------------


def _unit_item_vectors(item_vectors: object, n_items: int) -> np.ndarray:
    """``item_vectors`` as a float32 ``(n_items, dim)`` array of unit rows, or a clear error."""
    vectors = np.asarray(item_vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != n_items:
        raise ValueError(f"item_vectors must be (n_items={n_items}, dim), got shape {vectors.shape}")
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)


def mean_profiles(train: sparse.spmatrix, user_rows: Sequence[int], item_vectors: object) -> np.ndarray:
    """The user tower: the unit-length mean of the unit-length vectors of each user's training items.

    ``item_vectors`` is ``(n_items, dim)`` (e.g. ``EmbeddingIndex.embeddings``). A user without
    training items is refused: the mean of nothing has no direction.
    """
    train = _require_csr(train, "train")
    vectors = _unit_item_vectors(item_vectors, train.shape[1])
    rows = train[np.asarray(user_rows, dtype=np.int64)]
    empty = np.flatnonzero(np.diff(rows.indptr) == 0)
    if empty.size:
        raise ValueError(f"user row {int(np.asarray(user_rows)[empty[0]])} has no training items: no profile to average")
    profiles = np.asarray(rows @ vectors, dtype=np.float32)
    return profiles / np.linalg.norm(profiles, axis=1, keepdims=True).clip(1e-12)


def nearest_item_scores(train: sparse.spmatrix, user_rows: Sequence[int], item_vectors: object) -> np.ndarray:
    """Content-based item–item scores ``(len(user_rows), n_items)``: each item's cosine with the most
    similar of the user's training items (chapter 11).

    The text analogue of :func:`item_cosine_scores`, with the maximum in place of the sum. Cosines
    between text embeddings are dense (any two book descriptions are somewhat alike), so a sum or a
    mean over a long history is dominated by the many middling similarities — which is what
    :func:`mean_profiles` does — while the maximum keeps the one liked item that is really alike.
    ``item_vectors`` is ``(n_items, dim)`` and need not be unit length. A user without training items
    is refused: there is nothing to be near.
    """
    train = _require_csr(train, "train")
    vectors = _unit_item_vectors(item_vectors, train.shape[1])
    rows = np.asarray(user_rows, dtype=np.int64)
    scores = np.empty((len(rows), train.shape[1]), dtype=np.float32)
    for i, row in enumerate(rows):
        liked = train[row].indices
        if liked.size == 0:
            raise ValueError(f"user row {int(row)} has no training items: no item to be near")
        scores[i] = (vectors[liked] @ vectors.T).max(axis=0)  # one user at a time: liked x items floats
    return scores


def co_liked_pairs(train: sparse.spmatrix, n_pairs: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n_pairs`` item pairs liked by the same user, for contrastive fine-tuning of the item tower.

    Each pair picks a random training interaction ``(u, i)`` and a different item ``j`` that ``u``
    also liked (users with a single training item are skipped). Seeded. Returns two arrays of item
    indices, anchors and positives.
    """
    train = _require_csr(train, "train")
    n_pairs = require_int("n_pairs", n_pairs, minimum=1)
    rng = np.random.default_rng(require_int("seed", seed, minimum=0))
    counts = np.diff(train.indptr)
    users = np.flatnonzero(counts >= 2)
    if users.size == 0:
        raise ValueError("no user has two training items: there is no co-liked pair")
    weights = counts[users] / counts[users].sum()
    chosen = rng.choice(users, size=n_pairs, p=weights)
    anchors = np.empty(n_pairs, dtype=np.int64)
    positives = np.empty(n_pairs, dtype=np.int64)
    for n, u in enumerate(chosen):
        items = train.indices[train.indptr[u]:train.indptr[u + 1]]
        a, b = rng.choice(len(items), size=2, replace=False)
        anchors[n], positives[n] = items[a], items[b]
    return anchors, positives


def cross_encoder_text(history: Sequence[str], candidate: str, *, sep: str = "[SEP]") -> str:
    """``"candidate [SEP] title 1; title 2; ..."``: one input of the cross-encoder.

    The candidate comes first, so that truncation at the model's maximum length shortens the
    history, never the candidate (the source puts the history first, which is the same input
    for a model that attends both ways, as long as nothing is cut off).
    """
    if not isinstance(candidate, str) or not candidate.strip():
        raise ValueError("candidate must be a non-empty text")
    history = [h for h in history]
    if not history or not all(isinstance(h, str) and h.strip() for h in history):
        raise ValueError("history must be a non-empty list of non-empty titles")
    return f"{candidate} {sep} " + "; ".join(h.strip() for h in history)


def cross_encoder_pairs(
    train: pd.DataFrame,
    titles: Sequence[str],
    candidate_texts: Sequence[str],
    exclude: dict[int, set[int]],
    *,
    users: Sequence[int],
    n_history: int = 5,
    n_negatives: int = 3,
    seed: int = 0,
    sep: str = "[SEP]",
) -> pd.DataFrame:
    """Training examples for the cross-encoder: "candidate [SEP] recent liked titles" → liked (1) or not (0).

    For each user in ``users`` (with at least two training books) the most recent training book
    (highest ``position`` in ``train``) is the positive candidate and the ``n_history`` books
    before it are the history: the model learns to predict a user's next liked book from the
    previous ones, exactly the task it later solves for the held-out books. ``n_negatives`` books
    outside ``exclude[user_id]`` (every book the user rated) are the negatives, with the same history.
    ``titles`` and ``candidate_texts`` are indexed by item (``book_id - 1``). Returns a DataFrame with
    columns ``user_id``, ``item``, ``text``, ``label``.
    """
    train = _require_frame(train, "train", ["user_id", "book_id", "position"])
    n_history = require_int("n_history", n_history, minimum=1)
    n_negatives = require_int("n_negatives", n_negatives, minimum=1)
    ordered = train.sort_values(["user_id", "position"], kind="stable")
    by_user = {u: g["book_id"].to_numpy() - 1 for u, g in ordered.groupby("user_id", sort=True)}
    chosen = [u for u in users if len(by_user.get(u, ())) >= 2]
    if not chosen:
        raise ValueError("no user in users has two training books: nothing to build pairs from")
    negatives = sample_negatives([exclude[u] for u in chosen], len(candidate_texts), n_negatives, seed=seed)
    rows = []
    for u, negs in zip(chosen, negatives):
        items = by_user[u]
        history = [titles[i] for i in items[-1 - n_history:-1]]
        for item, label in [(int(items[-1]), 1)] + [(int(j), 0) for j in negs]:
            rows.append((u, item, cross_encoder_text(history, candidate_texts[item], sep=sep), label))
    return pd.DataFrame(rows, columns=["user_id", "item", "text", "label"])


@torch.no_grad()
def cross_encoder_scores(
    model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 64, max_length: int = 96,
    device: torch.device | str | None = None, progress: bool = False,
) -> np.ndarray:
    """The fine-tuned cross-encoder's score of each text: ``logit(liked) - logit(not liked)``.

    Texts are scored in order of length (less padding) and returned in their own order.
    """
    from tqdm.auto import tqdm

    from llmbook.runtime import get_device

    texts = list(texts)
    batch_size = require_int("batch_size", batch_size, minimum=1)
    max_length = require_int("max_length", max_length, minimum=2)
    device = get_device(device) if device is not None else get_device()
    model.to(device).eval()
    order = np.argsort([len(t) for t in texts], kind="stable")
    scores = np.empty(len(texts), dtype=np.float32)
    for start in tqdm(range(0, len(texts), batch_size), desc="cross-encoder scoring", disable=not progress):
        rows = order[start:start + batch_size]
        batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt").to(device)
        logits = model(**batch).logits.float()
        scores[rows] = (logits[:, 1] - logits[:, 0]).cpu().numpy()
    return scores


# --------------------------------------------------------------------------------------------------
# Ranking and evaluation
# --------------------------------------------------------------------------------------------------


def top_k(scores: object, k: int, *, exclude: sparse.spmatrix | None = None, seed: int = 0) -> np.ndarray:
    """The ``k`` best items of each row of ``scores`` ``(n_users, n_items)``, best first.

    Items in ``exclude`` (the users' training items, same shape) are never returned. Ties are
    broken in a seeded random order — not by item index, which in goodbooks-10k follows popularity
    and would give any model that ties (popularity for unseen books, item–item CF for unrelated
    ones) a hidden popularity prior.
    """
    matrix = np.array(scores, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"scores must be (n_users, n_items), got shape {matrix.shape}")
    k = require_int("k", k, minimum=1, maximum=matrix.shape[1])
    if exclude is not None:
        exclude = _require_csr(exclude, "exclude")
        if exclude.shape != matrix.shape:
            raise ValueError(f"exclude has shape {exclude.shape} but scores {matrix.shape}")
        rows, cols = exclude.nonzero()
        matrix[rows, cols] = -np.inf
    tiebreak = np.random.default_rng(require_int("seed", seed, minimum=0)).random(matrix.shape)
    # Candidates: everything at least as good as the k-th best, then an exact sort of those.
    part = np.argpartition(-matrix, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(matrix, part, axis=1).min(axis=1, keepdims=True)
    out = np.empty((matrix.shape[0], k), dtype=np.int64)
    for r in range(matrix.shape[0]):
        candidates = np.flatnonzero(matrix[r] >= kth[r, 0])
        order = np.lexsort((tiebreak[r, candidates], -matrix[r, candidates]))
        out[r] = candidates[order[:k]]
    return out


def merge_rankings(*rankings: object, k: int) -> list[np.ndarray]:
    """Per user, the union of several channels' top lists (multi-channel candidate generation).

    Takes the channels' ``(n_users, m)`` rankings in turn — first item of each, then second of
    each, ... — skipping repeats, until ``k`` distinct items are collected (or the lists run out).
    """
    k = require_int("k", k, minimum=1)
    arrays = [np.asarray(r) for r in rankings]
    if not arrays or any(a.ndim != 2 or len(a) != len(arrays[0]) for a in arrays):
        raise ValueError("pass one or more (n_users, m) rankings with the same number of users")
    out = []
    for r in range(len(arrays[0])):
        seen: dict[int, None] = {}
        for position in range(max(a.shape[1] for a in arrays)):
            for a in arrays:
                if position < a.shape[1] and len(seen) < k:
                    seen.setdefault(int(a[r, position]), None)
        out.append(np.fromiter(seen, dtype=np.int64))
    return out


def rank_candidates(candidate_scores: object, candidates: object) -> np.ndarray:
    """Sort each row of ``candidates`` by its ``candidate_scores`` (best first; ties keep the row's order).

    In the sampled protocol each row holds the held-out item at a random place among the sampled
    negatives, so a model that ties them (e.g. all zeros) ranks the positive at random, not first.
    """
    scores = np.asarray(candidate_scores, dtype=np.float64)
    items = np.asarray(candidates)
    if scores.shape != items.shape or scores.ndim != 2:
        raise ValueError(f"candidate_scores {scores.shape} and candidates {items.shape} must be the same 2-D shape")
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(items, order, axis=1)


def ranking_metrics(ranked: Sequence[Sequence[int]], relevant: Sequence[object], k: int = 10) -> pd.DataFrame:
    """Per-user ``Recall@k``, ``NDCG@k``, ``HitRate@k`` and ``RR`` (reciprocal rank within the list).

    One row per user, computed with :func:`llmbook.metrics.recall_at_k`, :func:`~llmbook.metrics.ndcg_at_k`,
    :func:`~llmbook.metrics.hit_rate` and :func:`~llmbook.metrics.mean_reciprocal_rank` on that
    user alone, so the columns' means are those metrics and :func:`llmbook.metrics.bootstrap_ci`
    can resample users. The reciprocal rank is 0 when no relevant item is in the list.
    """
    from llmbook.metrics import hit_rate, mean_reciprocal_rank, ndcg_at_k, recall_at_k

    k = require_int("k", k, minimum=1)
    if len(ranked) != len(relevant):
        raise ValueError(f"ranked has {len(ranked)} users but relevant has {len(relevant)}")
    rows = []
    for row, rel in zip(ranked, relevant):
        one, rel1 = [list(np.asarray(row).tolist())], [rel]
        rows.append((recall_at_k(one, rel1, k), ndcg_at_k(one, rel1, k), hit_rate(one, rel1, k),
                     mean_reciprocal_rank(one, rel1)))
    return pd.DataFrame(rows, columns=[f"Recall@{k}", f"NDCG@{k}", f"HitRate@{k}", "RR"])


def catalogue_coverage(ranked: Sequence[Sequence[int]], n_items: int) -> float:
    """The share of the catalogue that appears in at least one user's list."""
    n_items = require_int("n_items", n_items, minimum=1)
    seen = set()
    for row in ranked:
        seen.update(np.asarray(row).tolist())
    return len(seen) / n_items


def mean_popularity_percentile(ranked: Sequence[Sequence[int]], popularity: object) -> float:
    """Popularity bias: the mean popularity percentile (0-100) of the recommended items.

    ``popularity`` is the training like-count of each item; an item's percentile is the share of
    items strictly less popular, times 100. A popularity ranking scores near 100; uniform random
    lists score about 50 minus the share of tied unpopular items.
    """
    counts = np.asarray(popularity, dtype=np.float64)
    if counts.ndim != 1:
        raise ValueError("popularity must be one count per item")
    percentile = 100.0 * np.searchsorted(np.sort(counts), counts, side="left") / len(counts)
    items = np.concatenate([np.asarray(row, dtype=np.int64) for row in ranked])
    if items.size == 0:
        raise ValueError("ranked holds no items")
    return float(percentile[items].mean())
