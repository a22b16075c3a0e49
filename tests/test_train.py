"""Tests of llmbook.train, the book's training loop (fine-tuning chapter)."""

import pytest
import torch
from torch import nn

from llmbook.train import (
    EarlyStopping,
    evaluate,
    fit,
    linear_warmup_schedule,
    load_checkpoint,
    macro_f1,
    make_optimizer,
    param_groups,
    save_checkpoint,
    train_epoch,
)


class TinyClassifier(nn.Module):
    """Embedding bag + LayerNorm + linear head: the shape of a sentence classifier, in 1 ms."""

    def __init__(self, vocab: int = 20, dim: int = 16, labels: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, labels)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1)
        return self.head(self.drop(self.norm(pooled)))


def make_batches(n_batches: int, batch_size: int, seed: int = 0, labels: int = 3):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        ids = torch.randint(0, 20, (batch_size, 6), generator=g)
        mask = torch.ones_like(ids)
        mask[:, 4:] = torch.randint(0, 2, (batch_size, 2), generator=g)
        y = ids[:, 0] % labels  # learnable from the first token
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": y})
    return batches


def test_tiny_model_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = TinyClassifier()
    batch = make_batches(1, 16)
    opt = make_optimizer(model, lr=3e-2, weight_decay=0.0)
    first = train_epoch(model, batch, opt, device="cpu")["loss"]
    for _ in range(150):
        last = train_epoch(model, batch, opt, device="cpu")["loss"]
    assert last < 0.05 * first
    result = evaluate(model, batch, device="cpu")
    assert result["accuracy"] == 1.0 and result["macro_f1"] == 1.0


def test_accumulation_equals_one_larger_batch():
    big = make_batches(1, 24)[0]
    # micro-batches of unequal size (10 + 10 + 4): the weighting must still be exact
    micro = [{k: v[i:i + 10] for k, v in big.items()} for i in (0, 10, 20)]
    torch.manual_seed(0)
    a = TinyClassifier()
    b = TinyClassifier()
    b.load_state_dict(a.state_dict())
    opt_a = make_optimizer(a, lr=1e-2)
    opt_b = make_optimizer(b, lr=1e-2)
    ra = train_epoch(a, [big], opt_a, device="cpu", max_grad_norm=0.5)
    rb = train_epoch(b, micro, opt_b, device="cpu", accumulation_steps=3, max_grad_norm=0.5)
    assert ra["steps"] == rb["steps"] == 1 and ra["examples"] == rb["examples"] == 24
    assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_accumulation_counts_optimizer_steps():
    model = TinyClassifier()
    opt = make_optimizer(model)
    result = train_epoch(model, make_batches(7, 4), opt, device="cpu", accumulation_steps=3)
    assert result["steps"] == 3 and result["examples"] == 28


def test_param_groups_exclude_bias_and_layernorm_from_decay():
    model = TinyClassifier()
    decay, no_decay = param_groups(model, 0.1)
    decayed = {id(p) for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert id(model.head.weight) in decayed and id(model.embed.weight) in decayed
    for p in (model.head.bias, model.norm.weight, model.norm.bias):
        assert id(p) not in decayed
    model.embed.weight.requires_grad_(False)
    assert all(p is not model.embed.weight for g in param_groups(model) for p in g["params"])
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(model, -1.0)


def test_schedule_matches_transformers():
    from transformers import get_linear_schedule_with_warmup

    lrs = []
    for make in (lambda o: linear_warmup_schedule(o, 3, 10), lambda o: get_linear_schedule_with_warmup(o, 3, 10)):
        opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = make(opt)
        seq = []
        for _ in range(10):
            seq.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        lrs.append(seq)
    assert lrs[0] == pytest.approx(lrs[1])
    assert max(lrs[0]) == pytest.approx(1.0) and lrs[0][0] == 0.0
    with pytest.raises(ValueError, match="warmup_steps"):
        linear_warmup_schedule(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), 11, 10)


def test_early_stopping_logic():
    stopper = EarlyStopping(patience=2, mode="max")
    assert stopper.update(0.5, 1) and stopper.update(0.6, 2)
    assert not stopper.update(0.55, 3) and not stopper.should_stop
    assert not stopper.update(0.6, 4) and stopper.should_stop
    assert (stopper.best, stopper.best_step) == (0.6, 2)
    low = EarlyStopping(patience=1, mode="min")
    assert low.update(2.0) and low.update(1.0) and not low.update(1.5) and low.should_stop
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="up")
    with pytest.raises(ValueError, match="number"):
        stopper.update(float("nan"))


def test_fit_stops_early_and_restores_best_checkpoint(tmp_path):
    """A learning rate that ruins the model after a good start: the best state must come back."""
    torch.manual_seed(0)
    model = TinyClassifier()
    train, val = make_batches(4, 16, seed=1), make_batches(2, 32, seed=2)

    class Writer:
        def __init__(self):
            self.tags = set()

        def add_scalar(self, tag, value, step):
            self.tags.add(tag)

        def flush(self):
            pass

    writer = Writer()
    ckpt = tmp_path / "best.pt"
    result = fit(model, train, val, epochs=40, lr=0.5, warmup_ratio=0.0, eval_every=2, patience=3,
                 checkpoint_path=ckpt, device="cpu", progress=False, writer=writer, log_every=2)
    assert ckpt.is_file() and result.stopped_early and result.steps < 160
    restored = evaluate(model, val, device="cpu")["macro_f1"]
    assert restored == pytest.approx(result.best_metric)
    evals = [row for row in result.history if "val_macro_f1" in row]
    assert max(r["val_macro_f1"] for r in evals) == pytest.approx(result.best_metric)
    assert evals[-1]["step"] > result.best_step  # it did train past the best, then came back
    assert {"train/loss", "train/lr", "val/macro_f1"} <= writer.tags
    # the checkpoint itself reloads into a fresh model with the same predictions
    fresh = TinyClassifier()
    extra = load_checkpoint(fresh, ckpt)
    assert extra["step"] == result.best_step
    torch.testing.assert_close(evaluate(fresh, val, device="cpu")["probs"],
                               evaluate(model, val, device="cpu")["probs"])


def test_fit_in_memory_best_state_and_history():
    torch.manual_seed(0)
    model = TinyClassifier(dropout=0.1)
    train, val = make_batches(6, 8, seed=3), make_batches(1, 32, seed=4)
    result = fit(model, train, val, epochs=3, lr=5e-2, eval_every=3, device="cpu", progress=False, log_every=3)
    assert result.steps == 18 and not result.stopped_early and result.checkpoint is None
    assert evaluate(model, val, device="cpu")["macro_f1"] == pytest.approx(result.best_metric)
    train_rows = [r for r in result.history if "train_loss" in r]
    assert len(train_rows) == 6 and train_rows[-1]["lr"] == pytest.approx(0.0)


def test_checkpoint_roundtrip(tmp_path):
    a, b = TinyClassifier(), TinyClassifier()
    save_checkpoint(a, tmp_path / "sub" / "m.pt", step=7)
    assert load_checkpoint(b, tmp_path / "sub" / "m.pt") == {"step": 7}
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(b, tmp_path / "missing.pt")


def test_macro_f1_matches_sklearn():
    from sklearn.metrics import f1_score

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (200,), generator=g).numpy()
    p = torch.randint(0, 4, (200,), generator=g).numpy()
    p[p == 3] = 2  # a class never predicted
    assert macro_f1(y, p, 4) == pytest.approx(f1_score(y, p, average="macro"))


def test_clear_errors():
    model = TinyClassifier()
    opt = make_optimizer(model)
    batch = make_batches(1, 4)[0]
    no_labels = {k: v for k, v in batch.items() if k != "labels"}
    with pytest.raises(ValueError, match="labels"):
        train_epoch(model, [no_labels], opt, device="cpu")

    class TokenLevel(nn.Module):
        def __init__(self):
            super().__init__()
            self.e = nn.Embedding(20, 3)

        def forward(self, input_ids, attention_mask):
            return self.e(input_ids)  # (batch, seq, 3): the source's shape mistake

    with pytest.raises(ValueError, match="sentence-level"):
        evaluate(TokenLevel(), [batch], device="cpu")
    with pytest.raises(TypeError, match="nn.Module"):
        make_optimizer("model")
    with pytest.raises(ValueError, match="lr"):
        make_optimizer(model, lr=0)
    with pytest.raises(ValueError, match="accumulation_steps"):
        train_epoch(model, [batch], opt, accumulation_steps=0)
    with pytest.raises(ValueError, match="val_loader"):
        fit(model, [batch], None, patience=2, progress=False, device="cpu")
    with pytest.raises(ValueError, match="no batches"):
        evaluate(model, [], device="cpu")
    with pytest.raises(FloatingPointError, match="learning rate"):
        huge = {**batch, "input_ids": batch["input_ids"]}
        model.head.weight.data.fill_(float("inf"))
        train_epoch(model, [huge], opt, device="cpu")
