"""A customer-service assistant: calibrated intent detection, a human handoff, templates and retrieval.

Taught in the customer-service chapter (``notebooks/09_customer_service.ipynb``).

- :func:`fit_temperature` / :func:`apply_temperature`: *temperature scaling* (Guo et al., 2017), one
  number ``T`` fitted on validation logits so that ``softmax(logits / T)`` is calibrated; it never
  changes the arg-max, only how confident the probabilities are.
- :func:`risk_coverage_curve` / :func:`threshold_for_accuracy`: *selective prediction* — answer only
  when the confidence reaches a threshold and hand the rest to a person; pick the threshold that keeps
  the accuracy on answered questions at a target.
- :class:`Assistant` and its :class:`Reply`: classify a question, answer from the intent's reply
  template when confident, cite the most similar help article, and hand off otherwise. Bad input
  (not a string, empty, longer than the model reads) is refused with one clear ``ValueError``; a
  too-long question is only truncated when the caller asks, and the reply then says so.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from llmbook.checks import require_bool, require_int

__all__ = [
    "Assistant",
    "BadQuestionError",
    "HANDOFF_MESSAGE",
    "OperatingPoint",
    "Reply",
    "apply_temperature",
    "classifier_outputs",
    "fit_temperature",
    "risk_coverage_curve",
    "temperature_nll",
    "threshold_for_accuracy",
]


# --------------------------------------------------------------------------------------------------
# Temperature scaling
# --------------------------------------------------------------------------------------------------


def _check_logits(logits: object) -> np.ndarray:
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().double().cpu().numpy()
    try:
        array = np.asarray(logits, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"logits must be a numeric (n, num_classes) array or tensor, got {type(logits).__name__}") from None
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] < 2:
        raise ValueError(f"logits must be (n, num_classes) with n >= 1 and at least 2 classes, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("logits contain NaN or infinite values: the model that produced them has diverged")
    return array


def _check_labels(labels: object, n: int, num_classes: int) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.shape != (n,):
        raise ValueError(f"labels must have one entry per row of logits ({n}), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"labels must be integer class ids, got dtype {array.dtype}")
    if array.min() < 0 or array.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1} (the columns of logits), got {int(array.min())}..{int(array.max())}")
    return array.astype(np.int64)


def _check_temperature(temperature: object) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating, np.integer)):
        raise TypeError(f"temperature must be a positive number, got {temperature!r}")
    if not 0 < float(temperature) < math.inf:
        raise ValueError(f"temperature must be positive and finite, got {temperature!r}")
    return float(temperature)


def _log_softmax(scaled: np.ndarray) -> np.ndarray:
    shifted = scaled - scaled.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def temperature_nll(logits: object, labels: object, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``, in nats."""
    array = _check_logits(logits)
    targets = _check_labels(labels, len(array), array.shape[1])
    temperature = _check_temperature(temperature)
    log_probs = _log_softmax(array / temperature)
    return float(-log_probs[np.arange(len(array)), targets].mean())


def apply_temperature(logits: object, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``softmax(logits / temperature)``, shape ``(n, num_classes)``.

    ``T > 1`` softens over-confident probabilities, ``T < 1`` sharpens them; the arg-max (the
    predicted class) is the same for every ``T``.
    """
    array = _check_logits(logits)
    return np.exp(_log_softmax(array / _check_temperature(temperature)))


def fit_temperature(
    logits: object, labels: object, *, min_temperature: float = 0.05, max_temperature: float = 20.0
) -> float:
    """The temperature ``T`` in ``[min_temperature, max_temperature]`` that minimises :func:`temperature_nll`.

    Fit it on held-out data (the validation split), never on the training data: the model has fitted
    those examples and is right on them far more often than on new ones. The mean NLL is a convex function of ``1 / T`` (a
    log-sum-exp of linear functions minus a linear one), so a bounded one-dimensional search
    (Brent's method) finds the global minimum; the tests check it against a fine grid.
    """
    from scipy.optimize import minimize_scalar

    array = _check_logits(logits)
    targets = _check_labels(labels, len(array), array.shape[1])
    low, high = _check_temperature(min_temperature), _check_temperature(max_temperature)
    if low >= high:
        raise ValueError(f"min_temperature ({low}) must be smaller than max_temperature ({high})")
    rows = np.arange(len(array))

    def nll(inverse: float) -> float:
        return float(-_log_softmax(array * inverse)[rows, targets].mean())

    found = minimize_scalar(nll, bounds=(1 / high, 1 / low), method="bounded", options={"xatol": 1e-7})
    # Brent's bounded search never evaluates the end points themselves; the optimum can be one of them.
    candidates = [float(found.x), 1 / high, 1 / low]
    best = min(candidates, key=nll)
    return float(1 / best)


@torch.no_grad()
def classifier_outputs(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int = 64,
    batch_size: int = 128,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``(n, num_labels)`` and pooled sentence embeddings ``(n, hidden)`` of a mean-pooling classifier.

    One forward pass gives both: the embedding is the masked mean of the encoder's last hidden
    states, exactly what :class:`llmbook.textclf.MeanPoolingClassifier` feeds its linear head, and the
    logits are that head's output (in eval mode, so without dropout). Texts are processed sorted by
    length, which keeps padding low, and returned in their original order.
    """
    from tqdm.auto import tqdm

    from llmbook.embed import mean_pool

    encoder, head = getattr(model, "base_model", None), getattr(model, "classifier", None)
    if not isinstance(encoder, torch.nn.Module) or not isinstance(head, torch.nn.Module):
        raise TypeError("model must be a llmbook.textclf.MeanPoolingClassifier (an encoder with a linear head)")
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string: wrap it in a list")
    texts = list(texts.tolist() if hasattr(texts, "tolist") else texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise ValueError("texts must be a non-empty list of strings")
    max_length = require_int("max_length", max_length, minimum=2)
    batch_size = require_int("batch_size", batch_size, minimum=1)
    progress = require_bool("progress", progress)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval().to(device)
    order = np.argsort([len(t) for t in texts], kind="stable")
    logits, pooled = [], []
    starts = range(0, len(texts), batch_size)
    for start in tqdm(starts, desc="classifying", disable=not progress or len(starts) < 2):
        chunk = [texts[i] for i in order[start:start + batch_size]]
        batch = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        vectors = mean_pool(hidden, batch["attention_mask"])
        logits.append(head(vectors).float().cpu())
        pooled.append(vectors.float().cpu())
    restore = np.argsort(order, kind="stable")
    return torch.cat(logits).numpy()[restore], torch.cat(pooled).numpy()[restore]


# --------------------------------------------------------------------------------------------------
# Selective prediction: answer when confident, hand off otherwise
# --------------------------------------------------------------------------------------------------


def _check_selective(confidences: object, correct: object) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidences.detach().cpu().numpy() if isinstance(confidences, torch.Tensor) else confidences,
                      dtype=np.float64)
    hit = np.asarray(correct.detach().cpu().numpy() if isinstance(correct, torch.Tensor) else correct)
    if conf.ndim != 1 or conf.shape != hit.shape or conf.size == 0:
        raise ValueError(
            f"confidences and correct must be non-empty 1-D arrays of the same length, got shapes {conf.shape} and {hit.shape}"
        )
    if not np.isfinite(conf).all():
        raise ValueError("confidences contain NaN or infinite values")
    if hit.dtype != bool and not np.isin(hit, (0, 1)).all():
        raise ValueError("correct must hold booleans (or 0/1): was each prediction right?")
    return conf, hit.astype(bool)


def risk_coverage_curve(confidences: object, correct: object) -> dict[str, np.ndarray]:
    """Coverage and risk of answering only the questions whose confidence is at least each threshold.

    The thresholds are the distinct confidences, highest first. For each: ``coverage`` is the share
    of questions answered (confidence >= threshold), ``accuracy`` the share of those answered
    correctly and ``risk`` = 1 - accuracy. Returns a dict of arrays ``threshold``, ``coverage``,
    ``accuracy``, ``risk``, ``answered`` (a count). Answering everything is the last row.
    """
    conf, hit = _check_selective(confidences, correct)
    order = np.argsort(-conf, kind="stable")
    sorted_conf, sorted_hit = conf[order], hit[order]
    # Questions with equal confidence are answered together: keep the last row of each tie.
    last_of_tie = np.flatnonzero(np.append(sorted_conf[1:] != sorted_conf[:-1], True))
    answered = last_of_tie + 1
    accuracy = np.cumsum(sorted_hit)[last_of_tie] / answered
    return {
        "threshold": sorted_conf[last_of_tie],
        "coverage": answered / len(conf),
        "accuracy": accuracy,
        "risk": 1 - accuracy,
        "answered": answered,
    }


class OperatingPoint(NamedTuple):
    """Where to answer: confidence ``>= threshold``. ``coverage`` is the share answered, ``accuracy`` theirs."""

    threshold: float
    coverage: float
    accuracy: float


def threshold_for_accuracy(confidences: object, correct: object, target: float = 0.97) -> OperatingPoint:
    """The lowest threshold (the most questions answered) whose answered accuracy is at least ``target``.

    Choose it on validation data and report it on test data: chosen on the test set itself, the
    accuracy is guaranteed by construction and says nothing. If even the single most confident
    answer misses the target, nothing is answered: the threshold is ``inf`` and coverage 0.
    """
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise ValueError(f"target must be an accuracy in (0, 1], got {target!r}")
    curve = risk_coverage_curve(confidences, correct)
    good = np.flatnonzero(curve["accuracy"] >= target - 1e-12)
    if good.size == 0:
        return OperatingPoint(math.inf, 0.0, math.nan)
    i = good[-1]
    return OperatingPoint(float(curve["threshold"][i]), float(curve["coverage"][i]), float(curve["accuracy"][i]))


# --------------------------------------------------------------------------------------------------
# The assistant
# --------------------------------------------------------------------------------------------------

HANDOFF_MESSAGE = (
    "I am not sure I understood your question, so I am passing this conversation to a colleague, "
    "who will reply here shortly."
)
"""What the assistant says when it hands the conversation to a person."""


class BadQuestionError(ValueError, TypeError):
    """A question the assistant cannot answer as given: not a string, empty, or too long.

    It is a ``ValueError`` (as the chapter's API promises) and, for code that checks types, a
    ``TypeError`` too.
    """


@dataclass(frozen=True)
class Reply:
    """What :meth:`Assistant.reply` returns.

    ``intent`` is the predicted intent (also when the conversation is handed off, so the person
    taking over sees the guess), ``confidence`` its calibrated probability, ``text`` what the customer
    reads, ``source`` the id of the help article the text cites (``None`` without articles),
    ``handed_off`` whether a person takes over, and ``truncated`` whether only the first
    ``max_length`` tokens of the question were read.
    """

    question: str
    intent: str
    confidence: float
    text: str
    source: str | None
    handed_off: bool
    truncated: bool = False


def _placeholders(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


def _fill(template: str, details: Mapping[str, str], what: str) -> str:
    missing = sorted(_placeholders(template) - set(details))
    if missing:
        raise ValueError(f"{what} uses the placeholder(s) {missing} but details gives no value for them")
    return template.format_map(details)


class Assistant:
    """Intent classifier + calibration + handoff threshold + reply templates + help-article retrieval.

    - ``model``: a sentence classifier that returns logits (a
      :class:`llmbook.textclf.MeanPoolingClassifier` or any Hugging Face sequence classifier) and its
      ``tokenizer``; ``intents[i]`` names class ``i``.
    - ``templates``: intent -> reply template with ``{placeholders}``, filled from ``details``; every
      intent needs a template and every placeholder a value (checked here, once).
    - ``temperature``: from :func:`fit_temperature`; ``threshold``: hand off when the calibrated
      confidence is below it (from :func:`threshold_for_accuracy`).
    - ``articles`` (rows with ``id``, ``title``) and ``article_index`` (an
      :class:`llmbook.retrieval.EmbeddingIndex` over them, one row per article, that can embed text):
      the most similar article is cited in every reply. With ``intent_articles`` (intent -> article
      id), an answered question cites its intent's own article instead, and retrieval is kept for
      the questions handed off, whose intent is in doubt.
    - ``max_length``: the most tokens a question may have; by default what the model can read
      (its position embeddings, e.g. 512).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        intents: Sequence[str],
        templates: Mapping[str, str],
        *,
        details: Mapping[str, str] | None = None,
        temperature: float = 1.0,
        threshold: float = 0.0,
        articles: Any = None,
        article_index: Any = None,
        intent_articles: Mapping[str, str] | None = None,
        max_length: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module classifier, got {type(model).__name__}")
        if not callable(tokenizer):
            raise TypeError(f"tokenizer must be a transformers tokenizer, got {type(tokenizer).__name__}")
        intents = list(intents)
        if not intents or not all(isinstance(name, str) for name in intents):
            raise TypeError("intents must be a non-empty list of intent names (str), one per class")
        num_labels = getattr(model, "num_labels", None) or getattr(getattr(model, "config", None), "num_labels", None)
        if num_labels is not None and num_labels != len(intents):
            raise ValueError(f"the model has {num_labels} classes but {len(intents)} intent names were given")
        missing = [name for name in intents if name not in templates]
        if missing:
            raise ValueError(f"{len(missing)} intents have no reply template, e.g. {missing[:3]}")
        details = dict(details or {})
        self.replies = {name: _fill(templates[name], details, f"the template of {name!r}") for name in intents}
        self.temperature = _check_temperature(temperature)
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be a probability in [0, 1], got {threshold!r}")
        self.threshold = float(threshold)
        if (articles is None) != (article_index is None):
            raise ValueError("pass articles and article_index together (one index row per article), or neither")
        self.articles: list[dict[str, str]] | None = None
        if articles is not None:
            rows = articles.to_dict("records") if hasattr(articles, "to_dict") else [dict(a) for a in articles]
            if len(rows) != len(article_index):
                raise ValueError(f"article_index has {len(article_index)} rows but there are {len(rows)} articles")
            if any("id" not in row or "title" not in row for row in rows):
                raise ValueError("every article needs an 'id' and a 'title'")
            self.articles = [{"id": str(row["id"]), "title": _fill(str(row["title"]), details, f"article {row['id']!r}")}
                             for row in rows]
        self.article_index = article_index
        self.intent_articles: dict[str, int] | None = None
        if intent_articles is not None:
            if self.articles is None:
                raise ValueError("intent_articles needs articles and article_index")
            position = {a["id"]: i for i, a in enumerate(self.articles)}
            unknown = sorted({str(a) for a in intent_articles.values()} - set(position))
            if unknown:
                raise ValueError(f"intent_articles names article(s) {unknown[:3]} that are not among the articles")
            missing = [name for name in intents if name not in intent_articles]
            if missing:
                raise ValueError(f"{len(missing)} intents have no article in intent_articles, e.g. {missing[:3]}")
            self.intent_articles = {name: position[str(intent_articles[name])] for name in intents}
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        encoder = getattr(model, "base_model", None)
        limit = limit or getattr(getattr(encoder, "config", None), "max_position_embeddings", None)
        model_max = getattr(tokenizer, "model_max_length", None)
        if isinstance(model_max, int) and model_max < 100_000:  # tokenizers without a limit report ~1e30
            limit = min(limit, model_max) if limit else model_max
        if max_length is None:
            if limit is None:
                raise ValueError("cannot tell how many tokens the model reads: pass max_length")
            max_length = int(limit)
        self.max_length = require_int("max_length", max_length, minimum=3)
        if limit is not None and self.max_length > limit:
            raise ValueError(f"max_length={self.max_length} is more than the model reads ({limit} tokens)")
        self.intents = intents
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device is not None else next(model.parameters()).device

    def __repr__(self) -> str:
        return (f"Assistant({len(self.intents)} intents, temperature {self.temperature:.3f}, threshold "
                f"{self.threshold:.3f}, {len(self.articles) if self.articles else 0} articles, max_length {self.max_length})")

    def _check_questions(self, questions: Sequence[object], truncate: bool) -> tuple[list[str], list[bool]]:
        texts, truncated = [], []
        for i, question in enumerate(questions):
            where = "question" if len(questions) == 1 else f"question {i}"
            if not isinstance(question, str):
                raise BadQuestionError(f"{where} must be a str, got {type(question).__name__}: pass the customer's text")
            if not question.strip():
                raise BadQuestionError(f"{where} is empty (or only whitespace): there is nothing to answer")
            texts.append(question)
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=False)["input_ids"]]
        for i, length in enumerate(lengths):
            too_long = length > self.max_length
            if too_long and not truncate:
                where = "the question" if len(texts) == 1 else f"question {i}"
                raise BadQuestionError(
                    f"{where} is {length} tokens long but the model reads at most {self.max_length}: shorten it, "
                    "or call reply(..., truncate=True) to answer from its beginning (the Reply then has truncated=True)"
                )
            truncated.append(too_long)
        return texts, truncated

    @torch.no_grad()
    def probabilities(self, questions: Sequence[str], *, truncate: bool = False) -> np.ndarray:
        """Calibrated class probabilities ``(n, num_intents)`` of ``questions`` (checked as in :meth:`reply`)."""
        truncate = require_bool("truncate", truncate)
        if isinstance(questions, str):
            raise BadQuestionError("questions must be a list of str; for one question use reply(question)")
        texts, _ = self._check_questions(list(questions), truncate)
        return self._probabilities(texts)

    def _probabilities(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        self.model.eval()
        with torch.no_grad():
            output = self.model(**inputs)
        logits = getattr(output, "logits", output)
        return apply_temperature(logits.float().cpu(), self.temperature)

    def reply_batch(self, questions: Sequence[str], *, truncate: bool = False) -> list[Reply]:
        """:meth:`reply` for several questions at once (one forward pass: the throughput path)."""
        truncate = require_bool("truncate", truncate)
        if isinstance(questions, str) or not hasattr(questions, "__len__"):
            raise BadQuestionError("questions must be a list of str; for one question use reply(question)")
        if len(questions) == 0:
            raise BadQuestionError("questions is empty: nothing to answer")
        texts, truncated = self._check_questions(list(questions), truncate)
        probs = self._probabilities(texts)
        best = probs.argmax(axis=1)
        hits = None
        if self.article_index is not None:
            hits = self.article_index.search(texts, k=1).indices[:, 0]
        replies = []
        for i, text in enumerate(texts):
            intent, confidence = self.intents[best[i]], float(probs[i, best[i]])
            handed_off = confidence < self.threshold
            article = self.articles[int(hits[i])] if hits is not None else None
            if self.intent_articles is not None and not handed_off:
                article = self.articles[self.intent_articles[intent]]
            if handed_off:
                body = HANDOFF_MESSAGE
                if article is not None:
                    body += f" Meanwhile, the help article \u201c{article['title']}\u201d ({article['id']}) may answer it."
            else:
                body = self.replies[intent]
                if article is not None:
                    body += f"\n\nMore in our help article \u201c{article['title']}\u201d ({article['id']})."
            if truncated[i]:
                body += f"\n\n(Your message was long, so I read only its first {self.max_length} tokens.)"
            replies.append(Reply(text, intent, confidence, body, article["id"] if article else None, handed_off,
                                 truncated[i]))
        return replies

    def reply(self, question: str, *, truncate: bool = False) -> Reply:
        """Answer one customer question: intent, calibrated confidence, reply text, cited article, handoff.

        A question that is not a ``str``, is empty or whitespace, or is longer than ``max_length``
        tokens raises :class:`BadQuestionError` (a ``ValueError``). With ``truncate=True`` a long
        question is answered from its first ``max_length`` tokens instead, and the reply says so
        (``Reply.truncated`` is True and the text ends with a note).
        """
        if isinstance(question, (list, tuple)):
            raise BadQuestionError("reply takes one question (a str); use reply_batch for a list")
        return self.reply_batch([question], truncate=truncate)[0]
