"""Tests of llmbook.train, the book's training loop (fine-tuning chapter)."""

import io
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
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

    from llmbook.metrics import precision_recall_f1

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (200,), generator=g).numpy()
    p = torch.randint(0, 4, (200,), generator=g).numpy()
    p[p == 3] = 2  # a class never predicted
    assert macro_f1(y, p, 4) == pytest.approx(f1_score(y, p, average="macro"))
    # a class of the task absent from both inputs still counts (num_labels fixes the classes)
    y5, p5 = np.array([1, 2, 1, 2, 3, 3]), np.array([1, 2, 2, 2, 3, 1])
    expected = f1_score(y5, p5, average="macro", labels=range(5), zero_division=0)
    assert macro_f1(y5, p5, 5) == pytest.approx(expected)
    assert macro_f1(y5, p5, 5) == pytest.approx(precision_recall_f1(y5, p5, average="macro", num_classes=5)[2])


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


# --- reliability: checkpoints ------------------------------------------------------------------


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_save_checkpoint_failing_midway_keeps_the_previous_file(tmp_path, monkeypatch):
    torch.manual_seed(0)
    good, other = TinyClassifier(), TinyClassifier()
    path = tmp_path / "best.pt"
    save_checkpoint(good, path, step=1)
    real_save = torch.save

    def save_then_fail(obj, f, *args, **kwargs):
        if isinstance(f, io.BytesIO):  # in-memory checks are allowed to work
            return real_save(obj, f, *args, **kwargs)
        handle = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
        handle.write(b"PK\x03\x04 half a checkpoint")
        handle.flush()
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(other, path, step=2)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["best.pt"]  # no temporary file left behind
    fresh = TinyClassifier()
    assert load_checkpoint(fresh, path) == {"step": 1}
    assert _same_weights(fresh, good)


def test_save_checkpoint_unsaveable_extra_is_refused_before_writing(tmp_path):
    good = TinyClassifier()
    path = tmp_path / "best.pt"
    save_checkpoint(good, path, step=1)
    before = path.read_bytes()
    for bad in (lambda: 0, tmp_path, np.zeros(3)):  # unpicklable; and two that weights_only refuses
        with pytest.raises(TypeError, match="cannot be saved"):
            save_checkpoint(TinyClassifier(), path, step=2, extra=bad)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["best.pt"]
    with pytest.raises(IsADirectoryError, match="folder"):
        save_checkpoint(good, tmp_path)


def test_save_checkpoint_stores_numpy_scalars_as_numbers(tmp_path):
    path = save_checkpoint(TinyClassifier(), tmp_path / "m.pt", step=np.int64(3), metric=np.float32(0.5),
                           scores=[np.float64(0.25), {"f1": np.float64(0.75)}])
    extras = load_checkpoint(TinyClassifier(), path)
    assert extras == {"step": 3, "metric": 0.5, "scores": [0.25, {"f1": 0.75}]}
    assert type(extras["step"]) is int and type(extras["metric"]) is float


def test_load_checkpoint_with_numpy_extras_from_elsewhere_says_how(tmp_path):
    model = TinyClassifier()
    path = tmp_path / "theirs.pt"
    torch.save({"state_dict": model.state_dict(), "metric": np.float64(0.5)}, path)
    with pytest.raises(ValueError, match=r"theirs\.pt.*numpy.*weights_only=False"):
        load_checkpoint(TinyClassifier(), path)
    fresh = TinyClassifier()
    assert load_checkpoint(fresh, path, weights_only=False) == {"metric": 0.5}
    assert _same_weights(fresh, model)


def test_load_checkpoint_that_does_not_fit_leaves_the_model_untouched(tmp_path):
    torch.manual_seed(0)
    path = save_checkpoint(TinyClassifier(labels=4), tmp_path / "four.pt")
    model = TinyClassifier(labels=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"four\.pt.*2 of another shape.*head\.weight \(4, 16\) vs \(3, 16\)"):
        load_checkpoint(model, path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # missing and unexpected keys are listed too
    state = TinyClassifier().state_dict()
    state["extra.weight"] = state.pop("norm.weight")
    torch.save(state, tmp_path / "renamed.pt")
    with pytest.raises(ValueError, match=r"1 missing \(norm\.weight\); 1 unexpected \(extra\.weight\)"):
        load_checkpoint(model, tmp_path / "renamed.pt")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_load_checkpoint_accepts_a_plain_state_dict(tmp_path):
    source = TinyClassifier()
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    fresh = TinyClassifier()
    assert load_checkpoint(fresh, tmp_path / "plain.pt") == {}
    assert _same_weights(fresh, source)


def test_load_checkpoint_empty_corrupt_or_odd_files(tmp_path):
    model = TinyClassifier()
    good = save_checkpoint(model, tmp_path / "good.pt").read_bytes()
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "cut.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.pt").write_text("not a checkpoint at all")
    (tmp_path / "noise.pt").write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(ValueError, match=r"empty\.pt is empty"):
        load_checkpoint(model, tmp_path / "empty.pt")
    for name in ("cut.pt", "text.pt", "noise.pt"):
        with pytest.raises(ValueError, match=rf"cannot read the checkpoint .*{name}"):
            load_checkpoint(model, tmp_path / name)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="neither a save_checkpoint file nor a state_dict"):
        load_checkpoint(model, tmp_path / "list.pt")
    with pytest.raises(IsADirectoryError):
        load_checkpoint(model, tmp_path)


# --- reliability: fit when training fails -------------------------------------------------------


class FailsAfter(TinyClassifier):
    """Trains normally for ``ok_calls`` training forwards, then breaks the way real runs do.

    ``"nan"``: the weights diverge to NaN (and so does the loss); ``"interrupt"``: the weights
    move and then the reader presses Ctrl-C.
    """

    def __init__(self, ok_calls: int, how: str) -> None:
        super().__init__()
        self.ok_calls, self.how, self.calls = ok_calls, how, 0

    def forward(self, input_ids, attention_mask):
        if self.training:
            self.calls += 1
            if self.calls > self.ok_calls:
                with torch.no_grad():
                    self.head.weight.add_(torch.randn_like(self.head.weight))
                    if self.how == "nan":
                        self.head.weight.fill_(float("nan"))
                if self.how == "interrupt":
                    raise KeyboardInterrupt
        return super().forward(input_ids, attention_mask)


def test_fit_diverging_restores_the_best_weights_and_keeps_the_history():
    torch.manual_seed(0)
    model = FailsAfter(ok_calls=5, how="nan")
    train, val = make_batches(4, 16, seed=1), make_batches(2, 32, seed=2)
    with pytest.raises(FloatingPointError, match=r"fit stopped at step 6 \(epoch 2\).*learning rate") as info:
        fit(model, train, val, epochs=5, lr=1e-2, eval_every=2, device="cpu", progress=False, log_every=1)
    partial = info.value.partial_result
    assert partial.steps == 5 and partial.best_step in (2, 4)
    assert [r["step"] for r in partial.history if "val_macro_f1" in r] == [2, 4]
    assert len([r for r in partial.history if "train_loss" in r]) == 5
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert evaluate(model, val, device="cpu")["macro_f1"] == pytest.approx(partial.best_metric)
    if hasattr(info.value, "__notes__"):  # Python 3.11+: the traceback says which weights the model holds
        assert f"best weights again (step {partial.best_step}" in info.value.__notes__[0]
    # restore_best=False cannot leave NaN weights behind either
    torch.manual_seed(0)
    again = FailsAfter(ok_calls=5, how="nan")
    with pytest.raises(FloatingPointError):
        fit(again, train, val, epochs=5, lr=1e-2, eval_every=2, device="cpu", progress=False, restore_best=False)
    assert all(torch.isfinite(p).all() for p in again.parameters())


def test_fit_interrupted_restores_the_best_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = FailsAfter(ok_calls=7, how="interrupt")
    train, val = make_batches(4, 16, seed=1), make_batches(2, 32, seed=2)
    ckpt = tmp_path / "best.pt"
    with pytest.raises(KeyboardInterrupt) as info:
        fit(model, train, val, epochs=5, lr=1e-2, eval_every=3, checkpoint_path=ckpt, device="cpu",
            progress=False)
    partial = info.value.partial_result
    assert partial.steps == 7 and partial.checkpoint == ckpt
    saved = TinyClassifier()
    assert load_checkpoint(saved, ckpt)["step"] == partial.best_step
    assert _same_weights(model, saved)  # the weights moved after the best step, and came back


def test_train_epoch_refuses_a_non_finite_gradient_before_stepping():
    class InfiniteGradient(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * float("inf")

    class BadGradient(TinyClassifier):
        def forward(self, input_ids, attention_mask):
            return InfiniteGradient.apply(super().forward(input_ids, attention_mask))

    model = BadGradient()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FloatingPointError, match="gradient norm became .* step 1.*learning rate"):
        train_epoch(model, make_batches(1, 8), make_optimizer(model), device="cpu")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- reliability: evaluate and train_epoch on odd input --------------------------------------------


def test_evaluate_refuses_non_finite_logits():
    model = TinyClassifier()
    with torch.no_grad():
        model.head.bias[1] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN or infinite logits on evaluation batch 0"):
        evaluate(model, make_batches(1, 8), device="cpu")


def test_evaluate_leaves_out_ignored_labels_like_cross_entropy():
    torch.manual_seed(0)
    model = TinyClassifier()
    batch = make_batches(1, 12)[0]
    labels = batch["labels"].clone()
    labels[::3] = -100
    batch = {**batch, "labels": labels}
    result = evaluate(model, [batch], device="cpu")
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"])
    kept = labels != -100
    assert result["loss"] == pytest.approx(float(F.cross_entropy(logits, labels)))
    assert result["y_true"].tolist() == labels[kept].tolist()
    hits = (logits.argmax(-1) == labels)[kept].float().mean()
    assert result["accuracy"] == pytest.approx(float(hits))
    assert result["macro_f1"] == pytest.approx(macro_f1(labels[kept].numpy(), logits[kept].argmax(-1).numpy(), 3))
    assert len(result["probs"]) == int(kept.sum())
    with pytest.raises(ValueError, match="every label"):
        evaluate(model, [{**batch, "labels": torch.full_like(labels, -100)}], device="cpu")
    with pytest.raises(ValueError, match=r"label 7 is out of range .* 3 outputs"):
        evaluate(model, [{**batch, "labels": torch.full_like(labels, 7)}], device="cpu")


def test_train_epoch_on_an_empty_loader_raises():
    model = TinyClassifier()
    with pytest.raises(ValueError, match="no batches"):
        train_epoch(model, [], make_optimizer(model), device="cpu")


# --- reliability: fit checks its arguments before training -------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"accumulation_steps": 0}, ValueError, "accumulation_steps"),
        ({"log_every": 0}, ValueError, "log_every"),
        ({"metric": "f1"}, ValueError, "metric must be one of loss, accuracy, macro_f1"),
        ({"epochs": 0}, ValueError, "epochs"),
        ({"eval_every": 0}, ValueError, "eval_every"),
        ({"max_steps": 0}, ValueError, "max_steps"),
        ({"patience": 0}, ValueError, "patience"),
        ({"lr": float("nan")}, ValueError, "lr"),
        ({"warmup_ratio": "0.1"}, ValueError, "warmup_ratio"),
        ({"max_grad_norm": -1.0}, ValueError, "max_grad_norm"),
        ({"restore_best": "false"}, TypeError, "restore_best must be True or False"),
        ({"use_autocast": "false"}, TypeError, "use_autocast"),
        ({"progress": "no"}, TypeError, "progress"),
        ({"writer": object()}, TypeError, "add_scalar"),
        ({"checkpoint_path": "DIR"}, IsADirectoryError, "is a folder"),
        ({"checkpoint_path": "FILE/sub/best.pt"}, NotADirectoryError, "is a file"),
    ],
)
def test_fit_checks_arguments_before_training(tmp_path, kwargs, error, match):
    class Counting(TinyClassifier):
        calls = 0

        def forward(self, input_ids, attention_mask):
            Counting.calls += 1
            return super().forward(input_ids, attention_mask)

    (tmp_path / "FILE").write_text("a file where a folder should be")
    if "checkpoint_path" in kwargs:
        where = kwargs["checkpoint_path"]
        kwargs = {"checkpoint_path": tmp_path if where == "DIR" else tmp_path / where}
    model = Counting()
    with pytest.raises(error, match=match):
        fit(model, make_batches(2, 4), make_batches(1, 4), **{"progress": False, "device": "cpu", **kwargs})
    assert Counting.calls == 0


def test_fit_checkpoint_without_validation_is_refused(tmp_path):
    with pytest.raises(ValueError, match="checkpoint_path needs a val_loader"):
        fit(TinyClassifier(), make_batches(2, 4), None, checkpoint_path=tmp_path / "b.pt", progress=False,
            device="cpu")


def test_fit_refuses_a_checkpoint_folder_it_cannot_write(tmp_path, monkeypatch):
    import llmbook.train

    # Permissions cannot be taken away from root (who runs CI containers), so pretend they were.
    monkeypatch.setattr(llmbook.train.os, "access", lambda path, mode: False)
    model = TinyClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PermissionError, match="not writable"):
        fit(model, make_batches(2, 4), make_batches(1, 4), checkpoint_path=tmp_path / "new" / "best.pt",
            progress=False, device="cpu")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
