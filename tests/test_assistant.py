"""Tests of llmbook.assistant: temperature scaling, selective prediction and the Assistant's replies."""

import math

import numpy as np
import pytest
import torch

from llmbook.assistant import (
    HANDOFF_MESSAGE,
    Assistant,
    BadQuestionError,
    Reply,
    apply_temperature,
    fit_temperature,
    risk_coverage_curve,
    temperature_nll,
    threshold_for_accuracy,
)
from llmbook.retrieval import EmbeddingIndex


def _overconfident(n=400, classes=5, seed=0):
    """Logits whose arg-max is right ~70% of the time but whose softmax claims far more."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes))
    right = rng.random(n) < 0.7
    guess = np.where(right, labels, (labels + 1) % classes)
    logits[np.arange(n), guess] += 4.0
    return logits * 3.0, labels


def test_fit_temperature_finds_the_grid_optimum():
    logits, labels = _overconfident()
    fitted = fit_temperature(logits, labels)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))
    nll = np.array([temperature_nll(logits, labels, t) for t in grid])
    best = grid[nll.argmin()]
    assert fitted > 1.5  # over-confident logits need softening
    assert abs(np.log(fitted) - np.log(best)) < 2e-3
    assert temperature_nll(logits, labels, fitted) <= nll.min() + 1e-9


def test_fit_temperature_sharpens_under_confident_logits_and_respects_bounds():
    logits, labels = _overconfident(seed=1)
    assert fit_temperature(logits / 30, labels) < 0.5
    assert fit_temperature(logits / 30, labels, min_temperature=0.8) == pytest.approx(0.8)
    perfect = np.eye(3)[[0, 1, 2, 0]] * 5
    assert fit_temperature(perfect, np.array([0, 1, 2, 0])) == pytest.approx(0.05)  # always right: as sharp as allowed


def test_temperature_nll_matches_torch_cross_entropy():
    logits, labels = _overconfident(n=50)
    expected = torch.nn.functional.cross_entropy(torch.tensor(logits) / 2.5, torch.tensor(labels)).item()
    assert temperature_nll(logits, labels, 2.5) == pytest.approx(expected, rel=1e-9)


def test_apply_temperature_keeps_the_argmax_and_sums_to_one():
    logits, _ = _overconfident(n=30)
    for t in (0.3, 1.0, 4.0):
        probs = apply_temperature(torch.tensor(logits), t)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-12)
        assert (probs.argmax(1) == logits.argmax(1)).all()
    assert apply_temperature(logits, 4.0).max(1).mean() < apply_temperature(logits, 1.0).max(1).mean()
    np.testing.assert_allclose(apply_temperature(np.array([[1000.0, 0.0]]), 1.0), [[1.0, 0.0]])  # no overflow


def test_temperature_errors():
    logits, labels = _overconfident(n=10)
    with pytest.raises(ValueError, match="temperature must be positive"):
        apply_temperature(logits, 0.0)
    with pytest.raises(TypeError, match="temperature must be a positive number"):
        apply_temperature(logits, "2")
    with pytest.raises(ValueError, match=r"\(n, num_classes\)"):
        fit_temperature(np.ones(5), labels[:5])
    with pytest.raises(ValueError, match="NaN or infinite"):
        fit_temperature(np.full((2, 3), np.nan), [0, 1])
    with pytest.raises(ValueError, match="one entry per row"):
        fit_temperature(logits, labels[:3])
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.4"):
        fit_temperature(logits, np.full(10, 5))
    with pytest.raises(TypeError, match="integer class ids"):
        fit_temperature(logits, labels.astype(float))
    with pytest.raises(ValueError, match="must be smaller than max_temperature"):
        fit_temperature(logits, labels, min_temperature=3, max_temperature=2)


def test_risk_coverage_curve_by_brute_force():
    rng = np.random.default_rng(0)
    conf = np.round(rng.random(200), 2)  # rounding makes ties
    correct = rng.random(200) < conf
    curve = risk_coverage_curve(conf, correct)
    assert curve["threshold"].tolist() == sorted(set(conf.tolist()), reverse=True)
    for t, cov, acc, risk in zip(curve["threshold"], curve["coverage"], curve["accuracy"], curve["risk"]):
        answered = conf >= t
        assert cov == pytest.approx(answered.mean())
        assert acc == pytest.approx(correct[answered].mean())
        assert risk == pytest.approx(1 - acc)
    assert curve["coverage"][-1] == 1.0


def test_threshold_for_accuracy_answers_as_much_as_the_target_allows():
    rng = np.random.default_rng(1)
    conf = rng.random(500)
    correct = rng.random(500) < conf
    point = threshold_for_accuracy(conf, correct, target=0.9)
    feasible = [(np.mean(conf >= t), t) for t in np.unique(conf) if correct[conf >= t].mean() >= 0.9]
    best_coverage, best_threshold = max(feasible)
    assert point.coverage == pytest.approx(best_coverage) and point.threshold == best_threshold
    assert point.accuracy >= 0.9
    nothing = threshold_for_accuracy([0.9, 0.8], [False, True], target=0.97)
    assert nothing.threshold == math.inf and nothing.coverage == 0.0
    assert threshold_for_accuracy([0.9, 0.8], [True, True]).coverage == 1.0
    with pytest.raises(ValueError, match="target must be an accuracy"):
        threshold_for_accuracy(conf, correct, target=97)
    with pytest.raises(ValueError, match="booleans"):
        threshold_for_accuracy([0.5, 0.6], [2, 0])
    with pytest.raises(ValueError, match="same length"):
        risk_coverage_curve([0.5, 0.6], [True])


# ---------------------------------------------------------------------------------------- Assistant


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from llmbook.pretrained import bundled_checkpoint_path

    return AutoTokenizer.from_pretrained(str(bundled_checkpoint_path()))


INTENTS = ["card_arrival", "lost_or_stolen_card", "exchange_rate"]
TEMPLATES = {
    "card_arrival": "Cards arrive within {days} working days.",
    "lost_or_stolen_card": "Freeze your card now and call {phone}.",
    "exchange_rate": "We use the rate shown in the app.",
}
DETAILS = {"days": "5", "phone": "0800 000"}
ARTICLES = [{"id": "card-delivery", "title": "When will my card arrive?"},
            {"id": "lost-card", "title": "Lost or stolen cards"}]


class KeywordClassifier(torch.nn.Module):
    """A stand-in for a fine-tuned model: logits from the presence of token ids, deterministic."""

    num_labels = 3

    def __init__(self, tokenizer, positions=32):
        super().__init__()
        self.keys = [tokenizer.convert_tokens_to_ids(w) for w in ("arrive", "stolen", "rate")]
        self.scale = torch.nn.Parameter(torch.tensor(4.0))
        self.config = type("Config", (), {"max_position_embeddings": positions})()

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        present = torch.stack([((input_ids == k) & attention_mask.bool()).any(1) for k in self.keys], 1)
        return type("Out", (), {"logits": self.scale * present.float()})()


def _embed(texts):
    return np.array([[("arriv" in t) + 0.01, ("stol" in t or "lost" in t) + 0.01] for t in texts], dtype=float)


@pytest.fixture
def assistant(tokenizer):
    index = EmbeddingIndex.build([a["title"] for a in ARTICLES], _embed)
    return Assistant(KeywordClassifier(tokenizer), tokenizer, INTENTS, TEMPLATES, details=DETAILS,
                     temperature=1.0, threshold=0.5, articles=ARTICLES, article_index=index)


def test_reply_answers_from_the_template_and_cites_the_article(assistant):
    reply = assistant.reply("When will my card arrive?")
    assert isinstance(reply, Reply)
    assert reply.intent == "card_arrival" and not reply.handed_off and not reply.truncated
    assert reply.confidence == pytest.approx(np.exp(4) / (np.exp(4) + 2))
    assert reply.text.startswith("Cards arrive within 5 working days.")
    assert "\u201cWhen will my card arrive?\u201d (card-delivery)" in reply.text
    assert reply.source == "card-delivery"
    stolen = assistant.reply("my card was stolen")
    assert stolen.intent == "lost_or_stolen_card" and "0800 000" in stolen.text and stolen.source == "lost-card"


def test_low_confidence_hands_off(assistant):
    reply = assistant.reply("hello there")  # no keyword: uniform probabilities, 1/3 < 0.5
    assert reply.handed_off and reply.confidence == pytest.approx(1 / 3)
    assert reply.text.startswith(HANDOFF_MESSAGE)
    assert reply.intent in INTENTS  # the guess is kept for the person who takes over


def test_temperature_changes_confidence_not_intent(tokenizer, assistant):
    hot = Assistant(KeywordClassifier(tokenizer), tokenizer, INTENTS, TEMPLATES, details=DETAILS, temperature=4.0)
    a, b = assistant.reply("what rate do you use"), hot.reply("what rate do you use")
    assert a.intent == b.intent == "exchange_rate" and b.confidence < a.confidence
    assert b.source is None and b.text == "We use the rate shown in the app."


def test_batch_equals_one_by_one(assistant):
    questions = ["When will my card arrive?", "hello", "stolen wallet", "which rate"]
    batch = assistant.reply_batch(questions)
    for question, reply in zip(questions, batch):
        single = assistant.reply(question)
        assert single.intent == reply.intent and single.text == reply.text
        assert single.confidence == pytest.approx(reply.confidence, rel=1e-6)


@pytest.mark.parametrize("bad, message", [
    ("", "question is empty"),
    ("   \n\t", "question is empty"),
    (None, "question must be a str, got NoneType"),
    (42, "question must be a str, got int"),
    (b"bytes", "question must be a str, got bytes"),
])
def test_bad_questions_are_one_clear_value_error(assistant, bad, message):
    with pytest.raises(ValueError, match=message):
        assistant.reply(bad)


def test_non_strings_are_also_type_errors(assistant):
    with pytest.raises(TypeError):
        assistant.reply(3.5)
    assert issubclass(BadQuestionError, ValueError) and issubclass(BadQuestionError, TypeError)
    with pytest.raises(ValueError, match="reply_batch for a list"):
        assistant.reply(["a", "b"])
    with pytest.raises(ValueError, match="question 1 is empty"):
        assistant.reply_batch(["fine", ""])
    with pytest.raises(ValueError, match="questions is empty"):
        assistant.reply_batch([])


def test_over_long_question_is_refused_unless_truncation_is_asked(assistant):
    long = "my card has not arrived yet and " * 20  # far more than the 32 positions of the model
    with pytest.raises(ValueError, match=r"tokens long but the model reads at most 32: shorten it, or call reply\(\.\.\., truncate=True\)"):
        assistant.reply(long)
    reply = assistant.reply(long, truncate=True)
    assert reply.truncated and reply.intent == "card_arrival"
    assert reply.text.endswith("(Your message was long, so I read only its first 32 tokens.)")
    assert not assistant.reply("my card has not arrived", truncate=True).truncated
    with pytest.raises(TypeError, match="truncate must be True or False"):
        assistant.reply("hi", truncate="yes")


def test_assistant_checks_its_parts(tokenizer):
    model = KeywordClassifier(tokenizer)
    with pytest.raises(ValueError, match="1 intents have no reply template"):
        Assistant(model, tokenizer, INTENTS, {k: v for k, v in TEMPLATES.items() if k != "exchange_rate"}, details=DETAILS)
    with pytest.raises(ValueError, match=r"placeholder\(s\) \['days'\] but details gives no value"):
        Assistant(model, tokenizer, INTENTS, TEMPLATES, details={"phone": "1"})
    with pytest.raises(ValueError, match="model has 3 classes but 2 intent names"):
        Assistant(model, tokenizer, INTENTS[:2], TEMPLATES, details=DETAILS)
    with pytest.raises(ValueError, match="articles and article_index together"):
        Assistant(model, tokenizer, INTENTS, TEMPLATES, details=DETAILS, articles=ARTICLES)
    index = EmbeddingIndex(np.eye(3))
    with pytest.raises(ValueError, match="article_index has 3 rows but there are 2 articles"):
        Assistant(model, tokenizer, INTENTS, TEMPLATES, details=DETAILS, articles=ARTICLES, article_index=index)
    with pytest.raises(ValueError, match="threshold must be a probability"):
        Assistant(model, tokenizer, INTENTS, TEMPLATES, details=DETAILS, threshold=1.5)
    with pytest.raises(ValueError, match="temperature must be positive"):
        Assistant(model, tokenizer, INTENTS, TEMPLATES, details=DETAILS, temperature=-1)
    with pytest.raises(ValueError, match="more than the model reads"):
        Assistant(model, tokenizer, INTENTS, TEMPLATES, details=DETAILS, max_length=100)
    assert Assistant(model, tokenizer, INTENTS, TEMPLATES, details=DETAILS, max_length=16).max_length == 16


def test_classifier_outputs_match_the_model_and_the_embedder(tokenizer):
    from transformers import BertConfig, BertModel

    from llmbook.retrieval import encoder_embed_fn
    from llmbook.textclf import MeanPoolingClassifier

    from llmbook.assistant import classifier_outputs

    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=64))
    model = MeanPoolingClassifier(encoder, num_labels=4)
    texts = ["a much longer question about my card that has not arrived yet", "hi", "exchange rate?"]
    logits, pooled = classifier_outputs(model, tokenizer, texts, batch_size=2, progress=False)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(batch["input_ids"], batch["attention_mask"]).logits
    np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pooled, encoder_embed_fn(model, tokenizer)(texts).numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError, match="MeanPoolingClassifier"):
        classifier_outputs(encoder, tokenizer, texts)
    with pytest.raises(TypeError, match="not one string"):
        classifier_outputs(model, tokenizer, "hi")


def test_answered_questions_cite_their_intents_article_and_handoffs_the_retrieved_one(tokenizer):
    index = EmbeddingIndex.build([a["title"] for a in ARTICLES], _embed)
    mapping = {"card_arrival": "card-delivery", "lost_or_stolen_card": "lost-card", "exchange_rate": "card-delivery"}
    assistant = Assistant(KeywordClassifier(tokenizer), tokenizer, INTENTS, TEMPLATES, details=DETAILS,
                          threshold=0.5, articles=ARTICLES, article_index=index, intent_articles=mapping)
    answered = assistant.reply("my card was stolen, when will the new one arrive")  # both keywords: tie
    assert not assistant.reply("which rate").handed_off
    assert assistant.reply("which rate").source == "card-delivery"  # the intent's article, not retrieval
    unsure = assistant.reply("lost wallet")  # no keyword: handed off, retrieval finds the lost-card article
    assert unsure.handed_off and unsure.source == "lost-card"
    assert answered.source == mapping[answered.intent] or answered.handed_off
    with pytest.raises(ValueError, match="not among the articles"):
        Assistant(KeywordClassifier(tokenizer), tokenizer, INTENTS, TEMPLATES, details=DETAILS, articles=ARTICLES,
                  article_index=index, intent_articles={**mapping, "exchange_rate": "nope"})
    with pytest.raises(ValueError, match="1 intents have no article"):
        Assistant(KeywordClassifier(tokenizer), tokenizer, INTENTS, TEMPLATES, details=DETAILS, articles=ARTICLES,
                  article_index=index, intent_articles={"card_arrival": "card-delivery", "exchange_rate": "lost-card"})
    with pytest.raises(ValueError, match="intent_articles needs articles"):
        Assistant(KeywordClassifier(tokenizer), tokenizer, INTENTS, TEMPLATES, details=DETAILS, intent_articles=mapping)
