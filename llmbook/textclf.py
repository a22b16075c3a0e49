"""Text-classification data helpers: tokenise once, pad per batch.

Taught in the fine-tuning chapter (``notebooks/06_finetuning.ipynb``); the application chapters
reuse them.

The source's code padded every example to 512 tokens. Tweets are a few dozen tokens long, so
that wastes most of the computation on padding. Here a :class:`TextClassificationDataset`
tokenises each text once *without* padding (truncating at a ``max_length`` chosen from the
length distribution, see :func:`choose_max_length`), and :class:`PadCollator` pads each batch
only to its own longest example (*dynamic padding*, 动态填充) — the same result as
``transformers.DataCollatorWithPadding`` (the tests check it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from llmbook.checks import require_bool, require_int
from llmbook.embed import mean_pool

__all__ = [
    "LengthGroupedBatches",
    "MeanPoolingClassifier",
    "PadCollator",
    "TextClassificationDataset",
    "choose_max_length",
    "make_loader",
    "token_lengths",
]


def _check_texts(texts: object) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence) and not hasattr(texts, "tolist"):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    texts = list(texts.tolist() if hasattr(texts, "tolist") else texts)
    if not texts:
        raise ValueError("texts is empty: need at least one text")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")
        if not text.strip():
            raise ValueError(f"texts[{i}] is empty (or only whitespace); drop or fix it before tokenising")
    return texts


def token_lengths(texts: Sequence[str], tokenizer: Any) -> np.ndarray:
    """Number of tokens of each text, special tokens ([CLS], [SEP]) included, without truncation."""
    texts = _check_texts(texts)
    encoded = tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
    return np.array([len(ids) for ids in encoded])


def choose_max_length(lengths: Sequence[int], quantile: float = 0.99, multiple: int = 8, cap: int = 512) -> int:
    """The ``quantile`` of ``lengths`` rounded up to a ``multiple`` (at most ``cap``).

    Truncating at the 99th percentile loses the tail of 1% of the texts and keeps batches short.
    """
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.size == 0:
        raise ValueError(f"lengths must be a non-empty 1-D sequence, got shape {lengths.shape}")
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {quantile!r}")
    value = float(np.quantile(lengths, quantile))
    return int(min(cap, multiple * int(np.ceil(value / multiple))))


class TextClassificationDataset(Dataset):
    """Texts tokenised once (truncated at ``max_length``, not padded) with their integer labels.

    ``dataset[i]`` is ``{"input_ids": [...], "attention_mask": [...], "labels": int}`` (plus
    ``token_type_ids`` if the tokenizer makes them). Labels must be ints in ``[0, num_labels)``;
    texts must be non-empty strings. Errors name the offending index.
    """

    def __init__(
        self,
        texts: Sequence[str],
        labels: Sequence[int],
        tokenizer: Any,
        *,
        max_length: int = 128,
        num_labels: int | None = None,
    ) -> None:
        texts = _check_texts(texts)
        labels_array = np.asarray(labels.tolist() if hasattr(labels, "tolist") else list(labels))
        if labels_array.shape != (len(texts),):
            raise ValueError(f"got {len(texts)} texts but labels of shape {labels_array.shape}")
        if not np.issubdtype(labels_array.dtype, np.integer):
            raise TypeError(f"labels must be integers (class ids), got dtype {labels_array.dtype}")
        if num_labels is None:
            num_labels = int(labels_array.max()) + 1
        bad = np.flatnonzero((labels_array < 0) | (labels_array >= num_labels))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"labels[{i}] = {labels_array[i]} is out of range for num_labels={num_labels} "
                f"({bad.size} labels outside [0, {num_labels - 1}])"
            )
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
        self.num_labels = int(num_labels)
        self.max_length = max_length
        self.encodings = tokenizer(texts, truncation=True, max_length=max_length)
        self.labels = labels_array.astype(np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {key: values[index] for key, values in self.encodings.items()}
        item["labels"] = int(self.labels[index])
        return item


class PadCollator:
    """Collate function with dynamic padding: pads a list of examples to the batch's longest.

    Returns a dict of ``int64`` tensors: ``input_ids`` (padded with ``pad_token_id``),
    ``attention_mask`` (0 on padding), ``token_type_ids`` when present (padded with 0) and
    ``labels``. ``pad_to_multiple_of`` rounds the length up (8 suits tensor cores on GPUs).
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        if not isinstance(pad_token_id, int):
            raise TypeError(f"pad_token_id must be an int, got {pad_token_id!r}")
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty list of examples")
        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        batch: dict[str, torch.Tensor] = {}
        pads = {"input_ids": self.pad_token_id, "attention_mask": 0, "token_type_ids": 0}
        for key, pad in pads.items():
            if key in features[0]:
                rows = [list(f[key]) + [pad] * (length - len(f[key])) for f in features]
                batch[key] = torch.tensor(rows, dtype=torch.long)
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)
        return batch


class LengthGroupedBatches(Sampler[list[int]]):
    """Shuffled batches of indices whose texts have similar lengths (less padding per batch).

    Each epoch: shuffle all indices, cut them into chunks of ``batch_size * group_factor``, sort
    each chunk by length, cut it into batches, and shuffle the batches. Batches stay random, but
    a batch's examples have similar lengths, so dynamic padding adds few pad tokens. Hugging
    Face's ``Trainer`` calls this ``group_by_length``.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *, group_factor: int = 50, seed: int = 0) -> None:
        self.lengths = np.asarray(lengths)
        if self.lengths.ndim != 1 or self.lengths.size == 0:
            raise ValueError("lengths must be a non-empty 1-D sequence")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.batch_size, self.group_factor = batch_size, group_factor
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.rng.permutation(len(self.lengths))
        chunk = self.batch_size * self.group_factor
        batches = []
        for start in range(0, len(order), chunk):
            part = order[start:start + chunk]
            part = part[np.argsort(self.lengths[part], kind="stable")]
            batches += [part[i:i + self.batch_size].tolist() for i in range(0, len(part), self.batch_size)]
        for b in self.rng.permutation(len(batches)):
            yield batches[b]


def make_loader(
    dataset: Dataset,
    collate_fn: Any,
    *,
    batch_size: int = 32,
    shuffle: bool = False,
    group_by_length: bool = False,
    seed: int = 0,
) -> DataLoader:
    """A ``DataLoader`` with ``collate_fn``; shuffling uses its own seeded generator (repeatable).

    The order changes from epoch to epoch, and a fresh loader with the same ``seed`` replays the same
    sequence of epochs. A loader reused for a second training run continues that sequence, so
    experiments that must see the same batches each get a fresh loader.

    ``group_by_length`` (training only, needs a :class:`TextClassificationDataset`) batches
    texts of similar length together with :class:`LengthGroupedBatches`.
    """
    shuffle = require_bool("shuffle", shuffle)
    group_by_length = require_bool("group_by_length", group_by_length)
    batch_size = require_int("batch_size", batch_size, minimum=1)
    seed = require_int("seed", seed)
    if group_by_length:
        if not isinstance(dataset, TextClassificationDataset):
            raise TypeError("group_by_length needs a TextClassificationDataset (it reads the token lengths)")
        lengths = [len(ids) for ids in dataset.encodings["input_ids"]]
        sampler = LengthGroupedBatches(lengths, batch_size, seed=seed)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn)
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_fn, generator=generator)


def _check_num_labels(num_labels: object) -> None:
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2:
        raise ValueError(f"num_labels must be an int >= 2, got {num_labels!r}")


class MeanPoolingClassifier(torch.nn.Module):
    """A pretrained encoder with a linear head on the masked *mean* of its last hidden states.

    ``AutoModelForSequenceClassification`` classifies from the ``[CLS]`` vector (through BERT's
    pooler). Checkpoints trained as sentence encoders through mean pooling — such as the bundled
    all-MiniLM-L6-v2 — never trained ``[CLS]`` to summarise a sentence, and learn much faster with
    this head. ``forward`` takes the tokenizer's tensors (and optionally ``labels``) and returns a
    ``SequenceClassifierOutput`` with ``logits`` (and ``loss``), like a Hugging Face classifier, so
    it works with the book's loop, a hand-written loop and ``Trainer`` alike.
    """

    def __init__(self, encoder: torch.nn.Module, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        _check_num_labels(num_labels)
        self.base_model = encoder
        self.num_labels = num_labels
        self.dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(encoder.config.hidden_size, num_labels)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, num_labels: int, dropout: float = 0.1, **config: Any
    ) -> "MeanPoolingClassifier":
        """The encoder of ``path`` (a local folder or a hub name) with a new, untrained head.

        The location goes through :func:`llmbook.pretrained.resolve_pretrained`: a local folder is
        loaded as it is (silently); a hub name such as ``"bert-base-uncased"`` comes from the hub
        when it answers, and otherwise from the bundled MiniLM checkpoint, with one printed line
        saying which — never a long wait on ``transformers``' download retries. A path to a folder
        that does not exist raises ``ValueError`` (never another model). ``config`` overrides
        encoder settings (e.g. ``hidden_dropout_prob``).
        """
        from transformers import AutoModel

        from llmbook.pretrained import resolve_pretrained

        _check_num_labels(num_labels)  # before the (slow) load
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a model folder or a hub name such as 'bert-base-uncased', got {path!r}")
        name = os.fspath(path)
        # A local folder needs no announcement (the notebooks pass the folder their choice printed);
        # resolve_pretrained refuses a path that does not exist rather than substitute another model.
        choice = resolve_pretrained(name, verbose=not Path(name).expanduser().is_dir())
        return cls(AutoModel.from_pretrained(choice.path, **config), num_labels, dropout)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutput

        hidden = self.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                 token_type_ids=token_type_ids).last_hidden_state
        pooled = mean_pool(hidden, attention_mask)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


# --- The TF-IDF baseline (chapters 6 and 7 report the same model) --------------------------------

TFIDF_C_GRID = (1.0, 3.0, 10.0, 30.0)


@dataclass
class TfidfBaseline:
    """What :func:`tfidf_baseline` returns: the fitted pipeline, the chosen ``C`` and the scores behind it."""

    pipeline: Any
    C: float
    val_macro_f1: dict[float, float]

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """Class ids of ``texts``."""
        return self.pipeline.predict(_check_texts(texts))

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities of ``texts``, shape ``(len(texts), num_classes)``."""
        return self.pipeline.predict_proba(_check_texts(texts))


def tfidf_baseline(
    train_texts: Sequence[str],
    train_labels: Sequence[int],
    val_texts: Sequence[str],
    val_labels: Sequence[int],
    *,
    c_grid: Sequence[float] = TFIDF_C_GRID,
    min_df: int = 2,
) -> TfidfBaseline:
    """TF-IDF of words and word pairs + logistic regression, ``C`` chosen by validation macro-F1.

    The strong classical baseline of the fine-tuning chapter, reused unchanged by the evaluation
    chapter so that both report one model and one number: ``TfidfVectorizer(ngram_range=(1, 2),
    sublinear_tf=True, min_df=min_df)`` then ``LogisticRegression(C, max_iter=2000)``, fitted on
    the training texts for each ``C`` of ``c_grid``; the one with the highest macro-F1 on the
    *validation* texts is kept (ties: the first in ``c_grid``). The test split plays no part.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.pipeline import make_pipeline

    train_texts, val_texts = _check_texts(train_texts), _check_texts(val_texts)
    y_train = _check_label_array("train_labels", train_labels, len(train_texts))
    y_val = _check_label_array("val_labels", val_labels, len(val_texts))
    min_df = require_int("min_df", min_df, minimum=1)
    grid = [float(c) for c in (c_grid.tolist() if hasattr(c_grid, "tolist") else list(c_grid))]
    if not grid or not all(np.isfinite(c) and c > 0 for c in grid):
        raise ValueError(f"c_grid must be a non-empty list of positive numbers, got {c_grid!r}")
    if len(np.unique(y_train)) < 2:
        raise ValueError("train_labels hold a single class: a classifier needs at least two")
    fitted, scores = {}, {}
    for C in grid:
        fitted[C] = make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=min_df),
            LogisticRegression(C=C, max_iter=2000),
        ).fit(train_texts, y_train)
        scores[C] = float(f1_score(y_val, fitted[C].predict(val_texts), average="macro"))
    best = max(scores, key=scores.get)  # max keeps the first of equal scores
    return TfidfBaseline(fitted[best], best, scores)


def _check_label_array(name: str, labels: object, n: int) -> np.ndarray:
    array = np.asarray(labels.tolist() if hasattr(labels, "tolist") else list(labels))
    if array.shape != (n,):
        raise ValueError(f"{name} has shape {array.shape}, but there are {n} texts")
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must be integer class ids, got dtype {array.dtype}")
    return array


# --- The chapter-6 classifier as one file (the evaluation chapter reloads it) ---------------------

def classifier_checkpoint_path(scale: str) -> Path:
    """Where the fine-tuning chapter saves its classifier at ``scale``: ``run_dir("06_finetuning")/classifier_{scale}.pt``."""
    from llmbook.runtime import run_dir

    if not isinstance(scale, str) or not scale.isidentifier():
        raise ValueError(f"scale must be a scale name such as 'cpu', got {scale!r}")
    return Path(run_dir("06_finetuning")) / f"classifier_{scale}.pt"


def save_classifier_checkpoint(
    path: str | os.PathLike,
    model: MeanPoolingClassifier,
    choice: Any,
    *,
    labels: Sequence[str],
    max_length: int,
    scale: str,
    **metadata: Any,
) -> Path:
    """Save a :class:`MeanPoolingClassifier` with everything needed to rebuild and use it; returns ``path``.

    ``choice`` is the :class:`llmbook.pretrained.PretrainedChoice` the encoder came from (it says
    where the tokenizer and the encoder's configuration live: the bundled MiniLM, a hub name or a
    local folder). ``labels`` are the class names in class-id order; ``max_length`` the truncation
    length used in training. Extra ``metadata`` (plain numbers and strings) is stored too. The file
    is written atomically (through :func:`llmbook.train.save_checkpoint`).
    """
    from llmbook.pretrained import PretrainedChoice
    from llmbook.train import save_checkpoint

    if not isinstance(model, MeanPoolingClassifier):
        raise TypeError(f"model must be a MeanPoolingClassifier, got {type(model).__name__}")
    if not isinstance(choice, PretrainedChoice):
        raise TypeError("choice must be the PretrainedChoice the encoder was loaded from (resolve_pretrained's answer)")
    names = [str(label) for label in labels]
    if len(names) != model.num_labels:
        raise ValueError(f"got {len(names)} label names for a model with {model.num_labels} classes")
    max_length = require_int("max_length", max_length, minimum=2)
    return save_checkpoint(
        model, path, labels=names, max_length=max_length, scale=str(scale),
        pretrained_requested=choice.requested, pretrained_source=choice.source,
        pretrained_path=choice.path if choice.source == "local" else choice.requested,
        model_name=choice.name, dropout=float(model.dropout.p), **metadata,
    )


def load_classifier_checkpoint(path: str | os.PathLike) -> tuple[MeanPoolingClassifier, Any, dict[str, Any]]:
    """Rebuild a :func:`save_classifier_checkpoint` file: ``(model, tokenizer, metadata)``.

    The model is in ``eval()`` mode on the CPU. ``metadata`` holds ``labels``, ``max_length``,
    ``scale``, ``model_name`` and whatever else was saved. A missing file raises
    ``FileNotFoundError`` naming the chapter that writes it.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from llmbook.pretrained import bundled_checkpoint_path
    from llmbook.runtime import read_torch_file
    from llmbook.train import load_checkpoint

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path, got {type(path).__name__}")
    path = Path(path)
    saved = read_torch_file(path, what="classifier checkpoint", remedy="run notebooks/06_finetuning.ipynb first")
    needed = ("labels", "max_length", "pretrained_source", "pretrained_path", "state_dict")
    if not isinstance(saved, dict) or any(key not in saved for key in needed):
        raise ValueError(f"{path} is not a classifier checkpoint (save it with save_classifier_checkpoint)")
    source = saved["pretrained_source"]
    folder = str(bundled_checkpoint_path()) if source == "bundled" else saved["pretrained_path"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoder = AutoModel.from_config(AutoConfig.from_pretrained(folder))
    model = MeanPoolingClassifier(encoder, len(saved["labels"]), dropout=saved.get("dropout", 0.1))
    metadata = load_checkpoint(model, path)
    return model.eval(), tokenizer, metadata


__all__ += [
    "TFIDF_C_GRID",
    "TfidfBaseline",
    "classifier_checkpoint_path",
    "load_classifier_checkpoint",
    "save_classifier_checkpoint",
    "tfidf_baseline",
]
