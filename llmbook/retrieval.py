"""Dense retrieval: an exact embedding index, nearest centroids, contrastive fine-tuning, near-duplicate groups.

Taught in the customer-service chapter (``notebooks/09_customer_service.ipynb``); the recommendation
chapter reuses :class:`EmbeddingIndex` for item similarity.

- :class:`EmbeddingIndex` holds unit-length embeddings of a list of texts (or any vectors) and
  returns the exact top-k by cosine similarity with NumPy: ``EmbeddingIndex.build(texts, embed_fn)``
  (or ``model=..., tokenizer=...`` for a ``transformers`` encoder), then ``index.search(query, k)``.
  Exact search compares the query with every row — fine for the tens of thousands of items in this
  book; libraries such as faiss trade exactness for speed on millions.
- :func:`centroid_index`: the nearest-centroid classifier of the getting-started chapter, as an index
  over one centroid per class (``search(..., k=1)`` predicts).
- :func:`in_batch_negatives_loss` and :func:`contrastive_finetune`: fine-tune the embedder on
  (question, matching text) pairs, each pair's partner being the positive and every other partner in
  the batch a negative (the recipe of DPR and of sentence-transformers' MultipleNegativesRankingLoss).
- :func:`near_duplicate_groups`: connected groups of near-identical texts, so that an evaluation can
  keep every near-duplicate of a test question out of the index (template-expanded data sets are
  full of them).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from llmbook.checks import require_bool, require_int

__all__ = [
    "EmbeddingIndex",
    "SearchResult",
    "centroid_index",
    "contrastive_finetune",
    "encoder_embed_fn",
    "in_batch_negatives_loss",
    "near_duplicate_groups",
]

EmbedFn = Callable[[list[str]], Any]
"""A function from a list of texts to an ``(n, dim)`` array or tensor of their embeddings."""


def _as_text_list(texts: object, name: str) -> list[str]:
    if isinstance(texts, str) or not hasattr(texts, "__iter__") or isinstance(texts, dict):
        raise TypeError(f"{name} must be a list of strings, got {type(texts).__name__}")
    items = list(texts.tolist() if hasattr(texts, "tolist") else texts)
    if not items:
        raise ValueError(f"{name} is empty: need at least one text")
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] is {type(text).__name__}, not str")
        if not text.strip():
            raise ValueError(f"{name}[{i}] is empty (or only whitespace): drop it or fill it in")
    return items


def _as_matrix(values: object, name: str) -> np.ndarray:
    """``values`` (array or tensor) as a finite float32 matrix with at least one row and column."""
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    try:
        matrix = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a numeric (n, dim) array or tensor, got {type(values).__name__}") from None
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (n, dim) matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name} contains NaN or infinite values: check the model that produced them")
    return matrix


def _normalise_rows(matrix: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        raise ValueError(f"{name} row {int(zero[0])} is all zeros: it has no direction, so no cosine similarity")
    return matrix / norms


def encoder_embed_fn(
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    batch_size: int = 64,
    max_length: int = 64,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> EmbedFn:
    """A function that embeds a list of texts with a ``transformers`` encoder (masked mean pooling).

    It calls :func:`llmbook.embed.embed_texts`, so the vectors are those of the getting-started
    chapter; texts are embedded in order of length (less padding) and returned in their own order.
    ``model`` may be an ``AutoModel`` or a :class:`llmbook.textclf.MeanPoolingClassifier`
    (its encoder is used, so a fine-tuned classifier can embed too).
    """
    from llmbook.embed import embed_texts

    encoder = getattr(model, "base_model", model)
    if not isinstance(encoder, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module such as transformers.AutoModel, got {type(model).__name__}")
    batch_size = require_int("batch_size", batch_size, minimum=1)
    max_length = require_int("max_length", max_length, minimum=2)
    progress = require_bool("progress", progress)

    def embed(texts: list[str]) -> torch.Tensor:
        # Embed the texts sorted by length (less padding per batch), then put them back in order.
        texts = list(texts)
        order = np.argsort([len(t) for t in texts], kind="stable")
        vectors = embed_texts([texts[i] for i in order], tokenizer, encoder, batch_size=batch_size,
                              max_length=max_length, device=device, progress=progress)
        return vectors[torch.as_tensor(np.argsort(order, kind="stable"))]

    return embed


@dataclass(frozen=True)
class SearchResult:
    """The hits of :meth:`EmbeddingIndex.search`, best first.

    For one query ``indices`` and ``scores`` have shape ``(k,)`` and ``texts`` is a list of ``k``
    texts; for ``n`` queries they have shape ``(n, k)`` and ``texts`` is a list of ``n`` lists.
    ``texts`` is ``None`` when the index was built without texts. Scores are cosine similarities.
    """

    indices: np.ndarray
    scores: np.ndarray
    texts: list | None = None


class EmbeddingIndex:
    """Exact cosine-similarity search over a fixed set of embeddings (one row per item).

    Rows are scaled to unit length once, so a search is one matrix product and a sort. Ties are
    broken by the lower row index, so results are deterministic. ``texts`` (optional) are returned
    with the hits; ``embed_fn`` (optional) lets :meth:`search` take strings.
    """

    def __init__(self, embeddings: object, *, texts: Sequence[str] | None = None, embed_fn: EmbedFn | None = None):
        matrix = _normalise_rows(_as_matrix(embeddings, "embeddings"), "embeddings")
        if texts is not None:
            texts = list(texts.tolist() if hasattr(texts, "tolist") else texts)
            if len(texts) != len(matrix):
                raise ValueError(f"got {len(matrix)} embeddings but {len(texts)} texts: give one text per row")
        if embed_fn is not None and not callable(embed_fn):
            raise TypeError(f"embed_fn must be a function from a list of texts to embeddings, got {type(embed_fn).__name__}")
        self.embeddings = matrix
        self.texts = texts
        self.embed_fn = embed_fn

    @classmethod
    def build(
        cls,
        texts: Sequence[str],
        embed_fn: EmbedFn | None = None,
        *,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
        batch_size: int = 64,
        max_length: int = 64,
        device: torch.device | str | None = None,
        progress: bool = True,
    ) -> "EmbeddingIndex":
        """Embed ``texts`` and index them: with ``embed_fn``, or with ``model`` + ``tokenizer`` (mean pooling).

        The same function embeds the queries of :meth:`search`, so index and queries always share
        one embedding space.
        """
        texts = _as_text_list(texts, "texts")
        if embed_fn is None:
            if model is None or tokenizer is None:
                raise ValueError("pass embed_fn, or model and tokenizer, to say how texts become vectors")
            embed_fn = encoder_embed_fn(model, tokenizer, batch_size=batch_size, max_length=max_length,
                                        device=device, progress=progress)
        elif model is not None or tokenizer is not None:
            raise ValueError("pass either embed_fn or model and tokenizer, not both")
        vectors = _as_matrix(embed_fn(texts), "the embeddings returned by embed_fn")
        if len(vectors) != len(texts):
            raise ValueError(f"embed_fn returned {len(vectors)} rows for {len(texts)} texts")
        return cls(vectors, texts=texts, embed_fn=embed_fn)

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def dim(self) -> int:
        """The embedding dimension."""
        return int(self.embeddings.shape[1])

    def __repr__(self) -> str:
        return f"EmbeddingIndex({len(self)} items, dim {self.dim}, texts={'yes' if self.texts is not None else 'no'})"

    def embed(self, queries: object) -> np.ndarray:
        """Unit-length embeddings ``(n, dim)`` of ``queries``: strings (through ``embed_fn``) or vectors."""
        if isinstance(queries, str):
            queries = [queries]
        if isinstance(queries, (np.ndarray, torch.Tensor)):
            matrix = _as_matrix(queries.reshape(1, -1) if queries.ndim == 1 else queries, "queries")
        else:
            if self.embed_fn is None:
                raise ValueError(
                    "this index has no embed_fn, so it cannot embed text queries: pass query vectors, or build "
                    "the index with EmbeddingIndex.build(texts, embed_fn)"
                )
            texts = _as_text_list(queries, "queries")
            matrix = _as_matrix(self.embed_fn(texts), "the embeddings returned by embed_fn")
            if len(matrix) != len(texts):
                raise ValueError(f"embed_fn returned {len(matrix)} rows for {len(texts)} queries")
        if matrix.shape[1] != self.dim:
            raise ValueError(f"query vectors have dimension {matrix.shape[1]} but the index has {self.dim}")
        return _normalise_rows(matrix, "queries")

    def scores(self, queries: object) -> np.ndarray:
        """Cosine similarity ``(n, len(index))`` of every query with every indexed item."""
        return self.embed(queries) @ self.embeddings.T

    def search(self, queries: object, k: int = 5, *, chunk_size: int = 1024) -> SearchResult:
        """The ``k`` most similar items for a query (a str or one vector) or for each of several queries.

        A single query (a str or a 1-D vector) gives 1-D ``indices``/``scores``; a list of strings
        or a 2-D array gives one row per query. ``k`` must lie between 1 and the number of items.
        Queries are processed ``chunk_size`` at a time to bound memory.
        """
        single = isinstance(queries, str) or (isinstance(queries, (np.ndarray, torch.Tensor)) and queries.ndim == 1)
        k = require_int("k", k, minimum=1)
        if k > len(self):
            raise ValueError(f"k={k} but the index holds only {len(self)} items: ask for at most {len(self)}")
        chunk_size = require_int("chunk_size", chunk_size, minimum=1)
        vectors = self.embed(queries)
        indices, scores = [], []
        for start in range(0, len(vectors), chunk_size):
            similarity = vectors[start:start + chunk_size] @ self.embeddings.T
            # A stable sort of -similarity: best first, ties in row order (deterministic results).
            order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
            indices.append(order)
            scores.append(np.take_along_axis(similarity, order, axis=1))
        indices_all, scores_all = np.concatenate(indices), np.concatenate(scores)
        texts = None
        if self.texts is not None:
            texts = [[self.texts[i] for i in row] for row in indices_all]
        if single:
            return SearchResult(indices_all[0], scores_all[0], texts[0] if texts is not None else None)
        return SearchResult(indices_all, scores_all, texts)


def centroid_index(embeddings: object, labels: object, num_classes: int | None = None,
                   *, names: Sequence[str] | None = None) -> EmbeddingIndex:
    """The nearest-centroid classifier of the getting-started chapter, as an index with one row per class.

    Each class's centroid is the normalised sum of its examples' unit-length embeddings (the
    direction of their mean). ``index.search(query_vectors, k=1).indices`` then predicts the class
    whose centroid is most similar. Every class ``0 .. num_classes - 1`` needs at least one example.
    ``names`` (one per class) become the index's texts.
    """
    matrix = _normalise_rows(_as_matrix(embeddings, "embeddings"), "embeddings")
    labels = np.asarray(labels.tolist() if hasattr(labels, "tolist") else labels)
    if labels.shape != (len(matrix),):
        raise ValueError(f"got {len(matrix)} embeddings but labels of shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got {int(labels.min())}")
    num_classes = int(labels.max()) + 1 if num_classes is None else require_int("num_classes", num_classes, minimum=1)
    if labels.max() >= num_classes:
        raise ValueError(f"label {int(labels.max())} is out of range for num_classes={num_classes}")
    counts = np.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0)
        raise ValueError(f"class {int(missing[0])} has no example ({missing.size} classes have none): "
                         "every class needs at least one embedding to have a centroid")
    sums = np.zeros((num_classes, matrix.shape[1]), dtype=np.float32)
    np.add.at(sums, labels, matrix)
    if names is not None and len(names) != num_classes:
        raise ValueError(f"got {len(names)} names for {num_classes} classes")
    return EmbeddingIndex(sums, texts=list(names) if names is not None else None)


def in_batch_negatives_loss(
    anchors: torch.Tensor, positives: torch.Tensor, *, scale: float = 20.0, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy of picking each anchor's own positive among all the positives of the batch.

    ``anchors`` and ``positives`` are ``(B, dim)``; row ``i`` of each form a matching pair. The
    logits are ``scale`` times the cosine similarities ``(B, B)``, and the target of row ``i`` is
    column ``i``: the other ``B - 1`` positives serve as negatives for free (*in-batch negatives*).
    ``scale`` is the inverse temperature (20 as in sentence-transformers, i.e. temperature 0.05).
    With ``labels`` ``(B,)``, a positive that shares the anchor's label is not a negative — it
    answers the anchor too — so it is left out of that row (its logit is set to minus infinity).
    """
    if not isinstance(anchors, torch.Tensor) or not isinstance(positives, torch.Tensor):
        raise TypeError("anchors and positives must be torch tensors of shape (batch, dim)")
    if anchors.dim() != 2 or anchors.shape != positives.shape:
        raise ValueError(f"anchors and positives must both be (batch, dim), got {tuple(anchors.shape)} and {tuple(positives.shape)}")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not (0 < scale < math.inf):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    logits = scale * F.normalize(anchors, dim=1) @ F.normalize(positives, dim=1).T
    if labels is not None:
        labels = torch.as_tensor(labels, device=logits.device)
        if labels.shape != (anchors.shape[0],):
            raise ValueError(f"labels must have shape ({anchors.shape[0]},), got {tuple(labels.shape)}")
        same = labels[:, None] == labels[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


def _pooled(encoder: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    from llmbook.embed import mean_pool

    hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return mean_pool(hidden, batch["attention_mask"])


def contrastive_finetune(
    model: torch.nn.Module,
    tokenizer: Any,
    anchors: Sequence[str],
    positives: Sequence[str],
    *,
    labels: Sequence[int] | None = None,
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 2e-5,
    scale: float = 20.0,
    max_length: int = 64,
    warmup_ratio: float = 0.1,
    max_steps: int | None = None,
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Fine-tune an encoder so that each anchor embeds close to its positive (in-batch negatives).

    ``anchors[i]`` and ``positives[i]`` are a matching pair (two phrasings of one question, or a
    question and its answer); ``labels[i]`` (optional) is the pair's class, used to keep pairs of
    the same class from serving as each other's negatives. Each epoch shuffles the pairs (seeded)
    and cuts them into batches of ``batch_size`` (a last batch with fewer than 2 pairs is dropped:
    it has no negatives). The optimizer is :func:`llmbook.train.make_optimizer` (AdamW) with
    :func:`llmbook.train.linear_warmup_schedule` and gradients clipped to norm 1. ``model`` is an
    ``AutoModel`` or a :class:`~llmbook.textclf.MeanPoolingClassifier` (its encoder is trained), and
    is left in eval mode. Returns the loss of every step.
    """
    from tqdm.auto import tqdm

    from llmbook.runtime import get_device
    from llmbook.train import linear_warmup_schedule, make_optimizer, move_to

    encoder = getattr(model, "base_model", model)
    if not isinstance(encoder, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module such as transformers.AutoModel, got {type(model).__name__}")
    anchors = _as_text_list(anchors, "anchors")
    positives = _as_text_list(positives, "positives")
    if len(anchors) != len(positives):
        raise ValueError(f"got {len(anchors)} anchors but {len(positives)} positives: one positive per anchor")
    if labels is not None:
        labels = np.asarray(labels.tolist() if hasattr(labels, "tolist") else labels)
        if labels.shape != (len(anchors),):
            raise ValueError(f"labels must have one entry per pair ({len(anchors)}), got shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"labels must be integer class ids, got dtype {labels.dtype}")
    epochs = require_int("epochs", epochs, minimum=1)
    batch_size = require_int("batch_size", batch_size, minimum=2)
    max_length = require_int("max_length", max_length, minimum=2)
    if max_steps is not None:
        max_steps = require_int("max_steps", max_steps, minimum=1)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not (0 < lr < math.inf):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if not isinstance(warmup_ratio, (int, float)) or not 0 <= warmup_ratio < 1:
        raise ValueError(f"warmup_ratio must be a number in [0, 1), got {warmup_ratio!r}")
    seed = require_int("seed", seed)
    progress = require_bool("progress", progress)
    if len(anchors) < 2:
        raise ValueError("need at least 2 pairs: in-batch negatives come from the other pairs of a batch")
    device = get_device(device) if device is not None else get_device()

    rng = np.random.default_rng(seed)
    per_epoch = len(anchors) // batch_size + (1 if len(anchors) % batch_size >= 2 else 0)
    total = per_epoch * epochs if max_steps is None else min(max_steps, per_epoch * epochs)
    encoder.to(device).train()
    optimizer = make_optimizer(encoder, lr=lr)
    schedule = linear_warmup_schedule(optimizer, int(warmup_ratio * total), total)
    losses: list[float] = []

    def encode(texts: list[str]) -> torch.Tensor:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return _pooled(encoder, move_to(dict(batch), device))

    bar = tqdm(total=total, desc="contrastive fine-tuning", disable=not progress)
    try:
        for _ in range(epochs):
            order = rng.permutation(len(anchors))
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                if len(rows) < 2 or len(losses) >= total:
                    continue
                batch_labels = torch.as_tensor(labels[rows], device=device) if labels is not None else None
                loss = in_batch_negatives_loss(encode([anchors[i] for i in rows]), encode([positives[i] for i in rows]),
                                               scale=scale, labels=batch_labels)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"contrastive loss is {loss.item()} at step {len(losses) + 1}: lower lr (now {lr})"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
                optimizer.step()
                schedule.step()
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    finally:
        bar.close()
        encoder.eval()
    return losses


_DIGITS = re.compile(r"\d+")


def near_duplicate_groups(texts: Sequence[str], threshold: float = 0.8, *, chunk_size: int = 512) -> np.ndarray:
    """A group id per text: texts whose word TF-IDF vectors have cosine >= ``threshold`` share a group.

    Texts are lower-cased and every run of digits becomes ``#`` (order numbers and amounts do not
    make two questions different); groups are the connected components of the "near-duplicate"
    graph, so near-duplicates of near-duplicates join too. Group ids are ``0 .. G - 1`` in order of
    first appearance. Keep a group on one side of a train/test split, and no test question has a
    near-copy in the index.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = _as_text_list(texts, "texts")
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 < threshold <= 1:
        raise ValueError(f"threshold must be a cosine similarity in (0, 1], got {threshold!r}")
    chunk_size = require_int("chunk_size", chunk_size, minimum=1)
    cleaned = [_DIGITS.sub(" # ", t.lower()) for t in texts]
    # Keep one-letter words and '#': "I", "a" and the number placeholder are part of a phrasing.
    vectors = TfidfVectorizer(token_pattern=r"(?u)\b\w+\b|#").fit_transform(cleaned)
    rows, cols = [], []
    for start in range(0, len(texts), chunk_size):
        similarity = (vectors[start:start + chunk_size] @ vectors.T).toarray()
        r, c = np.nonzero(similarity >= threshold - 1e-9)
        rows.append(r + start)
        cols.append(c)
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r)), (r, c)), shape=(len(texts), len(texts)))
    _, components = connected_components(graph, directed=False)
    # Renumber in order of first appearance, so ids do not depend on scipy's numbering.
    _, first = np.unique(components, return_index=True)
    renumber = np.empty(components.max() + 1, dtype=np.int64)
    renumber[components[np.sort(first)]] = np.arange(len(first))
    return renumber[components]
