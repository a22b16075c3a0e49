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
(``streams[k][i]`` = the k-th reference of example i). The BLEU functions accept both: pass
``ref_layout="streams"`` for sacrebleu's layout, then ``bleu(hyps, streams, ref_layout="streams")``
equals ``sacrebleu.corpus_bleu(hyps, streams).score`` (the tests check it to 1e-9). Without the
keyword the layout is ours, and a table that reads differently in the two layouts (a square one:
as many references per example as there are examples) is refused with an error that asks for
``ref_layout``, rather than silently read the wrong way. ``[list(r) for r in zip(*streams)]``
converts sacrebleu's layout into ours.

Chinese and other unsegmented text
----------------------------------
Word-based metrics need words. ``bleu(..., tokenize="zh")`` splits Chinese characters apart as
sacrebleu's ``zh`` tokenizer does (``"char"`` splits every character); :func:`rouge` with
``tokenize="cjk"`` scores Chinese, Japanese and Korean characters one by one, where rouge-score's
default tokenizer (and ``tokenize="default"``) *drops* every non-ASCII character, so a Chinese
summary scores 0.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from llmbook.checks import require_finite, require_int

__all__ = [
    "tokenize_13a",
    "tokenize_zh",
    "tokenize_char",
    "BLEU_TOKENIZERS",
    "REF_LAYOUTS",
    "ngram_counts",
    "BleuResult",
    "bleu_statistics",
    "bleu_from_statistics",
    "bleu_details",
    "bleu",
    "rouge_tokenize",
    "rouge_tokenize_cjk",
    "ROUGE_TOKENIZERS",
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


def _split_with_13a_rules(line: str) -> list[str]:
    for pattern, replacement in _13A_RULES:
        line = pattern.sub(replacement, line)
    return line.split()


def tokenize_13a(text: str) -> list[str]:
    """Split ``text`` into tokens the way ``mteval-v13a.pl`` (sacrebleu's default, ``13a``) does.

    Trailing whitespace is dropped, a few HTML entities are unescaped, punctuation is separated
    from words (periods and commas only when not inside a number), and the result is split on
    whitespace (Unicode whitespace included, e.g. the narrow no-break space of French typography).
    Case is kept. Chinese or Japanese text, written without spaces, stays one "word" per run of
    characters: use :func:`tokenize_zh` (or ``bleu(..., tokenize="zh")``) for it.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    line = text.rstrip()
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    return _split_with_13a_rules(f" {line} ")


# The code points sacrebleu's "zh" tokenizer (sacrebleu/tokenizers/tokenizer_zh.py) treats as Chinese
# characters and splits off one by one. Two of its ranges are written with four-digit escapes
# ("\u20000" to "\u2a6d6", meant as CJK Extension B, U+20000..U+2A6D6, and "\u2f800" to "\u2fa1d"),
# which Python reads as two-character strings; compared with one character they cover U+2001..U+2A6D
# (general punctuation such as the em dash and curly quotes, currency signs, arrows, maths symbols...)
# and U+2F81..U+2FA1, and never the Extension B ideographs themselves. BLEU scores are only comparable
# under the same tokenisation, so these are the ranges sacrebleu *actually* uses, quirks included
# (the tests compare every code point with sacrebleu's own check).
_ZH_RANGES = (
    (0x3400, 0x4DB5),  # CJK Unified Ideographs Extension A
    (0x4E00, 0x9FBB),  # CJK Unified Ideographs (sacrebleu stops at U+9FBB, Unicode 4.1)
    (0xF900, 0xFA2D),  # CJK Compatibility Ideographs
    (0xFA30, 0xFA6A),
    (0xFA70, 0xFAD9),
    (0x2001, 0x2A6D),  # see above: what "\u20000".."\u2a6d6" covers
    (0x2F81, 0x2FA1),  # see above: what "\u2f800".."\u2fa1d" covers
    (0xFF00, 0xFFEF),  # full-width ASCII and punctuation, half-width kana
    (0x2E80, 0x2EFF),  # CJK Radicals Supplement
    (0x3000, 0x303F),  # CJK punctuation (。、「」...)
    (0x31C0, 0x31EF),  # CJK strokes
    (0x2F00, 0x2FDF),  # Kangxi radicals
    (0x2FF0, 0x2FFF),  # ideographic description characters
    (0x3100, 0x312F),  # Bopomofo
    (0x31A0, 0x31BF),  # Bopomofo extended
    (0xFE10, 0xFE1F),  # vertical forms
    (0xFE30, 0xFE4F),  # CJK compatibility forms
    (0x2600, 0x26FF),  # miscellaneous symbols
    (0x2700, 0x27BF),  # dingbats
    (0x3200, 0x32FF),  # enclosed CJK letters and months
    (0x3300, 0x33FF),  # CJK compatibility
)
_ZH_CHARACTER = re.compile(
    "([" + "".join(f"{re.escape(chr(low))}-{re.escape(chr(high))}" for low, high in _ZH_RANGES) + "])"
)


def tokenize_zh(text: str) -> list[str]:
    """Split ``text`` into tokens the way sacrebleu's ``zh`` tokenizer does (for Chinese output).

    Every Chinese character (and CJK punctuation, full-width form and a few symbol blocks: see
    ``_ZH_RANGES``) becomes a token of its own; the rest is split with the ``13a`` punctuation
    rules, so English words and numbers inside Chinese text stay whole. Unlike ``13a`` no HTML
    entity is unescaped, and leading and trailing whitespace is stripped first.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _split_with_13a_rules(_ZH_CHARACTER.sub(r" \1 ", text.strip()))


def tokenize_char(text: str) -> list[str]:
    """Every character that is not whitespace is a token: sacrebleu's ``char`` tokenizer."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    # sacrebleu joins the characters with spaces and splits on whitespace: whitespace characters vanish
    return [char for char in text if not char.isspace()]


def _tokenize_none(text: str) -> list[str]:
    """Split on whitespace only: sacrebleu's ``none`` tokenizer (for text that is already tokenised)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return text.split()


BLEU_TOKENIZERS: dict[str, Callable[[str], list[str]]] = {
    "13a": tokenize_13a,
    "zh": tokenize_zh,
    "char": tokenize_char,
    "none": _tokenize_none,
}
"""sacrebleu's tokenizer names that ``bleu(..., tokenize=NAME)`` accepts, with the function for each."""


def _resolve_bleu_tokenizer(
    tokenize: str | None, tokenizer: Callable[[str], list[str]] | None
) -> Callable[[str], list[str]]:
    if tokenizer is not None:
        if tokenize is not None:
            raise ValueError(
                f"pass tokenize= (one of sacrebleu's names) or tokenizer= (your own function), not both; "
                f"got tokenize={tokenize!r} and tokenizer={tokenizer!r}"
            )
        if not callable(tokenizer):
            raise TypeError(f"tokenizer must be a function from a str to a list of tokens, got {tokenizer!r}")
        return tokenizer
    name = "13a" if tokenize is None else tokenize
    if not isinstance(name, str) or name not in BLEU_TOKENIZERS:
        raise ValueError(
            f"tokenize must be one of {', '.join(map(repr, BLEU_TOKENIZERS))} (sacrebleu's names), got "
            f"{name!r}; for another tokenisation pass tokenizer=<a function from a str to a list of tokens>"
        )
    return BLEU_TOKENIZERS[name]


REF_LAYOUTS = ("per_hypothesis", "streams")
"""The two layouts of BLEU references: ``references[i][k]`` (ours) and ``references[k][i]`` (sacrebleu's)."""

_STREAMS_HINT = (
    " (for sacrebleu's layout, where references[k][i] is the k-th reference of hypothesis i, "
    "pass ref_layout='streams')"
)


def _check_streams(references: object, n: int) -> list[list[str]]:
    """sacrebleu's layout: ``references[k]`` is a list of ``n`` strings, the k-th reference of every hypothesis."""
    if not _is_collection(references):
        raise TypeError(
            "with ref_layout='streams', references must be a list of reference streams (lists of strings), "
            f"got {type(references).__name__}"
        )
    streams = list(references)
    if not streams:
        raise ValueError("references is empty: pass at least one reference stream")
    checked = []
    for k, stream in enumerate(streams):
        if isinstance(stream, str) or not _is_collection(stream):
            raise TypeError(
                f"with ref_layout='streams', references[{k}] must be a list of strings (the k-th reference of "
                f"every hypothesis), got {type(stream).__name__}"
            )
        stream = list(stream)
        if len(stream) != n:
            raise ValueError(
                f"references[{k}] has {len(stream)} references but there are {n} hypotheses: with "
                "ref_layout='streams', references[k][i] is the k-th reference of hypothesis i (for our layout, "
                "references[i] = the references of hypothesis i, leave out ref_layout)"
            )
        for i, ref in enumerate(stream):
            if not isinstance(ref, str):
                raise TypeError(f"references[{k}][{i}] must be a str, got {type(ref).__name__}")
        checked.append(stream)
    return checked


def _bleu_references(references: object, n: int, ref_layout: str | None) -> list[list[str]]:
    """The references in our layout (``[i][k]``), read according to ``ref_layout``.

    ``None`` means ours, but a square table (``n`` hypotheses with ``n`` references each) reads
    differently in the two layouts unless it is symmetric, so then the caller must say which it is.
    """
    if ref_layout is not None and ref_layout not in REF_LAYOUTS:
        raise ValueError(f"ref_layout must be 'per_hypothesis', 'streams' or None, got {ref_layout!r}")
    if ref_layout == "streams":
        return [list(refs) for refs in zip(*_check_streams(references, n))]
    checked = _check_references(references, n, same_count=True, layout_hint=_STREAMS_HINT)
    if ref_layout is None and n > 1 and len(checked[0]) == n:
        transposed = [list(refs) for refs in zip(*checked)]
        if transposed != checked:
            raise ValueError(
                f"references is a square {n} x {n} table, which reads differently in the two layouts: pass "
                "ref_layout='per_hypothesis' if references[i] holds the references of hypothesis i (llmbook's "
                "layout), or ref_layout='streams' if references[k] holds the k-th reference of every "
                "hypothesis (sacrebleu's layout)"
            )
    return checked


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
    tokenize: str | None = None,
    tokenizer: Callable[[str], list[str]] | None = None,
    max_order: int = 4,
    ref_layout: str | None = None,
) -> np.ndarray:
    """Per-sentence sufficient statistics of BLEU, shape ``(n_sentences, 2 + 2 * max_order)``.

    Row ``i`` is ``[hyp_len, ref_len, matches_1..matches_N, totals_1..totals_N]``: the hypothesis
    length, the closest reference length, and for each order ``n`` the clipped n-gram matches
    (each hypothesis n-gram counts at most as often as it appears in any *one* reference) and the
    number of hypothesis n-grams. Corpus BLEU sums the rows first (:func:`bleu_from_statistics`),
    which is why bootstrap resampling of BLEU resamples rows of this table.

    ``tokenize`` names one of sacrebleu's tokenizers (``"13a"``, the default, ``"zh"``, ``"char"``,
    ``"none"``: see :func:`bleu`); ``tokenizer`` is your own function from a string to tokens
    instead (pass one or the other). ``ref_layout`` is as in :func:`bleu`.
    """
    hypotheses = _check_texts(hypotheses, "hypotheses")
    split = _resolve_bleu_tokenizer(tokenize, tokenizer)
    max_order = require_int("max_order", max_order, minimum=1)
    references = _bleu_references(references, len(hypotheses), ref_layout)
    rows = np.zeros((len(hypotheses), 2 + 2 * max_order), dtype=np.int64)
    for i, (hyp, refs) in enumerate(zip(hypotheses, references)):
        hyp_tokens = split(hyp)
        ref_max: Counter = Counter()
        ref_lens = []
        for ref in refs:
            ref_tokens = split(ref)
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
    tokenize: str | None = None,
    tokenizer: Callable[[str], list[str]] | None = None,
    max_order: int = 4,
    smooth: str = "exp",
    ref_layout: str | None = None,
) -> BleuResult:
    """Corpus BLEU with all its parts (:class:`BleuResult`); the defaults are sacrebleu's.

    ``tokenize`` names one of sacrebleu's tokenizers (see :func:`bleu`); ``tokenizer`` is your own
    function from a string to tokens instead (e.g. ``str.split``, or a lambda that lower-cases
    first); pass one or the other. See :func:`bleu` for ``references`` and ``ref_layout``.
    """
    stats = bleu_statistics(
        hypotheses, references, tokenize=tokenize, tokenizer=tokenizer, max_order=max_order, ref_layout=ref_layout
    )
    return bleu_from_statistics(stats, smooth=smooth)


def bleu(
    hypotheses: list[str],
    references: list[list[str]],
    *,
    tokenize: str = "13a",
    ref_layout: str | None = None,
) -> float:
    """Corpus BLEU on sacrebleu's 0-100 scale, equal to ``sacrebleu.corpus_bleu(..., tokenize=tokenize)``.

    ``references[i]`` holds the reference translations of ``hypotheses[i]``; every example must
    have the same number of references (repeat one to pad: a duplicate changes nothing).
    Case-sensitive, n-grams up to 4, exponential smoothing, brevity penalty against the closest
    reference length.

    ``tokenize`` is sacrebleu's tokenizer name: ``"13a"`` (default; for English, French...),
    ``"zh"`` (Chinese: every Chinese character is a token, other text is split as by ``13a``),
    ``"char"`` (every non-space character is a token, for any unsegmented script) or ``"none"``
    (split on spaces only, for text that is already tokenised). With ``13a`` a Chinese sentence
    is a single "word", so Chinese output needs ``"zh"``.

    ``ref_layout`` says how ``references`` is laid out: ``"per_hypothesis"`` (``references[i][k]``,
    the k-th reference of hypothesis i; llmbook's layout) or ``"streams"`` (``references[k][i]``,
    sacrebleu's: ``bleu(hyps, streams, ref_layout="streams") == sacrebleu.corpus_bleu(hyps, streams)``).
    The default ``None`` reads llmbook's layout, and refuses a square table (as many references
    per hypothesis as hypotheses) that would read differently the other way, asking for the keyword.
    """
    return bleu_details(hypotheses, references, tokenize=tokenize, ref_layout=ref_layout).score


# --------------------------------------------------------------------------------------------------
# ROUGE (Lin 2004), as Google's rouge-score computes it without stemming
# --------------------------------------------------------------------------------------------------

_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


def rouge_tokenize(text: str) -> list[str]:
    """rouge-score's tokenisation: lower-case, every run of characters other than ``a-z0-9``
    becomes a space, split. Non-ASCII letters are therefore dropped (``"café"`` -> ``["caf"]``),
    and so is all Chinese, Japanese and Korean text: ``"我爱北京"`` -> ``[]``. Use
    :func:`rouge_tokenize_cjk` (``rouge(..., tokenize="cjk")``) for those languages."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _NON_ALPHANUMERIC.sub(" ", text.lower()).split()


# Characters of the CJK scripts, which are written without spaces between words: Han ideographs
# (with their radicals, iteration marks and numerals), Japanese kana and Korean Hangul.
_CJK_RANGES = (
    (0x1100, 0x11FF),  # Hangul Jamo
    (0x2E80, 0x2FDF),  # CJK radicals, Kangxi radicals
    (0x3005, 0x3007),  # 々 〆 〇
    (0x3021, 0x3029),  # Hangzhou numerals
    (0x3038, 0x303B),
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3130, 0x318F),  # Hangul compatibility Jamo
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK Unified Ideographs Extension A
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0xAC00, 0xD7AF),  # Hangul syllables
    (0xF900, 0xFAFF),  # CJK Compatibility Ideographs
    (0xFF66, 0xFF9F),  # half-width Katakana
    (0x20000, 0x2FA1F),  # Extensions B to F, Compatibility Supplement
    (0x30000, 0x323AF),  # Extensions G and H
)
_CJK_CLASS = "".join(f"{re.escape(chr(low))}-{re.escape(chr(high))}" for low, high in _CJK_RANGES)
_CJK_CHARACTER = re.compile(f"[{_CJK_CLASS}]")
_ROUGE_CJK_TOKEN = re.compile(f"[a-z0-9]+|[{_CJK_CLASS}]")


def rouge_tokenize_cjk(text: str) -> list[str]:
    """:func:`rouge_tokenize`, plus every Chinese, Japanese or Korean character as a token of its own.

    Lower-case; tokens are the runs of ``a-z0-9`` (exactly rouge-score's tokens, so text without
    CJK characters tokenises as with the default) and each Han ideograph, kana or Hangul syllable;
    everything else is dropped, as by rouge-score: punctuation (Chinese punctuation such as 。and ，
    included), accented letters and full-width letters and digits (``１２``). Scoring CJK text
    character by character is the usual practice for Chinese ROUGE, where words are not
    separated by spaces. Korean is split into syllables too, although it separates its words.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _ROUGE_CJK_TOKEN.findall(text.lower())


ROUGE_TOKENIZERS: dict[str, Callable[[str], list[str]]] = {"default": rouge_tokenize, "cjk": rouge_tokenize_cjk}
"""The tokenizers ``rouge(..., tokenize=NAME)`` accepts."""


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


def rouge_per_example(
    predictions: Sequence[str], references: Sequence[Sequence[str]], *, tokenize: str = "default"
) -> dict[str, np.ndarray]:
    """The F-measure of each example for ``rouge1``, ``rouge2`` and ``rougeL`` (arrays of length n).

    With several references an example scores the best of them, separately for each ROUGE type
    (as ``RougeScorer.score_multi`` does). Use these arrays for bootstrap intervals and tests.
    ``tokenize`` is as in :func:`rouge`.
    """
    return _rouge_per_example(predictions, references, tokenize)


def _rouge_per_example(
    predictions: Sequence[str], references: Sequence[Sequence[str]], tokenize: str
) -> dict[str, np.ndarray]:
    """:func:`rouge_per_example`; called by the two public functions only (its warning points at their caller)."""
    if not isinstance(tokenize, str) or tokenize not in ROUGE_TOKENIZERS:
        raise ValueError(
            f"tokenize must be 'default' (rouge-score's tokenizer) or 'cjk' (Chinese, Japanese and Korean "
            f"characters one by one), got {tokenize!r}"
        )
    predictions = _check_texts(predictions, "predictions")
    references = _check_references(references, len(predictions), same_count=False)
    if tokenize == "default":
        _warn_if_cjk_is_dropped(predictions, references)
    split = ROUGE_TOKENIZERS[tokenize]
    scores = {key: np.zeros(len(predictions)) for key in ROUGE_TYPES}
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        pred_tokens = split(pred)
        for ref in refs:
            ref_tokens = split(ref)
            candidates = {
                "rouge1": rouge_n_scores(pred_tokens, ref_tokens, 1)[2],
                "rouge2": rouge_n_scores(pred_tokens, ref_tokens, 2)[2],
                "rougeL": rouge_l_scores(pred_tokens, ref_tokens)[2],
            }
            for key, value in candidates.items():
                scores[key][i] = max(scores[key][i], value)
    return scores


def _warn_if_cjk_is_dropped(predictions: list[str], references: list[list[str]]) -> None:
    texts = [*predictions, *(ref for refs in references for ref in refs)]
    if any(_CJK_CHARACTER.search(text) for text in texts):
        warnings.warn(
            "the texts contain Chinese, Japanese or Korean characters, which rouge-score's default tokenizer "
            "drops (they score nothing): pass tokenize='cjk' to score them character by character",
            UserWarning,
            stacklevel=4,  # the caller of rouge() or rouge_per_example()
        )


def rouge(
    predictions: list[str], references: list[list[str]], *, tokenize: str = "default"
) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measure (0-1) over examples, keys ``"rouge1"``,
    ``"rouge2"``, ``"rougeL"``.

    ``references[i]`` holds the references of ``predictions[i]`` (one or more; counts may differ);
    an example with several scores the best of them. With ``tokenize="default"`` tokenisation is
    Google's ``rouge-score``'s (lower-case, non-alphanumerics removed, no stemming), so the result
    equals ``RougeScorer(["rouge1", "rouge2", "rougeL"]).score_multi`` averaged over examples.

    That tokenizer keeps only ``a-z0-9`` and so **drops every Chinese, Japanese and Korean
    character**: a Chinese summary scores 0 against any reference (a warning says so). Pass
    ``tokenize="cjk"`` to make each such character a token (:func:`rouge_tokenize_cjk`); the result
    then equals rouge-score given that tokenizer (``RougeScorer(..., tokenizer=obj)`` with an
    ``obj.tokenize`` that calls it).
    """
    scores = _rouge_per_example(predictions, references, tokenize)
    return {key: float(values.mean()) for key, values in scores.items()}


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


def _mean_nll(nll: object, num_units: int | None) -> float:
    """Total negative log-likelihood divided by ``num_units`` (default: the number of tokens)."""
    values = _as_nll_array(nll)
    if num_units is None:
        num_units = values.size
    if isinstance(num_units, bool) or not isinstance(num_units, (int, np.integer)) or num_units <= 0:
        raise ValueError(f"num_units must be a positive int, got {num_units!r}")
    with np.errstate(over="ignore"):  # a sum beyond the float range is infinite, as it should be
        return float(values.sum()) / int(num_units)


def perplexity(nll: object, *, num_units: int | None = None) -> float:
    """Perplexity ``exp(sum(nll) / num_units)`` from per-token negative log-likelihoods in nats.

    ``num_units`` defaults to the number of tokens, giving per-token perplexity. Pass the number of
    characters (or words, or bytes) of the scored text to get perplexity per character (word, byte):
    the same total log-likelihood spread over a unit that does not depend on the tokenizer, which is
    what makes models with different tokenizers comparable. A mean NLL above about 709 nats gives
    a perplexity beyond the largest float, returned as ``inf`` (report :func:`bits_per_character`
    or the mean NLL itself for such a model).
    """
    mean = _mean_nll(nll, num_units)
    try:
        return math.exp(mean)
    except OverflowError:  # exp(mean) exceeds the largest float: the perplexity is infinite in floating point
        return math.inf


def bits_per_character(nll: object, num_chars: int) -> float:
    """Total negative log-likelihood in bits divided by the number of characters: ``log2`` of the
    per-character perplexity (computed from the NLL directly, so it stays finite when the
    perplexity itself overflows)."""
    return _mean_nll(nll, num_chars) / math.log(2)


# --------------------------------------------------------------------------------------------------
# Classification: confusion matrix, precision / recall / F1, calibration
# --------------------------------------------------------------------------------------------------


def _class_ids(values: object, name: str) -> np.ndarray:
    """``values`` as a 1-D int64 array of non-negative class ids, or one clear error."""
    ids = np.asarray(values)
    if ids.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {ids.shape}")
    if ids.size == 0:
        return ids.astype(np.int64)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{name} must hold integer class ids, got dtype {ids.dtype}")
    if int(ids.min()) < 0:
        raise ValueError(
            f"{name} holds a negative class id ({int(ids.min())}): class ids must be >= 0 "
            "(drop ignored positions, such as the -100 of padding, before scoring)"
        )
    if int(ids.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{name} holds a class id beyond the int64 range ({int(ids.max())})")
    return ids.astype(np.int64)


def _check_labels(
    y_true: object, y_pred: object, num_classes: int | None, labels: object | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked ``y_true``, ``y_pred`` and the classes to score, in their order.

    The classes are ``labels`` if given, else ``0 .. num_classes - 1`` if given, else the sorted
    ids present in ``y_true`` or ``y_pred`` (what sklearn does): never ``0 .. max id``, which would
    invent classes (and, for a huge id, a huge array).
    """
    y_true, y_pred = _class_ids(y_true, "y_true"), _class_ids(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    if y_true.size == 0:
        raise ValueError("y_true and y_pred are empty: there is nothing to score")
    if labels is not None and num_classes is not None:
        raise ValueError("pass labels= (the class ids to score) or num_classes= (classes 0..n-1), not both")
    if num_classes is not None:
        num_classes = require_int("num_classes", num_classes, minimum=1)
        largest = int(max(y_true.max(), y_pred.max()))
        if largest >= num_classes:
            raise ValueError(
                f"a class id {largest} is out of range for num_classes={num_classes} "
                f"(ids must be 0..{num_classes - 1})"
            )
        return y_true, y_pred, np.arange(num_classes, dtype=np.int64)
    if labels is not None:
        classes = _class_ids(labels, "labels")
        if classes.size == 0:
            raise ValueError("labels is empty: list at least one class id to score")
        unique, counts = np.unique(classes, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"labels lists class {int(unique[counts > 1][0])} more than once")
        return y_true, y_pred, classes
    return y_true, y_pred, np.unique(np.concatenate([y_true, y_pred]))


def _positions(ids: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The index in ``classes`` of each id, or -1 for an id that is not one of the classes."""
    order = np.argsort(classes, kind="stable")
    sorted_classes = classes[order]
    index = np.minimum(np.searchsorted(sorted_classes, ids), len(classes) - 1)
    return np.where(sorted_classes[index] == ids, order[index], -1)


def confusion_matrix(
    y_true: object, y_pred: object, *, num_classes: int | None = None, labels: Sequence[int] | None = None
) -> np.ndarray:
    """``C[i, j]`` = number of examples of true class ``i`` predicted as class ``j`` (int array, C x C).

    Row and column ``k`` stand for the k-th class of: ``labels`` if given (in that order; a subset
    leaves out the examples whose true or predicted class is not in it, as in sklearn), else
    ``0 .. num_classes - 1`` if given, else the sorted class ids that occur in ``y_true`` or
    ``y_pred``. Equals ``sklearn.metrics.confusion_matrix`` with the same ``labels``.
    """
    y_true, y_pred, classes = _check_labels(y_true, y_pred, num_classes, labels)
    c = len(classes)
    rows, columns = _positions(y_true, classes), _positions(y_pred, classes)
    keep = (rows >= 0) & (columns >= 0)
    return np.bincount(rows[keep] * c + columns[keep], minlength=c * c).reshape(c, c)


def precision_recall_f1(
    y_true: object,
    y_pred: object,
    *,
    average: str | None = "macro",
    num_classes: int | None = None,
    labels: Sequence[int] | None = None,
) -> tuple[object, object, object]:
    """Precision, recall and F1, averaged ``"macro"``, ``"micro"``, ``"weighted"`` or not at all
    (``None``: one array per class), equal to ``sklearn.metrics.precision_recall_fscore_support``.

    Per class ``k``: precision = TP / (TP + FP), recall = TP / (TP + FN), F1 their harmonic mean.
    *Macro* averages the per-class values (every class counts the same), *weighted* weights them
    by the class's number of true examples, *micro* pools the counts of all classes first (for
    single-label data with every class scored, all three micro values equal accuracy).

    Which classes count matters for the macro average. By default they are the classes that
    occur in ``y_true`` or ``y_pred`` (sorted; the per-class arrays follow that order), as in
    sklearn: a class that appears in neither is not a class of this data. ``num_classes=n``
    scores classes ``0 .. n - 1`` and ``labels=[...]`` exactly the classes listed, in that order
    (a subset is allowed, as in sklearn; a class listed twice is refused), whether or not they
    occur. A class that never occurs has TP = FP = FN = 0, so its precision, recall and F1 are
    0/0; they count as 0 (and pull the macro average down), as with sklearn's ``zero_division=0``
    and its default ``"warn"``. The same 0 stands for any other 0/0, e.g. the precision of a class
    that is never predicted.
    """
    if average not in ("macro", "micro", "weighted", None):
        raise ValueError(f"average must be 'macro', 'micro', 'weighted' or None, got {average!r}")
    y_true, y_pred, classes = _check_labels(y_true, y_pred, num_classes, labels)
    c = len(classes)
    rows, columns = _positions(y_true, classes), _positions(y_pred, classes)
    hit = (rows >= 0) & (rows == columns)
    tp = np.bincount(rows[hit], minlength=c).astype(float)
    predicted = np.bincount(columns[columns >= 0], minlength=c).astype(float)  # TP + FP
    actual = np.bincount(rows[rows >= 0], minlength=c).astype(float)  # TP + FN (the class's support)

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.zeros_like(a), where=b > 0)

    if average == "micro":
        p = float(tp.sum() / predicted.sum()) if predicted.sum() > 0 else 0.0
        r = float(tp.sum() / actual.sum()) if actual.sum() > 0 else 0.0
        return p, r, _f_measure(p, r)
    precision, recall = ratio(tp, predicted), ratio(tp, actual)
    f1 = ratio(2 * precision * recall, precision + recall)
    if average is None:
        return precision, recall, f1
    if average == "weighted":
        if actual.sum() == 0:  # none of the classes occurs in y_true: sklearn's zero_division=0 gives 0
            return 0.0, 0.0, 0.0
        weights = actual / actual.sum()
    else:
        weights = np.full(c, 1 / c)
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
    for k, a in enumerate(arrays):
        if a.ndim == 0:
            raise ValueError(f"{what} must have a first axis of examples to resample, got a scalar")
        # A NaN score makes the statistic of every resample that draws it NaN, and the interval and
        # p-value meaningless: NaN compares false, which would give the smallest p-value, 1 / (n + 1).
        require_finite(
            f"{what}[{k}]" if is_tuple else what,
            a,
            "Drop or re-score the examples whose score is NaN or infinite before bootstrapping.",
        )
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


def _full_statistic(arrays: tuple[np.ndarray, ...], statistic: Callable | None, what: str) -> float:
    """``statistic`` (default: the mean) on the full data; it must be a finite number."""
    if statistic is None:
        if len(arrays) != 1:
            raise ValueError("with several arrays, pass a statistic that takes them all, e.g. lambda t, p: ...")
        value = float(arrays[0].mean())
    else:
        value = float(statistic(*arrays))
    if not math.isfinite(value):
        raise ValueError(f"the statistic of {what} is {value}: a bootstrap needs a statistic with a finite value")
    return value


def _resampled_statistics(
    arrays: tuple[np.ndarray, ...], statistic: Callable | None, indices: np.ndarray
) -> np.ndarray:
    """``statistic`` on each row of ``indices`` (n_resamples x n); the mean is vectorised."""
    if statistic is None:
        if len(arrays) != 1:
            raise ValueError("with several arrays, pass a statistic that takes them all, e.g. lambda t, p: ...")
        values = arrays[0][indices].mean(axis=tuple(range(1, arrays[0].ndim + 1)))
    else:
        values = np.array([float(statistic(*(a[row] for a in arrays))) for row in indices])
    bad = int(np.sum(~np.isfinite(values)))
    if bad:
        raise ValueError(
            f"the statistic is NaN or infinite on {bad} of {len(values)} resamples (e.g. a ratio whose "
            "denominator is 0 in some resample): make it return a finite value for every resample"
        )
    return values


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
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the statistic. Data with NaN
    or infinite values, and a statistic that is not finite on the data or on some resample, are
    refused with a ``ValueError``.
    """
    _check_bootstrap_args(n_resamples, confidence)
    arrays, _ = _as_columns(data, "data")
    estimate = _full_statistic(arrays, statistic, "data")
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
    NaN or infinite data, or a statistic that is not finite, raise ``ValueError`` (as in
    :func:`bootstrap_ci`).
    """
    _check_bootstrap_args(n_resamples, confidence)
    arrays_a, _ = _as_columns(data_a, "data_a")
    arrays_b, _ = _as_columns(data_b, "data_b")
    if len(arrays_a[0]) != len(arrays_b[0]):
        raise ValueError(
            f"data_a has {len(arrays_a[0])} examples but data_b has {len(arrays_b[0])}: a paired test "
            "needs both systems scored on the same examples"
        )
    delta = _full_statistic(arrays_a, statistic, "data_a") - _full_statistic(arrays_b, statistic, "data_b")
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


# --------------------------------------------------------------------------------------------------
# Ranking: Recall@k and mean reciprocal rank (retrieval, customer-service chapter)
# --------------------------------------------------------------------------------------------------


def _check_ranking(ranked: object, relevant: object) -> tuple[list[list], list[set]]:
    """``ranked`` as one list of retrieved ids per query and ``relevant`` as one non-empty set per query.

    An entry of ``relevant`` that is a list, tuple, set or array is that query's set of relevant ids;
    anything else (an int, a str) is its single relevant id, so string ids are never split into
    characters.
    """
    if isinstance(ranked, (str, bytes)) or not (_is_collection(ranked) or isinstance(ranked, np.ndarray)):
        raise TypeError(
            "ranked must hold one list of retrieved ids per query (a 2-D array or a list of lists), "
            f"got {type(ranked).__name__}"
        )
    rows = [list(row.tolist() if isinstance(row, np.ndarray) else row) if _is_list_like(row) else None for row in ranked]
    if not rows:
        raise ValueError("ranked is empty: there are no queries to score")
    bad = next((i for i, row in enumerate(rows) if row is None), None)
    if bad is not None:
        raise TypeError(
            f"ranked[{bad}] is {type(list(ranked)[bad]).__name__}, not a list of retrieved ids: ranked must be "
            "2-D (one row of ids per query); wrap a single query's list as [ids]"
        )
    if isinstance(relevant, (str, bytes)) or not (_is_collection(relevant) or isinstance(relevant, np.ndarray)):
        raise TypeError(f"relevant must hold one entry per query, got {type(relevant).__name__}")
    relevant = list(relevant.tolist() if isinstance(relevant, np.ndarray) and relevant.ndim == 1 else relevant)
    if len(relevant) != len(rows):
        raise ValueError(f"ranked has {len(rows)} queries but relevant has {len(relevant)} entries")
    sets = []
    for i, entry in enumerate(relevant):
        chosen = set(entry.tolist() if isinstance(entry, np.ndarray) else entry) if _is_list_like(entry) else {entry}
        if not chosen:
            raise ValueError(f"relevant[{i}] is empty: every query needs at least one relevant id to be scored")
        sets.append(chosen)
    return rows, sets


def _is_list_like(value: object) -> bool:
    return isinstance(value, (list, tuple, set, frozenset)) or (isinstance(value, np.ndarray) and value.ndim == 1)


def recall_at_k(ranked: object, relevant: object, k: int) -> float:
    """Recall@k: the share of each query's relevant ids found among its first ``k`` retrieved ids, averaged.

    ``ranked[i]`` lists the ids retrieved for query ``i``, best first (a row of a 2-D array, or a
    list); ids may repeat, e.g. when they are the labels of the retrieved items. ``relevant[i]`` is
    query ``i``'s relevant id, or a collection of them. With one relevant id per query — the usual
    case in question answering, and what the customer-service chapter scores — Recall@k is the share
    of queries whose answer is among the first ``k`` results (DPR's "top-k accuracy"), and it equals
    ``sklearn.metrics.top_k_accuracy_score`` on the scores that produced the ranking. ``k`` larger
    than a row's length is refused: the ranking does not say what lies beyond it.
    """
    rows, sets = _check_ranking(ranked, relevant)
    k = require_int("k", k, minimum=1)
    short = next((i for i, row in enumerate(rows) if len(row) < k), None)
    if short is not None:
        raise ValueError(
            f"k={k} but ranked[{short}] lists only {len(rows[short])} ids: retrieve at least k results per query"
        )
    return float(np.mean([len(rel & set(row[:k])) / len(rel) for row, rel in zip(rows, sets)]))


def mean_reciprocal_rank(ranked: object, relevant: object) -> float:
    """MRR: the mean over queries of ``1 / rank`` of the first relevant id in ``ranked[i]`` (0 if none is listed).

    Same inputs as :func:`recall_at_k`. Ranks start at 1, so MRR is 1 when every query's first
    result is relevant. With one relevant id per query and the full ranking, it equals
    ``sklearn.metrics.label_ranking_average_precision_score``.
    """
    rows, sets = _check_ranking(ranked, relevant)
    reciprocal = []
    for row, rel in zip(rows, sets):
        rank = next((position for position, item in enumerate(row, start=1) if item in rel), None)
        reciprocal.append(0.0 if rank is None else 1.0 / rank)
    return float(np.mean(reciprocal))


__all__ += ["recall_at_k", "mean_reciprocal_rank"]


# --------------------------------------------------------------------------------------------------
# Ranking: NDCG@k and hit rate (recommendation chapter); reuse _check_ranking of Recall@k and MRR
# --------------------------------------------------------------------------------------------------


def _check_unique_rankings(rows: list[list], k: int) -> None:
    """Refuse a ranking that lists an id twice or is shorter than ``k`` (one clear error naming the row)."""
    for i, row in enumerate(rows):
        if len(row) < k:
            raise ValueError(f"k={k} but ranked[{i}] lists only {len(row)} ids: retrieve at least k results per query")
        if len(set(row)) != len(row):
            seen: set = set()
            repeated = next(item for item in row if item in seen or seen.add(item))
            raise ValueError(
                f"ranked[{i}] lists id {repeated!r} more than once: a ranking of items names each item once "
                "(drop the repeats, keeping the first)"
            )


def ndcg_at_k(ranked: object, relevant: object, k: int) -> float:
    """NDCG@k with binary relevance, averaged over queries.

    For query ``i``, DCG@k sums ``1 / log2(rank + 1)`` over the relevant ids among the first ``k``
    of ``ranked[i]`` (rank 1 is the first); it is divided by the best possible DCG@k, that of a
    ranking that lists ``min(k, len(relevant[i]))`` relevant ids first, so every query scores in
    [0, 1]. Same inputs as :func:`recall_at_k`; a ranking that lists an id twice, ``k < 1``, or
    ``k`` longer than a ranking are errors. On a ranking of every candidate it equals
    ``sklearn.metrics.ndcg_score(y_true, y_score, k=k)`` with 0/1 ``y_true`` and untied scores.
    Taught in the recommendation chapter.
    """
    rows, sets = _check_ranking(ranked, relevant)
    k = require_int("k", k, minimum=1)
    _check_unique_rankings(rows, k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    values = []
    for row, rel in zip(rows, sets):
        gains = np.array([item in rel for item in row[:k]], dtype=float)
        ideal = discounts[: min(k, len(rel))].sum()
        values.append(float(gains @ discounts[: len(gains)]) / ideal)
    return float(np.mean(values))


def hit_rate(ranked: object, relevant: object, k: int) -> float:
    """HitRate@k: the share of queries with at least one relevant id among their first ``k`` ranked ids.

    Same inputs and errors as :func:`ndcg_at_k`. With one relevant id per query it equals
    :func:`recall_at_k`; it is the usual metric of the sampled protocol (one held-out item ranked
    among sampled negatives). Taught in the recommendation chapter.
    """
    rows, sets = _check_ranking(ranked, relevant)
    k = require_int("k", k, minimum=1)
    _check_unique_rankings(rows, k)
    return float(np.mean([bool(rel & set(row[:k])) for row, rel in zip(rows, sets)]))


__all__ += ["ndcg_at_k", "hit_rate"]


# --- chrF (evaluation chapter: the translation model's score with an interval) ---------------------

def chrf_statistics(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
    """Per-sentence sufficient statistics of sacrebleu's chrF (character 6-grams, β = 2), one row each.

    chrF {Popović 2015} is the F-score of character n-gram precision and recall (n = 1..6, recall
    weighted β = 2 times as much as precision), computed from corpus totals. ``references[i]`` holds
    the references of hypothesis ``i`` (one or more; sentences may have different numbers of them —
    the best-matching reference of each sentence is used, as in sacrebleu). Sum the rows of any
    resample and pass them to :func:`chrf_from_statistics` to get corpus chrF: that is how
    :func:`bootstrap_ci` puts an interval on it. The statistics are sacrebleu's own, so
    ``chrf_from_statistics(chrf_statistics(h, r))`` equals ``sacrebleu.corpus_chrf`` (tested).
    """
    from sacrebleu.metrics import CHRF

    hypotheses = _check_texts(hypotheses, "hypotheses")
    if isinstance(references, str) or len(references) != len(hypotheses):
        raise ValueError(
            f"references must hold one list of reference strings per hypothesis ({len(hypotheses)}), "
            f"got {len(references) if not isinstance(references, str) else 'a string'}"
        )
    per_sentence = []
    for i, refs in enumerate(references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        if not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"references[{i}] must be a non-empty list of strings")
        per_sentence.append(refs)
    width = max(len(refs) for refs in per_sentence)
    # sacrebleu wants reference *streams* of equal length: pad each sentence's list with its first
    # reference (a duplicate never changes chrF, which keeps the best reference per sentence).
    streams = [[refs[k] if k < len(refs) else refs[0] for refs in per_sentence] for k in range(width)]
    metric = CHRF()
    return np.asarray(metric._extract_corpus_statistics(hypotheses, streams), dtype=np.int64)


def chrf_from_statistics(stats: np.ndarray) -> float:
    """Corpus chrF (0-100) from rows of :func:`chrf_statistics` (summed here)."""
    from sacrebleu.metrics import CHRF

    stats = np.asarray(stats)
    if stats.ndim != 2 or stats.shape[0] == 0:
        raise ValueError(f"stats must be a non-empty 2-D array of chrf_statistics rows, got shape {stats.shape}")
    return float(CHRF()._compute_score_from_stats(stats.sum(axis=0).tolist()).score)


__all__ += ["chrf_statistics", "chrf_from_statistics"]
