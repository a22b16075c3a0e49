"""Robustness: a word-substitution attack, adversarial training (FGM), augmenters and losses for the long tail.

Taught in the robustness chapter (``notebooks/14_robustness.ipynb``), which measures the weaknesses
the source lists for fine-tuned models (adversarial examples, long-tail classes, poor
generalisation) and the remedies it proposes (augmentation, adversarial training).

- :class:`NeighbourTable`: nearest neighbours of a word in a model's own input-embedding space;
- :func:`word_importance` and :func:`greedy_word_attack`: a greedy word-substitution attack guided by
  deletion scores, with a limit on the words changed and a sentence-similarity constraint;
- :class:`FGM`: the fast gradient method on the word embeddings, usable as
  ``llmbook.train.fit(..., adversary=FGM(model))``;
- :func:`random_deletion`, :func:`random_swap`, :func:`eda`, :func:`neighbour_replace`,
  :func:`mlm_replace`, :func:`back_translate`: data augmenters;
- :func:`class_weights`, :func:`focal_loss`, :func:`tune_class_offsets`, :func:`predict_with_offsets`:
  tools for imbalanced (long-tail) classification.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmbook.checks import require_finite, require_int

__all__ = [
    "AttackResult",
    "FGM",
    "NeighbourTable",
    "STOPWORDS",
    "attack_summary",
    "back_translate",
    "class_weights",
    "eda",
    "focal_loss",
    "greedy_word_attack",
    "is_replaceable",
    "mlm_replace",
    "neighbour_replace",
    "predict_with_offsets",
    "random_deletion",
    "random_swap",
    "split_word",
    "substitute_word",
    "tune_class_offsets",
    "word_importance",
]

STOPWORDS = frozenset(
    "a an and are as at be been but by for from had has have he her his i if in into is it its me my no "
    "not of on or our she so than that the their them then there these they this to was we were what "
    "when which who will with you your".split()
)
"""Words the attack and the augmenters never replace: changing them rarely keeps a sentence fluent."""

_WORD = re.compile(r"^(\W*)([A-Za-z]+)(\W*)$")


def _require_probability(name: str, value: object, *, allow_one: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0 or (not allow_one and value == 1.0):
        raise ValueError(f"{name} must be in [0, 1{']' if allow_one else ')'}, got {value!r}")
    return float(value)


def _require_text(name: str, text: object) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    if not text.split():
        raise ValueError(f"{name} is empty (or only whitespace): there is no word to work on")
    return text


def _rng(seed: object) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(require_int("seed", seed, minimum=0))


def split_word(token: str) -> tuple[str, str, str] | None:
    """``(prefix, word, suffix)`` of a whitespace token such as ``"(shares,"``, or ``None``.

    ``None`` when the token's core is not purely alphabetic (numbers, ``$AAPL``, links, ``don't``):
    those tokens are never replaced.
    """
    match = _WORD.match(token)
    return (match.group(1), match.group(2), match.group(3)) if match else None


def is_replaceable(token: str) -> bool:
    parts = split_word(token)
    return parts is not None and parts[1].lower() not in STOPWORDS and len(parts[1]) > 1


def _with_case(new: str, old: str) -> str:
    """``new`` in the letter case of ``old`` (all caps, capitalised, or lower case)."""
    if old.isupper() and len(old) > 1:
        return new.upper()
    if old[0].isupper():
        return new[:1].upper() + new[1:]
    return new


def substitute_word(token: str, word: str) -> str:
    prefix, old, suffix = split_word(token)  # type: ignore[misc]
    return prefix + _with_case(word, old) + suffix


# ---------------------------------------------------------------------------------------------
# Nearest neighbours in the embedding space
# ---------------------------------------------------------------------------------------------


class NeighbourTable:
    """The ``k`` nearest vocabulary words of a word in a model's input-embedding space (cosine).

    Only vocabulary entries that are whole alphabetic words (no ``##`` pieces, no special tokens)
    of at least ``min_length`` letters take part, and a neighbour must have cosine at least
    ``min_cosine``. Words the tokenizer splits into several pieces have no neighbours. Results are
    cached. Neighbours in a *classifier's* embedding space are often related words rather than
    synonyms (``rise`` may sit next to ``fall``): the attack's similarity constraint, and the
    reader, must check the meaning.
    """

    def __init__(
        self,
        embeddings: torch.Tensor,
        tokenizer: Any,
        *,
        k: int = 8,
        min_cosine: float = 0.5,
        min_length: int = 3,
    ) -> None:
        if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2:
            raise TypeError("embeddings must be the (vocabulary, dim) matrix, e.g. model.get_input_embeddings().weight")
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else None
        if not isinstance(vocab, dict):
            raise TypeError("tokenizer must be a transformers tokenizer (it needs get_vocab())")
        self.k = require_int("k", k, minimum=1)
        self.min_cosine = float(min_cosine)
        if not -1.0 <= self.min_cosine <= 1.0:
            raise ValueError(f"min_cosine must be in [-1, 1], got {min_cosine!r}")
        min_length = require_int("min_length", min_length, minimum=1)
        items = sorted(
            (i, w) for w, i in vocab.items() if w.isalpha() and w.isascii() and len(w) >= min_length and i < len(embeddings)
        )
        if not items:
            raise ValueError("the tokenizer's vocabulary has no whole alphabetic words")
        self.ids = torch.tensor([i for i, _ in items])
        self.words = [w for _, w in items]
        self.index = {w: n for n, w in enumerate(self.words)}
        self.vectors = F.normalize(embeddings.detach().float().cpu()[self.ids], dim=1)
        self._cache: dict[str, list[str]] = {}

    def __call__(self, word: str) -> list[str]:
        """Neighbours of ``word`` (lower-cased), nearest first; ``[]`` if it is not a whole vocabulary word."""
        if not isinstance(word, str):
            raise TypeError(f"word must be a str, got {type(word).__name__}")
        key = word.lower()
        if key not in self._cache:
            row = self.index.get(key)
            if row is None:
                self._cache[key] = []
            else:
                scores = self.vectors @ self.vectors[row]
                scores[row] = -2.0
                top = torch.topk(scores, min(self.k, len(self.words) - 1))
                self._cache[key] = [self.words[int(i)] for s, i in zip(top.values, top.indices) if s >= self.min_cosine]
        return list(self._cache[key])


# ---------------------------------------------------------------------------------------------
# The attack
# ---------------------------------------------------------------------------------------------


@dataclass
class AttackResult:
    """The outcome of :func:`greedy_word_attack` on one text.

    ``status`` is ``"success"`` (the prediction changed), ``"failure"`` (no allowed substitution
    changed it; ``adversarial`` is then the original text), or ``"skipped"`` (the model was already
    wrong on the original, so there was nothing to attack). ``changes`` lists ``(position, old, new)``
    whitespace tokens; ``similarity`` is the sentence similarity of the adversarial text to the
    original (1.0 when unchanged); ``queries`` counts the texts sent to the model.
    """

    original: str
    adversarial: str
    label: int
    original_prediction: int
    adversarial_prediction: int
    status: str
    changes: list[tuple[int, str, str]] = field(default_factory=list)
    similarity: float = 1.0
    queries: int = 0

    @property
    def words_changed(self) -> int:
        return len(self.changes)


def _check_probabilities(probs: object, n: int, what: str) -> np.ndarray:
    array = np.asarray(probs.detach().cpu() if isinstance(probs, torch.Tensor) else probs, dtype=float)
    if array.ndim != 2 or array.shape[0] != n:
        raise ValueError(f"predict_proba returned shape {array.shape} for {n} {what}; it must return (n_texts, n_classes)")
    return array


def word_importance(
    tokens: Sequence[str], label: int, predict_proba: Callable[[list[str]], Any]
) -> np.ndarray:
    """Deletion score of each whitespace token: how much the probability of ``label`` drops without it.

    ``predict_proba(texts)`` returns an ``(n, classes)`` array of probabilities. One batched call.
    """
    tokens = list(tokens)
    if not tokens:
        raise ValueError("tokens is empty")
    texts = [" ".join(tokens)] + [" ".join(tokens[:i] + tokens[i + 1:]) or "." for i in range(len(tokens))]
    probs = _check_probabilities(predict_proba(texts), len(texts), "texts")
    return probs[0, label] - probs[1:, label]


def greedy_word_attack(
    text: str,
    label: int,
    predict_proba: Callable[[list[str]], Any],
    candidates: Callable[[str], Sequence[str]],
    *,
    max_changes: int = 3,
    max_change_fraction: float = 0.25,
    similarity: Callable[[str, list[str]], Any] | None = None,
    min_similarity: float = 0.8,
    seed: int = 0,
) -> AttackResult:
    """Change the model's prediction on ``text`` by replacing as few words as possible.

    1. Skip (``status="skipped"``) when the model already predicts something other than ``label``.
    2. Rank the replaceable words (alphabetic, not in :data:`STOPWORDS`) by :func:`word_importance`
       (ties broken by a permutation drawn from ``seed``, so the attack is deterministic).
    3. In that order, try every ``candidates(word)`` at the word's position (keeping its case and
       punctuation) on the current text. Candidates whose text has ``similarity(original, [texts])``
       below ``min_similarity`` are dropped. If a candidate changes the prediction, keep the most
       similar such one and stop: success. Otherwise keep the candidate that lowers the probability
       of ``label`` most (if any does) and go on to the next word.
    4. At most ``max_changes`` words, and at most ``max_change_fraction`` of the text's words
       (at least one), are changed. When no substitution changes the prediction the result holds the
       *original* text (``status="failure"``).
    """
    text = _require_text("text", text)
    label = require_int("label", label, minimum=0)
    if not callable(predict_proba):
        raise TypeError("predict_proba must be a function list[str] -> (n, classes) probabilities")
    if not callable(candidates):
        raise TypeError("candidates must be a function word -> list of replacement words (e.g. a NeighbourTable)")
    if similarity is not None and not callable(similarity):
        raise TypeError("similarity must be None or a function (original, texts) -> similarities")
    max_changes = require_int("max_changes", max_changes, minimum=1)
    max_change_fraction = _require_probability("max_change_fraction", max_change_fraction)
    if max_change_fraction == 0:
        raise ValueError("max_change_fraction must be > 0: with 0 no word could ever change")
    if isinstance(min_similarity, bool) or not isinstance(min_similarity, (int, float)) or not -1 <= min_similarity <= 1:
        raise ValueError(f"min_similarity must be a number in [-1, 1], got {min_similarity!r}")
    rng = _rng(seed)

    tokens = text.split()
    base = _check_probabilities(predict_proba([text]), 1, "text")[0]
    if label >= base.shape[0]:
        raise ValueError(f"label {label} is out of range for a model with {base.shape[0]} classes")
    queries = 1
    prediction = int(base.argmax())
    result = AttackResult(text, text, label, prediction, prediction, "skipped", queries=queries)
    if prediction != label:
        return result

    budget = min(max_changes, max(1, int(max_change_fraction * len(tokens))))
    positions = [i for i, t in enumerate(tokens) if is_replaceable(t)]
    if not positions:
        result.status = "failure"
        return result
    importance = word_importance(tokens, label, predict_proba)
    queries += len(tokens) + 1
    tie_break = rng.permutation(len(tokens))
    order = sorted(positions, key=lambda i: (-importance[i], tie_break[i]))

    current = list(tokens)
    current_prob = float(base[label])
    changes: list[tuple[int, str, str]] = []
    for position in order:
        if len(changes) >= budget:
            break
        word = split_word(tokens[position])[1]  # type: ignore[index]
        options = [w for w in dict.fromkeys(str(c) for c in candidates(word)) if w.isalpha() and w.lower() != word.lower()]
        if not options:
            continue
        trials = []
        for option in options:
            trial = list(current)
            trial[position] = substitute_word(tokens[position], option)
            trials.append(trial)
        texts = [" ".join(t) for t in trials]
        probs = _check_probabilities(predict_proba(texts), len(texts), "texts")
        queries += len(texts)
        keep = np.ones(len(texts), dtype=bool)
        sims = np.ones(len(texts))
        if similarity is not None:
            sims = np.asarray(similarity(text, texts), dtype=float).reshape(-1)
            if sims.shape != (len(texts),):
                raise ValueError(f"similarity returned {sims.shape[0]} values for {len(texts)} texts")
            keep = sims >= min_similarity
        if not keep.any():
            continue
        flipped = keep & (probs.argmax(axis=1) != label)
        if flipped.any():
            best = int(np.flatnonzero(flipped)[np.argmax(sims[flipped])])
            changes.append((position, current[position], trials[best][position]))
            result.adversarial = texts[best]
            result.adversarial_prediction = int(probs[best].argmax())
            result.status, result.changes, result.similarity = "success", changes, float(sims[best])
            result.queries = queries
            return result
        candidates_prob = np.where(keep, probs[:, label], np.inf)
        best = int(np.argmin(candidates_prob))
        if candidates_prob[best] < current_prob:
            changes.append((position, current[position], trials[best][position]))
            current, current_prob = trials[best], float(candidates_prob[best])
    result.status, result.queries = "failure", queries
    return result


def attack_summary(results: Sequence[AttackResult]) -> dict[str, float]:
    """Attack success rate (successes over attacked, i.e. not skipped, texts), mean words changed per
    success, mean similarity of the successes, and the accuracy under attack (over all texts)."""
    results = list(results)
    if not results:
        raise ValueError("results is empty: attack at least one text")
    attacked = [r for r in results if r.status != "skipped"]
    successes = [r for r in attacked if r.status == "success"]
    return {
        "texts": len(results),
        "attacked": len(attacked),
        "clean_accuracy": len(attacked) / len(results),
        "success_rate": len(successes) / len(attacked) if attacked else float("nan"),
        "accuracy_under_attack": (len(attacked) - len(successes)) / len(results),
        "words_changed": float(np.mean([r.words_changed for r in successes])) if successes else float("nan"),
        "similarity": float(np.mean([r.similarity for r in successes])) if successes else float("nan"),
    }


# ---------------------------------------------------------------------------------------------
# Adversarial training
# ---------------------------------------------------------------------------------------------


class FGM:
    """The fast gradient method on the word-embedding matrix (Miyato et al. 2017; Goodfellow et al. 2015).

    After the clean backward pass, :meth:`attack` adds ``epsilon * g / ||g||`` to the embedding
    matrix, where ``g`` is its gradient (non-zero only on the rows of the batch's tokens); the loss
    on the perturbed embeddings is back-propagated, adding its gradients to the clean ones; then
    :meth:`restore` puts the exact original weights back, before the optimizer step.

    ``FGM(model)`` finds the matrix with ``model.get_input_embeddings()`` (or of ``model.base_model``);
    pass ``embedding=`` to choose another ``nn.Embedding``. An instance is the ``adversary`` of
    :func:`llmbook.train.fit` / :func:`llmbook.train.train_epoch`: they call
    ``fgm(compute_loss, backward)`` after each clean backward pass.
    """

    def __init__(self, model: nn.Module, *, epsilon: float = 1.0, embedding: nn.Embedding | None = None) -> None:
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 < epsilon < math.inf:
            raise ValueError(f"epsilon must be a positive finite number, got {epsilon!r}")
        if embedding is None:
            embedding = _input_embeddings(model)
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"embedding must be an nn.Embedding, got {type(embedding).__name__}")
        self.epsilon = float(epsilon)
        self.weight = embedding.weight
        self._backup: torch.Tensor | None = None

    def attack(self) -> bool:
        """Perturb the embedding matrix along its gradient; ``False`` (and no change) when there is no gradient."""
        if self._backup is not None:
            raise RuntimeError("FGM.attack() called twice without restore(): the weights are already perturbed")
        grad = self.weight.grad
        if grad is None:
            return False
        norm = torch.linalg.vector_norm(grad.float())
        if not torch.isfinite(norm) or norm == 0:
            return False
        self._backup = self.weight.detach().clone()
        with torch.no_grad():
            self.weight.add_((self.epsilon * grad / norm).to(self.weight.dtype))
        return True

    def restore(self) -> None:
        """Put back the exact weights saved by :meth:`attack` (nothing to do if it did not perturb)."""
        if self._backup is not None:
            with torch.no_grad():
                self.weight.copy_(self._backup)
            self._backup = None

    def __call__(self, compute_loss: Callable[[], torch.Tensor], backward: Callable[[torch.Tensor], None]) -> None:
        """One adversarial step (for ``fit(..., adversary=fgm)``): attack, back-propagate the perturbed loss, restore."""
        if not self.attack():
            return
        try:
            backward(compute_loss())
        finally:
            self.restore()


def _input_embeddings(model: nn.Module) -> nn.Module:
    for candidate in (model, getattr(model, "base_model", None)):
        getter = getattr(candidate, "get_input_embeddings", None)
        if callable(getter):
            try:
                found = getter()
            except NotImplementedError:
                continue
            if isinstance(found, nn.Embedding):
                return found
    raise TypeError(
        f"cannot find the word embeddings of {type(model).__name__}: pass FGM(model, embedding=...) "
        "(e.g. model.base_model.embeddings.word_embeddings)"
    )


# ---------------------------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------------------------


def random_deletion(text: str, p: float = 0.1, *, seed: int | np.random.Generator = 0) -> str:
    """Delete each whitespace token with probability ``p`` (EDA's random deletion); never all of them."""
    text = _require_text("text", text)
    p = _require_probability("p", p)
    rng = _rng(seed)
    tokens = text.split()
    kept = [t for t, r in zip(tokens, rng.random(len(tokens))) if r >= p]
    return " ".join(kept) if kept else tokens[int(rng.integers(len(tokens)))]


def random_swap(text: str, n_swaps: int = 1, *, seed: int | np.random.Generator = 0) -> str:
    """Swap two random whitespace tokens, ``n_swaps`` times (EDA's random swap)."""
    text = _require_text("text", text)
    n_swaps = require_int("n_swaps", n_swaps, minimum=0)
    rng = _rng(seed)
    tokens = text.split()
    for _ in range(n_swaps if len(tokens) > 1 else 0):
        i, j = rng.choice(len(tokens), size=2, replace=False)
        tokens[i], tokens[j] = tokens[j], tokens[i]
    return " ".join(tokens)


def eda(text: str, *, p_delete: float = 0.1, n_swaps: int = 1, seed: int | np.random.Generator = 0) -> str:
    """Easy data augmentation without a thesaurus: random deletion, then random swaps (Wei & Zou 2019)."""
    rng = _rng(seed)
    return random_swap(random_deletion(text, p_delete, seed=rng), n_swaps, seed=rng)


def neighbour_replace(
    text: str,
    candidates: Callable[[str], Sequence[str]],
    p: float = 0.15,
    *,
    seed: int | np.random.Generator = 0,
) -> str:
    """Replace each replaceable word, with probability ``p``, by a random one of ``candidates(word)``
    (synonyms, or embedding neighbours from a :class:`NeighbourTable`); case and punctuation are kept."""
    text = _require_text("text", text)
    if not callable(candidates):
        raise TypeError("candidates must be a function word -> list of replacement words")
    p = _require_probability("p", p)
    rng = _rng(seed)
    tokens = text.split()
    for i, token in enumerate(tokens):
        if is_replaceable(token) and rng.random() < p:
            options = [w for w in candidates(split_word(token)[1]) if w.isalpha()]  # type: ignore[index]
            if options:
                tokens[i] = substitute_word(token, options[int(rng.integers(len(options)))])
    return " ".join(tokens)


@torch.no_grad()
def mlm_replace(
    texts: Sequence[str],
    tokenizer: Any,
    mlm: nn.Module,
    *,
    p: float = 0.15,
    top_k: int = 5,
    max_length: int = 64,
    batch_size: int = 32,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> list[str]:
    """Masked-LM "replace" augmentation: mask about ``p`` of each text's whole-word tokens and put in
    one of the masked LM's ``top_k`` predictions (sampled, never the original token).

    ``mlm`` is a masked language model returning ``.logits`` of shape ``(batch, length, vocabulary)``
    (e.g. from :func:`llmbook.dapt.load_masked_lm`). Only tokens that are whole alphabetic words,
    not stopwords, are masked, and only whole-word predictions are used; every text with such a token
    gets at least one replacement. Returns the decoded texts: truncated at ``max_length`` tokens, in
    the tokenizer's spelling (lower case for an uncased tokenizer). Deterministic given ``seed``.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    texts = [_require_text(f"texts[{i}]", t) for i, t in enumerate(texts)]
    if not texts:
        raise ValueError("texts is empty")
    p = _require_probability("p", p)
    top_k = require_int("top_k", top_k, minimum=1)
    max_length = require_int("max_length", max_length, minimum=2)
    batch_size = require_int("batch_size", batch_size, minimum=1)
    generator = torch.Generator().manual_seed(require_int("seed", seed, minimum=0))
    if device is None:
        device = next(mlm.parameters()).device
    mlm.eval().to(device)
    vocab = tokenizer.get_vocab()
    size = max(vocab.values()) + 1
    whole = torch.zeros(size, dtype=torch.bool)
    continuation = torch.zeros(size, dtype=torch.bool)  # "##virus" continues "corona"
    for w, i in vocab.items():
        whole[i] = w.isalpha() and w.isascii() and w.lower() not in STOPWORDS and len(w) > 1
        continuation[i] = w.startswith("##")
    out: list[str] = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], truncation=True, max_length=max_length,
                        padding=True, return_tensors="pt")
        ids = enc["input_ids"]
        eligible = whole[ids.clamp(max=size - 1)] & enc["attention_mask"].bool()
        eligible[:, :-1] &= ~continuation[ids[:, 1:].clamp(max=size - 1)]  # only words of one token
        mask = eligible & (torch.rand(ids.shape, generator=generator) < p)
        # at least one replacement per text that has an eligible token
        for row in range(ids.shape[0]):
            if eligible[row].any() and not mask[row].any():
                choices = torch.nonzero(eligible[row]).flatten()
                mask[row, choices[torch.randint(len(choices), (1,), generator=generator)]] = True
        masked = ids.masked_fill(mask, tokenizer.mask_token_id)
        inputs = {k: v.to(device) for k, v in enc.items()}
        inputs["input_ids"] = masked.to(device)
        logits = getattr(mlm(**inputs), "logits").float().cpu()
        logits[..., ~whole[: logits.shape[-1]]] = -math.inf
        new_ids = ids.clone()
        rows, cols = torch.nonzero(mask, as_tuple=True)
        for r, c in zip(rows.tolist(), cols.tolist()):
            scores = logits[r, c].clone()
            scores[ids[r, c]] = -math.inf
            top = torch.topk(scores, top_k).indices
            new_ids[r, c] = top[torch.randint(top_k, (1,), generator=generator)]
        for row in range(ids.shape[0]):
            kept = new_ids[row][enc["attention_mask"][row].bool()].tolist()
            out.append(tokenizer.decode(kept, skip_special_tokens=True).strip() or texts[start + row])
    return out


def back_translate(
    texts: Sequence[str],
    forward: Callable[[list[str]], Sequence[str]],
    backward: Callable[[list[str]], Sequence[str]],
) -> list[str]:
    """Paraphrase ``texts`` by translating them (``forward``, e.g. English→French) and back (``backward``).

    Both translators take a list of texts and return a list of the same length. A text whose round
    trip comes back empty keeps its original (an empty training text helps no one).
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string")
    texts = [_require_text(f"texts[{i}]", t) for i, t in enumerate(texts)]
    if not callable(forward) or not callable(backward):
        raise TypeError("forward and backward must be translators: functions list[str] -> list[str]")

    def run(translate: Callable[[list[str]], Sequence[str]], batch: list[str], name: str) -> list[str]:
        result = list(translate(batch))
        if len(result) != len(batch):
            raise ValueError(f"the {name} translator returned {len(result)} texts for {len(batch)}")
        bad = [i for i, t in enumerate(result) if not isinstance(t, str)]
        if bad:
            raise TypeError(f"the {name} translator returned a {type(result[bad[0]]).__name__} at {bad[0]}, not a str")
        return result

    middle = run(forward, texts, "forward")
    back = run(backward, middle, "backward")
    return [b.strip() if b.strip() else t for b, t in zip(back, texts)]


# ---------------------------------------------------------------------------------------------
# The long tail
# ---------------------------------------------------------------------------------------------


def class_weights(labels: Sequence[int], num_classes: int, *, power: float = 1.0) -> torch.Tensor:
    """Per-class loss weights ``(n / count_c) ** power``, normalised to a frequency-weighted mean of 1.

    ``power=1`` is inverse frequency, ``0.5`` its square root (a milder correction). A class with no
    example gets the weight of the rarest present class.
    """
    num_classes = require_int("num_classes", num_classes, minimum=2)
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError("labels must be a non-empty 1-D sequence of integer class ids")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes - 1}], found {int(y.min())}..{int(y.max())}")
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not 0 <= power < math.inf:
        raise ValueError(f"power must be a non-negative finite number, got {power!r}")
    counts = np.bincount(y, minlength=num_classes).astype(float)
    counts[counts == 0] = counts[counts > 0].min()
    weights = (len(y) / counts) ** power
    weights /= (weights * counts).sum() / counts.sum()
    return torch.tensor(weights, dtype=torch.float32)


def focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    gamma: float = 2.0,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Focal loss (Lin et al. 2017): ``-w_y (1 - p_y)^gamma log p_y``; ``gamma = 0`` is (weighted) cross-entropy.

    Confident, correct examples (``p_y`` near 1) contribute almost nothing, so the frequent easy
    classes stop dominating the gradient. ``reduction`` is ``"mean"`` (divided by the summed weights
    of the targets, as ``F.cross_entropy`` does), ``"sum"`` or ``"none"``.
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ValueError("logits must be a (batch, classes) tensor")
    if not isinstance(targets, torch.Tensor) or targets.shape != logits.shape[:1] or targets.is_floating_point():
        raise ValueError(f"targets must be a tensor of {logits.shape[0]} integer class ids")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma < math.inf:
        raise ValueError(f"gamma must be a non-negative finite number, got {gamma!r}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if weight is not None and (not isinstance(weight, torch.Tensor) or weight.shape != logits.shape[1:]):
        raise ValueError(f"weight must be a tensor of {logits.shape[1]} class weights")
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, targets.long()[:, None])[:, 0]
    loss = -((1 - log_p.exp()) ** gamma) * log_p
    w = weight.to(loss.device).float()[targets] if weight is not None else torch.ones_like(loss)
    loss = loss * w
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / w.sum()


def tune_class_offsets(
    scores: Any,
    labels: Sequence[int],
    *,
    grid: Sequence[float] = tuple(np.linspace(-3, 3, 25)),
    rounds: int = 2,
) -> np.ndarray:
    """Per-class offsets added to ``scores`` (e.g. log-probabilities) before the argmax, chosen on a
    validation set to maximise macro-F1 by coordinate ascent (``rounds`` passes over the classes).

    This is decision-threshold tuning for a single-label classifier: a positive offset lowers the
    bar a class must clear. Use the offsets on *other* data with :func:`predict_with_offsets`.
    """
    from llmbook.metrics import precision_recall_f1

    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels)
    if s.ndim != 2 or y.shape != (s.shape[0],):
        raise ValueError(f"scores must be (n, classes) and labels (n,); got {s.shape} and {y.shape}")
    require_finite("scores", s, "use log-probabilities, not probabilities with zeros passed through log")
    rounds = require_int("rounds", rounds, minimum=1)
    grid = [float(g) for g in grid]
    if not grid:
        raise ValueError("grid is empty")
    n = s.shape[1]

    def macro(offsets: np.ndarray) -> float:
        pred = (s + offsets).argmax(axis=1)
        return float(precision_recall_f1(y, pred, num_classes=n)[2])

    offsets = np.zeros(n)
    best = macro(offsets)
    for _ in range(rounds):
        for c in range(n):
            for g in grid:
                trial = offsets.copy()
                trial[c] = g
                score = macro(trial)
                if score > best + 1e-12:
                    best, offsets = score, trial
    return offsets


def predict_with_offsets(scores: Any, offsets: Any) -> np.ndarray:
    """``argmax(scores + offsets)`` per row: predictions with per-class offsets from :func:`tune_class_offsets`."""
    s = np.asarray(scores, dtype=float)
    o = np.asarray(offsets, dtype=float)
    if s.ndim != 2 or o.shape != (s.shape[1],):
        raise ValueError(f"scores must be (n, classes) and offsets (classes,); got {s.shape} and {o.shape}")
    return (s + o).argmax(axis=1)

