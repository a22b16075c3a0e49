"""Tests of llmbook.robust (robustness chapter) and of the ``adversary`` hook it uses in llmbook.train."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from llmbook import robust
from llmbook.train import fit, train_epoch

# --- a toy "model": probability of class 1 rises with the number of positive words -------------

POSITIVE = {"good", "great", "gain", "rally", "strong"}


def toy_proba(texts):
    rows = []
    for text in texts:
        words = [w.strip(".,!").lower() for w in text.split()]
        score = sum(w in POSITIVE for w in words) - sum(w in {"bad", "weak", "loss"} for w in words)
        p1 = 1 / (1 + np.exp(-2 * score + 0.5))
        rows.append([1 - p1, p1])
    return np.array(rows)


SYNONYMS = {"good": ["fine", "bad"], "great": ["huge", "weak"], "strong": ["solid", "weak"], "rally": ["move"]}


def toy_candidates(word):
    return SYNONYMS.get(word.lower(), [])


def test_attack_never_changes_more_words_than_allowed():
    text = "good great strong rally gain today for the shares"
    for max_changes in (1, 2, 3):
        result = robust.greedy_word_attack(text, 1, toy_proba, toy_candidates, max_changes=max_changes,
                                           max_change_fraction=1.0)
        changed = sum(a != b for a, b in zip(text.split(), result.adversarial.split()))
        assert changed == result.words_changed <= max_changes
    result = robust.greedy_word_attack(text, 1, toy_proba, toy_candidates, max_changes=10, max_change_fraction=0.2)
    assert result.words_changed <= 1  # 20% of 9 words rounds down to 1


def test_attack_succeeds_and_keeps_case_and_punctuation():
    result = robust.greedy_word_attack("Good, results", 1, toy_proba, toy_candidates, max_change_fraction=1.0)
    assert result.status == "success"
    assert result.adversarial == "Fine, results"  # the first candidate that flips (equal similarity)
    assert result.changes == [(0, "Good,", "Fine,")]
    assert result.adversarial_prediction == 0


def test_attack_returns_the_original_when_no_substitution_flips_the_label():
    text = "gain gain rally"  # "rally" -> "move" lowers the probability but cannot flip it
    result = robust.greedy_word_attack(text, 1, toy_proba, toy_candidates, max_change_fraction=1.0)
    assert result.status == "failure"
    assert result.adversarial == text
    assert result.adversarial_prediction == result.original_prediction == 1


def test_attack_skips_texts_the_model_already_gets_wrong():
    result = robust.greedy_word_attack("bad weak loss", 1, toy_proba, toy_candidates)
    assert result.status == "skipped" and result.adversarial == "bad weak loss"


def test_similarity_constraint_blocks_substitutions():
    def strict(original, texts):
        return np.zeros(len(texts))

    result = robust.greedy_word_attack("good results", 1, toy_proba, toy_candidates, similarity=strict,
                                       min_similarity=0.5, max_change_fraction=1.0)
    assert result.status == "failure" and result.adversarial == "good results"


def test_attack_is_deterministic_given_a_seed():
    def flat_candidates(word):
        return ["weak"]

    text = "alpha beta gamma delta epsilon zeta eta theta"  # every word equally (un)important
    a = [robust.greedy_word_attack(text, 1, lambda t: np.tile([0.3, 0.7], (len(t), 1)), flat_candidates,
                                   seed=s) for s in (0, 0, 1)]
    assert a[0] == a[1]


def test_attack_rejects_bad_arguments():
    with pytest.raises(ValueError, match="max_changes"):
        robust.greedy_word_attack("good", 1, toy_proba, toy_candidates, max_changes=0)
    with pytest.raises(ValueError, match="empty"):
        robust.greedy_word_attack("   ", 1, toy_proba, toy_candidates)
    with pytest.raises(TypeError, match="candidates"):
        robust.greedy_word_attack("good", 1, toy_proba, "not callable")
    with pytest.raises(ValueError, match="out of range"):
        robust.greedy_word_attack("good", 5, toy_proba, toy_candidates)
    with pytest.raises(ValueError, match="predict_proba returned shape"):
        robust.greedy_word_attack("good", 1, lambda t: np.zeros(3), toy_candidates)


def test_word_importance_is_the_drop_without_each_word():
    scores = robust.word_importance(["good", "day"], 1, toy_proba)
    assert scores[0] > 0 and scores[1] == pytest.approx(0.0)


def test_attack_summary():
    ok = robust.AttackResult("a", "b", 1, 1, 0, "success", [(0, "a", "b")], 0.9)
    fail = robust.AttackResult("a", "a", 1, 1, 1, "failure")
    skip = robust.AttackResult("a", "a", 1, 0, 0, "skipped")
    s = robust.attack_summary([ok, fail, skip, fail])
    assert s["success_rate"] == pytest.approx(1 / 3)
    assert s["accuracy_under_attack"] == pytest.approx(2 / 4)
    assert s["words_changed"] == 1 and s["similarity"] == pytest.approx(0.9)
    with pytest.raises(ValueError):
        robust.attack_summary([])


# --- neighbours -------------------------------------------------------------------------------


class ToyTokenizer:
    def __init__(self, words):
        self.vocab = {w: i for i, w in enumerate(words)}

    def get_vocab(self):
        return dict(self.vocab)


def test_neighbour_table_finds_nearest_whole_words():
    words = ["[PAD]", "rise", "climb", "fall", "##ing", "x"]
    emb = torch.tensor([[0, 0.0], [1, 0.1], [1, 0.2], [-1, 0], [1, 0.15], [1, 0.1]])
    table = robust.NeighbourTable(emb, ToyTokenizer(words), k=3, min_cosine=0.5)
    assert table("Rise") == ["climb"]  # "##ing" and "x" are not whole words of >= 3 letters
    assert table("unknown") == []
    with pytest.raises(TypeError):
        robust.NeighbourTable(torch.zeros(3), ToyTokenizer(words))


# --- FGM ----------------------------------------------------------------------------------------


class TinyClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.embeddings = nn.Embedding(20, 8)
        self.head = nn.Linear(8, 3)

    def get_input_embeddings(self):
        return self.embeddings

    def forward(self, input_ids, attention_mask=None):
        return self.head(self.embeddings(input_ids).mean(dim=1))


def _batches(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 20, (6, 5), generator=g),
             "labels": torch.randint(0, 3, (6,), generator=g)} for _ in range(n)]


def test_fgm_restores_the_embedding_weights_exactly():
    torch.manual_seed(0)
    model = TinyClassifier()
    batch = _batches(1)[0]
    loss = nn.functional.cross_entropy(model(batch["input_ids"]), batch["labels"])
    loss.backward()
    before = model.embeddings.weight.detach().clone()
    fgm = robust.FGM(model, epsilon=0.5)
    assert fgm.attack()
    moved = model.embeddings.weight.detach() - before
    assert torch.linalg.vector_norm(moved).item() == pytest.approx(0.5, rel=1e-5)
    fgm.restore()
    assert torch.equal(model.embeddings.weight, before)


def test_fgm_adds_the_adversarial_gradient_and_restores_after_the_step():
    torch.manual_seed(0)
    model = TinyClassifier()
    batch = _batches(1)[0]

    def compute_loss():
        return nn.functional.cross_entropy(model(batch["input_ids"]), batch["labels"])

    compute_loss().backward()
    clean_grad = model.head.weight.grad.clone()
    before = model.embeddings.weight.detach().clone()
    robust.FGM(model, epsilon=1.0)(compute_loss, lambda loss: loss.backward())
    assert torch.equal(model.embeddings.weight, before)
    assert not torch.allclose(model.head.weight.grad, clean_grad)  # the perturbed loss's gradient was added


def test_fgm_without_a_gradient_changes_nothing():
    model = TinyClassifier()
    before = model.embeddings.weight.detach().clone()
    calls = []
    robust.FGM(model)(lambda: calls.append(1), lambda loss: None)
    assert calls == [] and torch.equal(model.embeddings.weight, before)


def test_fgm_rejects_bad_arguments():
    with pytest.raises(ValueError, match="epsilon"):
        robust.FGM(TinyClassifier(), epsilon=0)
    with pytest.raises(TypeError, match="word embeddings"):
        robust.FGM(nn.Linear(2, 2))


def test_train_epoch_calls_the_adversary_once_per_micro_batch_and_fit_accepts_it():
    torch.manual_seed(0)
    model = TinyClassifier()
    calls = []

    def adversary(compute_loss, backward):
        loss = compute_loss()
        assert loss.ndim == 0 and torch.isfinite(loss)
        calls.append(float(loss.detach()))

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_epoch(model, _batches(4), optimizer, adversary=adversary, accumulation_steps=2)
    assert len(calls) == 4
    result = fit(model, _batches(4), epochs=1, lr=1e-2, progress=False, device="cpu",
                 adversary=robust.FGM(model, epsilon=0.1))
    assert result.steps == 4
    with pytest.raises(TypeError, match="adversary"):
        fit(model, _batches(2), epochs=1, progress=False, adversary="fgm")


def test_fit_with_fgm_differs_from_plain_training_and_plain_training_is_unchanged():
    def run(adversary_epsilon):
        torch.manual_seed(0)
        model = TinyClassifier()
        adversary = robust.FGM(model, epsilon=adversary_epsilon) if adversary_epsilon else None
        fit(model, _batches(4), epochs=2, lr=1e-2, progress=False, device="cpu", adversary=adversary)
        return model.head.weight.detach().clone()

    plain, plain_again, adversarial = run(None), run(None), run(1.0)
    assert torch.equal(plain, plain_again)
    assert not torch.allclose(plain, adversarial)


# --- augmenters ---------------------------------------------------------------------------------


def test_random_deletion_and_swap():
    text = "one two three four five six"
    assert robust.random_deletion(text, 0.0) == text
    assert robust.random_deletion(text, 1.0, seed=3) in text.split()  # never empty
    swapped = robust.random_swap(text, 2, seed=1)
    assert sorted(swapped.split()) == sorted(text.split())
    assert robust.eda(text, seed=5) == robust.eda(text, seed=5)
    with pytest.raises(ValueError, match="p must be"):
        robust.random_deletion(text, 1.5)
    with pytest.raises(ValueError, match="empty"):
        robust.random_swap("  ")


def test_neighbour_replace_keeps_stopwords_case_and_punctuation():
    out = robust.neighbour_replace("The Good, strong day", lambda w: ["fine"], p=1.0)
    assert out == "The Fine, fine fine"
    assert robust.neighbour_replace("good day", lambda w: ["fine"], p=0.0) == "good day"


def test_back_translate_composes_the_two_translators():
    forward = lambda texts: [t.upper() for t in texts]  # noqa: E731
    backward = lambda texts: [t.lower() + "!" if "EMPTY" not in t else " " for t in texts]  # noqa: E731
    assert robust.back_translate(["Shares rise", "empty"], forward, backward) == ["shares rise!", "empty"]
    with pytest.raises(ValueError, match="returned 0 texts"):
        robust.back_translate(["a"], lambda t: [], backward)
    with pytest.raises(TypeError, match="list of strings"):
        robust.back_translate("a", forward, backward)


# --- the long tail -------------------------------------------------------------------------------


def test_focal_loss_with_gamma_zero_equals_cross_entropy():
    torch.manual_seed(0)
    logits, targets = torch.randn(10, 4), torch.randint(0, 4, (10,))
    weight = torch.tensor([1.0, 2.0, 0.5, 3.0])
    torch.testing.assert_close(robust.focal_loss(logits, targets, gamma=0), nn.functional.cross_entropy(logits, targets))
    torch.testing.assert_close(robust.focal_loss(logits, targets, gamma=0, weight=weight),
                               nn.functional.cross_entropy(logits, targets, weight=weight))
    assert robust.focal_loss(logits, targets, gamma=2) < robust.focal_loss(logits, targets, gamma=0)
    with pytest.raises(ValueError, match="gamma"):
        robust.focal_loss(logits, targets, gamma=-1)
    with pytest.raises(ValueError, match="targets"):
        robust.focal_loss(logits, targets.float())


def test_class_weights_are_inverse_frequency_with_mean_one():
    w = robust.class_weights([0, 0, 0, 1], 2)
    assert w[1] / w[0] == pytest.approx(3.0)
    assert float((w * torch.tensor([3.0, 1.0])).sum() / 4) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="labels must be in"):
        robust.class_weights([0, 2], 2)


def test_offsets_raise_validation_macro_f1_for_a_rare_class():
    rng = np.random.default_rng(0)
    y = np.array([0] * 90 + [1] * 10)
    scores = np.stack([np.zeros(100), rng.normal(-2.0, 0.3, 100) + 1.5 * (y == 1)], axis=1)
    offsets = robust.tune_class_offsets(scores, y)
    from llmbook.metrics import precision_recall_f1

    before = precision_recall_f1(y, scores.argmax(1), num_classes=2)[2]
    after = precision_recall_f1(y, robust.predict_with_offsets(scores, offsets), num_classes=2)[2]
    assert after > before
    with pytest.raises(ValueError, match="offsets"):
        robust.predict_with_offsets(scores, [0.0])


class ToyMaskedLM(nn.Module):
    """Predicts the token ``favourite`` at every position."""

    def __init__(self, vocab_size, favourite):
        super().__init__()
        self.vocab_size, self.favourite = vocab_size, favourite
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        logits[..., self.favourite] = 10.0
        return type("Output", (), {"logits": logits})()


def test_mlm_replace_puts_the_model_prediction_in_place_of_a_word():
    from transformers import AutoTokenizer

    from llmbook.pretrained import bundled_checkpoint_path

    tokenizer = AutoTokenizer.from_pretrained(bundled_checkpoint_path())
    favourite = tokenizer.convert_tokens_to_ids("banana")
    mlm = ToyMaskedLM(len(tokenizer), favourite)
    texts = ["shares rise sharply today", "the market", "profits fall"]
    out = robust.mlm_replace(texts, tokenizer, mlm, p=0.0, top_k=1, seed=0)
    assert out[0].count("banana") == 1 and len(out[0].split()) == 4  # at least one word is replaced
    assert out[1] == "the banana"  # "the" is a stopword and is never masked
    assert robust.mlm_replace(texts, tokenizer, mlm, p=1.0, top_k=1) == ["banana banana banana banana",
                                                                          "the banana", "banana banana"]
    assert robust.mlm_replace(texts, tokenizer, mlm, p=0.5, seed=3) == robust.mlm_replace(texts, tokenizer, mlm,
                                                                                            p=0.5, seed=3)
    # a word split into pieces ("corona" + "##virus") is never masked: no "bananavirus"
    assert robust.mlm_replace(["coronavirus"], tokenizer, mlm, p=1.0, top_k=1) == ["coronavirus"]
    with pytest.raises(ValueError, match="empty"):
        robust.mlm_replace([], tokenizer, mlm)
