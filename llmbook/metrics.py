"""Evaluation metrics for language models, written out by hand: BLEU, ROUGE, perplexity,
precision/recall/F1, calibration error, and bootstrap uncertainty.

Taught in the evaluation chapter (``notebooks/07_evaluation.ipynb``); :func:`bleu` is also used by
the translation chapter. Every function here is checked in ``tests/test_metrics.py`` against the
library it imitates: ``sacrebleu`` (BLEU), Google's ``rouge-score`` (ROUGE), ``sklearn.metrics``
(precision/recall/F1, confusion matrix, calibration bins) and ``torch.nn.functional.cross_entropy``
(perplexity). None of those libraries is needed at run time.

Layout of references
--------------------
:func:`bleu` and :func:`rouge` take ``references[i]`` = *the list of reference texts of example i*.
``sacrebleu`` takes them the other way round, one list per reference *stream*
(``streams[k][i]`` = the k-th reference of example i). Convert between the two with
``[list(r) for r in zip(*streams)]``: then ``bleu(hyps, references)`` equals
``sacrebleu.corpus_bleu(hyps, streams).score`` (the tests check it to 1e-9).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "tokenize_13a",
    "ngram_counts",
    "BleuResult",
    "bleu_statistics",
    "bleu_from_statistics",
    "bleu_details",
    "bleu",
    "rouge_tokenize",
    "lcs_length",
    "rouge_n_scores",
    "rouge_l_scores",
    "rouge_per_example",
    "rouge",
    "token_nll",
    "perplexity",
    "bits_per_character",
    "confusion_matrix",
    "precision_recall_f1",
    "calibration_bins",
    "expected_calibration_error",
    "ConfidenceInterval",
    "PairedBootstrapResult",
    "bootstrap_ci",
    "paired_bootstrap",
]


# --------------------------------------------------------------------------------------------------
# Input checks shared by the text metrics
# --------------------------------------------------------------------------------------------------


def _is_collection(obj: object) -> bool:
    """A list-like of items: a list, tuple, NumPy array or pandas Series, but not a str or a mapping."""
    return (
        not isinstance(obj, (str, bytes, Mapping))
        and hasattr(obj, "__len__")
        and hasattr(obj, "__iter__")
    )


def _check_texts(texts: object, what: str) -> list[str]:
    if isinstance(texts, str):
        raise TypeError(f"{what} must be a list of strings, not a single string: wrap it in a list")
    if not _is_collection(texts):
        raise TypeError(f"{what} must be a list of strings, got {type(texts).__name__}")
    texts = list(texts)
    if not texts:
        raise ValueError(f"{what} is empty: there is nothing to score")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{what}[{i}] must be a str, got {type(text).__name__}")
    return texts


def _check_references(
    references: object, n: int, *, same_count: bool, layout_hint: str = ""
) -> list[list[str]]:
    """``references[i]`` must be a non-empty list of strings for each of the ``n`` examples."""
    if not _is_collection(references):
        raise TypeError(
            "references must be a list with one list of reference strings per example, "
            f"got {type(references).__name__}"
        )
    references = list(references)
    if len(references) != n:
        raise ValueError(
            f"got {n} predictions/hypotheses but {len(references)} reference lists: references[i] must hold "
            f"the references of example i{layout_hint}"
        )
    checked = []
    for i, refs in enumerate(references):
        if isinstance(refs, str):
            raise TypeError(
                f"references[{i}] is a str; it must be a list of reference strings, e.g. [{refs[:30]!r}]"
            )
        if not _is_collection(refs):
            raise TypeError(f"references[{i}] must be a list of strings, got {type(refs).__name__}")
        refs = list(refs)
        if not refs:
            raise ValueError(f"references[{i}] is empty: every example needs at least one reference")
        for k, ref in enumerate(refs):
            if not isinstance(ref, str):
                raise TypeError(f"references[{i}][{k}] must be a str, got {type(ref).__name__}")
        checked.append(refs)
    if same_count:
        counts = {len(r) for r in checked}
        if len(counts) > 1:
            first = len(checked[0])
            bad = next(i for i, r in enumerate(checked) if len(r) != first)
            raise ValueError(
                f"every example must have the same number of references: references[0] has {first}, "
                f"references[{bad}] has {len(checked[bad])}. Repeat a reference to pad (a duplicate "
                "reference does not change BLEU)."
            )
    return checked


# --------------------------------------------------------------------------------------------------
# BLEU (Papineni et al. 2002), as sacrebleu computes it by default
# --------------------------------------------------------------------------------------------------

_13A_RULES = [
    # every ASCII symbol except . , - and the apostrophe becomes its own token
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),
    # a period or comma is split off unless it sits between digits (3.14, 1,000)
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),
    # a dash after a digit is split off (1990-2000)
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),
]


def tokenize_13a(text: str) -> list[str]:
    """Split ``text`` into tokens the way ``mteval-v13a.pl`` (sacrebleu's default, ``13a``) does.

    Trailing whitespace is dropped, a few HTML entities are unescaped, punctuation is separated
    from words (periods and commas only when not inside a number), and the result is split on
    whitespace (Unicode whitespace included, e.g. the narrow no-break space of French typography).
    Case is kept.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    line = text.rstrip()
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for pattern, replacement in _13A_RULES:
        line = pattern.sub(replacement, line)
    return line.split()


def ngram_counts(tokens: Sequence[str], max_order: int = 4) -> Counter:
    """Counts of every n-gram of ``tokens`` with ``1 <= n <= max_order``, as tuples."""
    if max_order < 1:
        raise ValueError(f"max_order must be at least 1, got {max_order}")
    tokens = list(tokens)
    return Counter(
        tuple(tokens[i : i + n]) for n in range(1, max_order + 1) for i in range(len(tokens) - n + 1)
    )


@dataclass(frozen=True)
class BleuResult:
    """Corpus BLEU and its parts: ``score`` (0-100), modified n-gram ``precisions`` (0-100, after
    smoothing), the brevity penalty ``bp``, the clipped ``matches`` and ``totals`` per order, and the
    corpus lengths ``hyp_len`` / ``ref_len`` (the closest reference length summed over sentences)."""

    score: float
    precisions: tuple[float, ...]
    bp: float
    matches: tuple[int, ...]
    totals: tuple[int, ...]
    hyp_len: int
    ref_len: int

    def __str__(self) -> str:
        precisions = "/".join(f"{p:.1f}" for p in self.precisions)
        return (
            f"BLEU = {self.score:.2f} {precisions} (BP = {self.bp:.3f} ratio = "
            f"{self.hyp_len / max(self.ref_len, 1):.3f} hyp_len = {self.hyp_len} ref_len = {self.ref_len})"
        )


def _closest_ref_len(hyp_len: int, ref_lens: Sequence[int]) -> int:
    """The reference length closest to ``hyp_len``; ties go to the shorter reference."""
    return min(ref_lens, key=lambda r: (abs(r - hyp_len), r))


def bleu_statistics(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    tokenizer: Callable[[str], list[str]] = tokenize_13a,
    max_order: int = 4,
) -> np.ndarray:
    """Per-sentence sufficient statistics of BLEU, shape ``(n_sentences, 2 + 2 * max_order)``.

    Row ``i`` is ``[hyp_len, ref_len, matches_1..matches_N, totals_1..totals_N]``: the hypothesis
    length, the closest reference length, and for each order ``n`` the clipped n-gram matches
    (each hypothesis n-gram counts at most as often as it appears in any *one* reference) and the
    number of hypothesis n-grams. Corpus BLEU sums the rows first (:func:`bleu_from_statistics`),
    which is why bootstrap resampling of BLEU resamples rows of this table.
    """
    hypotheses = _check_texts(hypotheses, "hypotheses")
    references = _check_references(
        references,
        len(hypotheses),
        same_count=True,
        layout_hint=" (sacrebleu's layout is transposed: convert with [list(r) for r in zip(*streams)])",
    )
    rows = np.zeros((len(hypotheses), 2 + 2 * max_order), dtype=np.int64)
    for i, (hyp, refs) in enumerate(zip(hypotheses, references)):
        hyp_tokens = tokenizer(hyp)
        ref_max: Counter = Counter()
        ref_lens = []
        for ref in refs:
            ref_tokens = tokenizer(ref)
            ref_lens.append(len(ref_tokens))
            for gram, count in ngram_counts(ref_tokens, max_order).items():
                ref_max[gram] = max(ref_max[gram], count)
        rows[i, 0] = len(hyp_tokens)
        rows[i, 1] = _closest_ref_len(len(hyp_tokens), ref_lens)
        for gram, count in ngram_counts(hyp_tokens, max_order).items():
            n = len(gram)
            rows[i, 1 + n] += min(count, ref_max[gram])  # clipped matches
            rows[i, 1 + max_order + n] += count  # hypothesis n-grams
    return rows


def bleu_from_statistics(stats: np.ndarray, *, smooth: str = "exp") -> BleuResult:
    """Corpus BLEU from the table of :func:`bleu_statistics` (rows are summed first).

    ``BLEU = BP * exp(mean_n log p_n)`` with ``p_n = matches_n / totals_n`` and brevity penalty
    ``BP = exp(1 - ref_len / hyp_len)`` when the hypotheses are shorter than the references, else 1.
    ``smooth="exp"`` (sacrebleu's default, NIST's method) replaces the k-th zero precision by
    ``1 / (2**k * totals_n)``; ``smooth="none"`` leaves zeros, so any order without a match gives 0.
    Either way an order with no hypothesis n-grams at all, or no match of any order, gives 0.
    """
    stats = np.asarray(stats)
    if stats.ndim == 1:
        stats = stats[None, :]
    if stats.ndim != 2 or stats.shape[1] < 4 or stats.shape[1] % 2:
        raise ValueError(
            f"stats must be the (n, 2 + 2 * max_order) table of bleu_statistics, got shape {stats.shape}"
        )
    if smooth not in ("exp", "none"):
        raise ValueError(f"smooth must be 'exp' or 'none', got {smooth!r}")
    max_order = (stats.shape[1] - 2) // 2
    total = stats.sum(axis=0)
    hyp_len, ref_len = int(total[0]), int(total[1])
    matches = tuple(int(x) for x in total[2 : 2 + max_order])
    totals = tuple(int(x) for x in total[2 + max_order :])
    if hyp_len >= ref_len:
        bp = 1.0
    else:
        bp = math.exp(1 - ref_len / hyp_len) if hyp_len > 0 else 0.0
    precisions = [0.0] * max_order
    if not any(matches):
        return BleuResult(0.0, tuple(precisions), bp, matches, totals, hyp_len, ref_len)
    zeros_seen = 0
    for n in range(max_order):
        if totals[n] == 0:
            break  # no n-grams of this order at all: this and every higher precision stays 0
        if matches[n] == 0:
            if smooth == "exp":
                zeros_seen += 1
                precisions[n] = 100.0 / (2**zeros_seen * totals[n])
        else:
            precisions[n] = 100.0 * matches[n] / totals[n]
    if min(precisions) == 0.0:
        score = 0.0
    else:
        score = bp * math.exp(sum(math.log(p) for p in precisions) / max_order)
    return BleuResult(score, tuple(precisions), bp, matches, totals, hyp_len, ref_len)


def bleu_details(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    tokenizer: Callable[[str], list[str]] = tokenize_13a,
    max_order: int = 4,
    smooth: str = "exp",
) -> BleuResult:
    """Corpus BLEU with all its parts (:class:`BleuResult`); the defaults are sacrebleu's.

    ``tokenizer`` maps a string to tokens (e.g. ``str.split`` to skip tokenisation, or a lambda
    that lower-cases first); see :func:`bleu` for the layout of ``references``.
    """
    stats = bleu_statistics(hypotheses, references, tokenizer=tokenizer, max_order=max_order)
    return bleu_from_statistics(stats, smooth=smooth)


def bleu(hypotheses: list[str], references: list[list[str]]) -> float:
    """Corpus BLEU on sacrebleu's 0-100 scale, equal to sacrebleu's default ``corpus_bleu``.

    ``references[i]`` holds the reference translations of ``hypotheses[i]``; every example must
    have the same number of references (repeat one to pad: a duplicate changes nothing).
    Tokenisation ``13a``, case-sensitive, n-grams up to 4, exponential smoothing, brevity penalty
    against the closest reference length. Note the layout: ``sacrebleu.corpus_bleu(hyps, streams)``
    takes ``streams[k][i]``, the transpose of ``references``.
    """
    return bleu_details(hypotheses, references).score


# --------------------------------------------------------------------------------------------------
# ROUGE (Lin 2004), as Google's rouge-score computes it without stemming
# --------------------------------------------------------------------------------------------------

_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


def rouge_tokenize(text: str) -> list[str]:
    """rouge-score's tokenisation: lower-case, every run of characters other than ``a-z0-9``
    becomes a space, split. Non-ASCII letters are therefore dropped (``"café"`` -> ``["caf"]``)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _NON_ALPHANUMERIC.sub(" ", text.lower()).split()


def _f_measure(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def rouge_n_scores(prediction: Sequence[str], reference: Sequence[str], n: int) -> tuple[float, float, float]:
    """ROUGE-N of two token lists: ``(precision, recall, f_measure)`` of clipped n-gram overlap.

    ``overlap = sum_g min(count_pred(g), count_ref(g))``; precision divides it by the number of
    predicted n-grams, recall by the number of reference n-grams (0 when there are none).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    pred = Counter(tuple(prediction[i : i + n]) for i in range(len(prediction) - n + 1))
    ref = Counter(tuple(reference[i : i + n]) for i in range(len(reference) - n + 1))
    overlap = sum(min(count, pred[gram]) for gram, count in ref.items())
    precision = overlap / max(sum(pred.values()), 1)
    recall = overlap / max(sum(ref.values()), 1)
    return precision, recall, _f_measure(precision, recall)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of ``a`` and ``b`` (dynamic programming, O(len a * len b))."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l_scores(prediction: Sequence[str], reference: Sequence[str]) -> tuple[float, float, float]:
    """ROUGE-L of two token lists: ``(precision, recall, f_measure)`` from the LCS length."""
    if not prediction or not reference:
        return 0.0, 0.0, 0.0
    lcs = lcs_length(reference, prediction)
    precision, recall = lcs / len(prediction), lcs / len(reference)
    return precision, recall, _f_measure(precision, recall)


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def rouge_per_example(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
    """The F-measure of each example for ``rouge1``, ``rouge2`` and ``rougeL`` (arrays of length n).

    With several references an example scores the best of them, separately for each ROUGE type
    (as ``RougeScorer.score_multi`` does). Use these arrays for bootstrap intervals and tests.
    """
    predictions = _check_texts(predictions, "predictions")
    references = _check_references(references, len(predictions), same_count=False)
    scores = {key: np.zeros(len(predictions)) for key in ROUGE_TYPES}
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        pred_tokens = rouge_tokenize(pred)
        for ref in refs:
            ref_tokens = rouge_tokenize(ref)
            candidates = {
                "rouge1": rouge_n_scores(pred_tokens, ref_tokens, 1)[2],
                "rouge2": rouge_n_scores(pred_tokens, ref_tokens, 2)[2],
                "rougeL": rouge_l_scores(pred_tokens, ref_tokens)[2],
            }
            for key, value in candidates.items():
                scores[key][i] = max(scores[key][i], value)
    return scores


def rouge(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measure (0-1) over examples, keys ``"rouge1"``,
    ``"rouge2"``, ``"rougeL"``.

    ``references[i]`` holds the references of ``predictions[i]`` (one or more; counts may differ);
    an example with several scores the best of them. Tokenisation as in Google's ``rouge-score``
    (lower-case, non-alphanumerics removed, no stemming), so the result equals
    ``RougeScorer(["rouge1", "rouge2", "rougeL"]).score_multi`` averaged over examples.
    """
    return {key: float(values.mean()) for key, values in rouge_per_example(predictions, references).items()}


# --------------------------------------------------------------------------------------------------
# Perplexity
# --------------------------------------------------------------------------------------------------


def token_nll(logits: torch.Tensor, targets: torch.Tensor, *, ignore_index: int = -100) -> torch.Tensor:
    """Negative log-likelihood (nats) of each target token, padding removed: a 1-D tensor.

    ``logits`` is ``(..., vocab)`` (unnormalised scores, or log-probabilities) and ``targets`` has
    the same leading shape with token ids; positions whose target is ``ignore_index`` are dropped.
    ``-log softmax(logits)[target]``, computed stably; its mean is the usual cross-entropy loss.
    """
    if not isinstance(logits, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise TypeError("logits and targets must be torch tensors")
    if logits.dim() < 2:
        raise ValueError(f"logits must be (..., vocab), got shape {tuple(logits.shape)}")
    if targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} must equal the leading shape of logits "
            f"{tuple(logits.shape[:-1])}"
        )
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"targets must hold integer token ids, got dtype {targets.dtype}")
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()
    flat_targets = targets.reshape(-1).long()
    keep = flat_targets != ignore_index
    if not bool(keep.any()):
        raise ValueError("every target is ignore_index: there is no token to score")
    kept = flat_targets[keep]
    if bool((kept < 0).any()) or bool((kept >= logits.shape[-1]).any()):
        raise ValueError(f"target ids must lie in [0, {logits.shape[-1]}) (or equal ignore_index)")
    return F.cross_entropy(flat_logits[keep], kept, reduction="none")


def _as_nll_array(nll: object) -> np.ndarray:
    if isinstance(nll, torch.Tensor):
        nll = nll.detach().double().cpu().numpy()
    values = np.asarray(nll, dtype=float).reshape(-1)
    if values.size == 0:
        raise ValueError("nll is empty: there is no token to score")
    if not np.all(np.isfinite(values)) or bool((values < 0).any()):
        raise ValueError("nll must hold finite, non-negative negative log-likelihoods (in nats)")
    return values


def perplexity(nll: object, *, num_units: int | None = None) -> float:
    """Perplexity ``exp(sum(nll) / num_units)`` from per-token negative log-likelihoods in nats.

    ``num_units`` defaults to the number of tokens, giving per-token perplexity. Pass the number of
    characters (or words, or bytes) of the scored text to get perplexity per character (word, byte):
    the same total log-likelihood spread over a unit that does not depend on the tokenizer, which is
    what makes models with different tokenizers comparable.
    """
    values = _as_nll_array(nll)
    if num_units is None:
        num_units = values.size
    if isinstance(num_units, bool) or not isinstance(num_units, (int, np.integer)) or num_units <= 0:
        raise ValueError(f"num_units must be a positive int, got {num_units!r}")
    return float(math.exp(values.sum() / num_units))


def bits_per_character(nll: object, num_chars: int) -> float:
    """Total negative log-likelihood in bits divided by the number of characters: ``log2`` of the
    per-character perplexity."""
    return math.log2(perplexity(nll, num_units=num_chars))


# --------------------------------------------------------------------------------------------------
# Classification: confusion matrix, precision / recall / F1, calibration
# --------------------------------------------------------------------------------------------------


def _check_labels(y_true: object, y_pred: object, num_classes: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.ndim != 1 or y_pred.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D, got shapes {y_true.shape} and {y_pred.shape}")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("y_true and y_pred are empty: there is nothing to score")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if not np.issubdtype(y.dtype, np.integer):
            raise TypeError(f"{name} must hold integer class ids 0..C-1, got dtype {y.dtype}")
        if int(y.min()) < 0:
            raise ValueError(f"{name} holds a negative class id ({int(y.min())})")
    seen = int(max(y_true.max(), y_pred.max())) + 1
    if num_classes is None:
        num_classes = seen
    elif seen > num_classes:
        raise ValueError(f"a class id {seen - 1} is out of range for num_classes={num_classes}")
    return y_true.astype(np.int64), y_pred.astype(np.int64), int(num_classes)


def confusion_matrix(y_true: object, y_pred: object, *, num_classes: int | None = None) -> np.ndarray:
    """``C[i, j]`` = number of examples of true class ``i`` predicted as class ``j`` (int array, C x C).

    Classes are ``0 .. num_classes - 1`` (default: the largest id seen, plus one).
    """
    y_true, y_pred, c = _check_labels(y_true, y_pred, num_classes)
    return np.bincount(y_true * c + y_pred, minlength=c * c).reshape(c, c)


def precision_recall_f1(
    y_true: object, y_pred: object, *, average: str | None = "macro", num_classes: int | None = None
) -> tuple[object, object, object]:
    """Precision, recall and F1 from the confusion matrix, averaged ``"macro"``, ``"micro"``,
    ``"weighted"`` or not at all (``None``: one array per class).

    Per class ``k``: precision = TP / (TP + FP), recall = TP / (TP + FN), F1 their harmonic mean;
    an undefined ratio (0/0) counts as 0, like ``sklearn``'s ``zero_division=0``. *Macro* averages
    the per-class values (every class counts the same), *weighted* weights them by the class's
    number of true examples, *micro* pools the counts of all classes first (for single-label data
    all three micro values equal accuracy).
    """
    if average not in ("macro", "micro", "weighted", None):
        raise ValueError(f"average must be 'macro', 'micro', 'weighted' or None, got {average!r}")
    matrix = confusion_matrix(y_true, y_pred, num_classes=num_classes).astype(float)
    tp = np.diag(matrix)
    predicted = matrix.sum(axis=0)  # TP + FP
    actual = matrix.sum(axis=1)  # TP + FN (the class's support)

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.zeros_like(a), where=b > 0)

    if average == "micro":
        p = r = float(tp.sum() / matrix.sum())
        return p, r, _f_measure(p, r)
    precision, recall = ratio(tp, predicted), ratio(tp, actual)
    f1 = ratio(2 * precision * recall, precision + recall)
    if average is None:
        return precision, recall, f1
    weights = actual / actual.sum() if average == "weighted" else np.full(len(tp), 1 / len(tp))
    return float(precision @ weights), float(recall @ weights), float(f1 @ weights)


def _check_confidences(confidences: object, correct: object, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidences, dtype=float)
    hit = np.asarray(correct)
    if conf.ndim != 1 or conf.shape != hit.shape:
        raise ValueError(
            f"confidences and correct must be 1-D and the same length, got shapes {conf.shape} and {hit.shape}"
        )
    if conf.size == 0:
        raise ValueError("confidences is empty: there is nothing to calibrate")
    if not np.all(np.isfinite(conf)) or conf.min() < 0 or conf.max() > 1:
        raise ValueError("confidences must be probabilities in [0, 1]")
    if hit.dtype != bool and not np.all(np.isin(hit, (0, 1))):
        raise ValueError("correct must hold booleans (or 0/1): was each prediction right?")
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int, got {n_bins!r}")
    return conf, hit.astype(float)


def calibration_bins(confidences: object, correct: object, *, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Equal-width confidence bins ``(k/B, (k+1)/B]`` (the first also holds 0) for a reliability diagram.

    Returns arrays of length ``n_bins``: ``"lower"``, ``"upper"`` (bin edges), ``"count"``,
    ``"confidence"`` (mean confidence in the bin) and ``"accuracy"`` (fraction correct); the last
    two are NaN for empty bins. The bin assignment is ``sklearn.calibration.calibration_curve``'s.
    """
    conf, hit = _check_confidences(confidences, correct, n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.searchsorted(edges[1:-1], conf)  # (lower, upper]
    count = np.bincount(which, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(which, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(which, weights=hit, minlength=n_bins) / count
    return {
        "lower": edges[:-1],
        "upper": edges[1:],
        "count": count.astype(np.int64),
        "confidence": confidence,
        "accuracy": accuracy,
    }


def expected_calibration_error(confidences: object, correct: object, *, n_bins: int = 15) -> float:
    """ECE: ``sum_b (n_b / N) * |accuracy_b - confidence_b|`` over equal-width confidence bins.

    ``confidences`` are the probabilities a classifier gave its predicted class and ``correct``
    says whether that prediction was right. 0 means perfectly calibrated on this data; the value
    depends on ``n_bins`` (15, as in Guo et al. 2017, by default).
    """
    bins = calibration_bins(confidences, correct, n_bins=n_bins)
    filled = bins["count"] > 0
    weights = bins["count"][filled] / bins["count"].sum()
    return float(np.sum(weights * np.abs(bins["accuracy"][filled] - bins["confidence"][filled])))


# --------------------------------------------------------------------------------------------------
# Bootstrap: confidence intervals and the paired test
# --------------------------------------------------------------------------------------------------


class ConfidenceInterval(NamedTuple):
    """A statistic on the full data (``estimate``) with a percentile-bootstrap interval ``[low, high]``."""

    estimate: float
    low: float
    high: float
    confidence: float


class PairedBootstrapResult(NamedTuple):
    """``delta`` = statistic(A) - statistic(B) on the full data, its bootstrap interval ``[low, high]``,
    the two-sided ``p_value`` of "no difference", and ``win_rate``, the fraction of resamples where A > B."""

    delta: float
    low: float
    high: float
    p_value: float
    win_rate: float
    confidence: float


def _as_columns(data: object, what: str) -> tuple[tuple[np.ndarray, ...], bool]:
    """``data`` as a tuple of arrays sharing their first axis; the flag says whether it was a tuple."""
    is_tuple = isinstance(data, tuple)
    arrays = tuple(
        np.asarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a)
        for a in (data if is_tuple else (data,))
    )
    if not arrays:
        raise ValueError(f"{what} is an empty tuple")
    for a in arrays:
        if a.ndim == 0:
            raise ValueError(f"{what} must have a first axis of examples to resample, got a scalar")
    sizes = {len(a) for a in arrays}
    if len(sizes) > 1:
        raise ValueError(f"the arrays in {what} must have the same length, got lengths {sorted(sizes)}")
    if sizes.pop() < 2:
        raise ValueError(f"{what} needs at least 2 examples to resample")
    return arrays, is_tuple


def _check_bootstrap_args(n_resamples: int, confidence: float) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive int, got {n_resamples!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence!r}")


def _resampled_statistics(
    arrays: tuple[np.ndarray, ...], statistic: Callable | None, indices: np.ndarray
) -> np.ndarray:
    """``statistic`` on each row of ``indices`` (n_resamples x n); the mean is vectorised."""
    if statistic is None:
        if len(arrays) != 1:
            raise ValueError("with several arrays, pass a statistic that takes them all, e.g. lambda t, p: ...")
        return arrays[0][indices].mean(axis=tuple(range(1, arrays[0].ndim + 1)))
    return np.array([float(statistic(*(a[row] for a in arrays))) for row in indices])


def bootstrap_ci(
    data: object,
    statistic: Callable[..., float] | None = None,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile-bootstrap confidence interval of ``statistic(data)``.

    ``data`` is an array whose first axis indexes examples (per-example scores, or per-sentence
    BLEU statistics), or a tuple of such arrays resampled *together* (e.g. ``(y_true, y_pred)``);
    ``statistic`` receives the resampled array(s) and returns a float (default: the mean). Draws
    ``n_resamples`` samples of the examples with replacement and returns the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the statistic.
    """
    _check_bootstrap_args(n_resamples, confidence)
    arrays, _ = _as_columns(data, "data")
    if statistic is None:
        if len(arrays) != 1:
            raise ValueError("with several arrays, pass a statistic that takes them all, e.g. lambda t, p: ...")
        estimate = float(arrays[0].mean())
    else:
        estimate = float(statistic(*arrays))
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    values = _resampled_statistics(arrays, statistic, rng.integers(0, n, size=(n_resamples, n)))
    alpha = 1 - confidence
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return ConfidenceInterval(estimate, float(low), float(high), confidence)


def paired_bootstrap(
    data_a: object,
    data_b: object,
    statistic: Callable[..., float] | None = None,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedBootstrapResult:
    """Paired bootstrap test of "system A scores higher than system B" on the same test examples.

    ``data_a`` and ``data_b`` hold per-example scores (or statistics, or tuples of arrays, as in
    :func:`bootstrap_ci`) of the two systems on the *same* examples in the same order. Each
    resample draws one set of example indices and applies it to both systems, so the variation
    that comes from which examples are in the test set cancels out. Returns the observed
    difference, its percentile interval, the fraction of resamples in which A beats B, and a
    two-sided p-value: the share of resampled differences, centred on their mean (the bootstrap's
    picture of the null), at least as far from 0 as the observed one, ``(count + 1) / (n + 1)``.
    """
    _check_bootstrap_args(n_resamples, confidence)
    arrays_a, _ = _as_columns(data_a, "data_a")
    arrays_b, _ = _as_columns(data_b, "data_b")
    if len(arrays_a[0]) != len(arrays_b[0]):
        raise ValueError(
            f"data_a has {len(arrays_a[0])} examples but data_b has {len(arrays_b[0])}: a paired test "
            "needs both systems scored on the same examples"
        )

    def full(arrays: tuple[np.ndarray, ...]) -> float:
        if statistic is None:
            if len(arrays) != 1:
                raise ValueError("with several arrays, pass a statistic that takes them all")
            return float(arrays[0].mean())
        return float(statistic(*arrays))

    delta = full(arrays_a) - full(arrays_b)
    rng = np.random.default_rng(seed)
    n = len(arrays_a[0])
    indices = rng.integers(0, n, size=(n_resamples, n))
    deltas = _resampled_statistics(arrays_a, statistic, indices) - _resampled_statistics(
        arrays_b, statistic, indices
    )
    alpha = 1 - confidence
    low, high = np.quantile(deltas, [alpha / 2, 1 - alpha / 2])
    centred = deltas - deltas.mean()
    p_value = (np.sum(np.abs(centred) >= abs(delta)) + 1) / (n_resamples + 1)
    return PairedBootstrapResult(
        delta, float(low), float(high), float(p_value), float(np.mean(deltas > 0)), confidence
    )
