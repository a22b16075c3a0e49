"""The book's transparent training loop: plain PyTorch, readable top to bottom.

Taught in the fine-tuning chapter (``notebooks/06_finetuning.ipynb``) and reused by later chapters.
It is deliberately small — not a framework and not a copy of Hugging Face's ``Trainer`` — so that
every step a reader sees in the chapter is a line here:

- :func:`param_groups` / :func:`make_optimizer`: ``torch.optim.AdamW`` with weight decay on the
  weight matrices only (no decay for biases and LayerNorm parameters);
- :func:`train_epoch`: one pass over a loader with optional gradient accumulation (exact: each
  micro-batch's loss is weighted by its share of the examples in the accumulated batch), gradient
  clipping, a learning-rate scheduler stepped per optimizer step, and mixed precision on CUDA
  (autocast, plus a ``GradScaler`` for fp16);
- :func:`evaluate`: loss, accuracy and macro-F1 of a classifier, with the predictions;
- :class:`EarlyStopping`, :func:`save_checkpoint`, :func:`load_checkpoint`;
- :func:`fit`: epochs of the above with periodic evaluation, a history for
  :func:`llmbook.viz.plot_history`, early stopping on a validation metric, the best state saved and
  restored, and optional TensorBoard logging (any ``SummaryWriter``-like object).

A model is called as ``model(**inputs)`` where ``inputs`` is the batch without ``labels``; it may
return a logits tensor or an object with ``.logits`` (every Hugging Face model). The loss is the
mean cross-entropy computed here, so models with and without a built-in loss behave the same.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmbook.runtime import autocast, autocast_dtype, get_device

Batch = Mapping[str, torch.Tensor]

__all__ = [
    "EarlyStopping",
    "FitResult",
    "evaluate",
    "fit",
    "linear_warmup_schedule",
    "load_checkpoint",
    "make_optimizer",
    "make_scaler",
    "move_to",
    "param_groups",
    "save_checkpoint",
    "train_epoch",
]

_NO_DECAY_MARKERS = ("bias", "layernorm", "layer_norm", "ln_", "norm.weight")


def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def param_groups(model: nn.Module, weight_decay: float = 0.01) -> list[dict[str, Any]]:
    """Two AdamW parameter groups: decayed weight matrices, and undecayed biases / norms.

    Weight decay pulls parameters towards zero. For a weight matrix that is a useful prior; for a
    bias or a LayerNorm gain (whose natural value is 1) it is not, so BERT's recipe excludes them.
    A parameter is undecayed if it is 1-D (biases, norm gains) or its name marks it as a bias/norm.
    Frozen parameters (``requires_grad=False``) are left out.
    """
    _check_model(model)
    if not isinstance(weight_decay, (int, float)) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a non-negative number, got {weight_decay!r}")
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lowered = name.lower()
        if param.ndim <= 1 or any(marker in lowered for marker in _NO_DECAY_MARKERS):
            no_decay.append(param)
        else:
            decay.append(param)
    if not decay and not no_decay:
        raise ValueError("model has no trainable parameters (all have requires_grad=False)")
    return [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, lr: float = 2e-5, weight_decay: float = 0.01) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over :func:`param_groups` (``transformers.AdamW`` no longer exists)."""
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)


def linear_warmup_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from 0 to the optimizer's learning rate, then linear decay to 0 at ``total_steps``.

    The same shape as ``transformers.get_linear_schedule_with_warmup`` (the tests check they agree).
    """
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
    if not isinstance(warmup_steps, int) or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be an int in [0, total_steps={total_steps}], got {warmup_steps!r}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def move_to(batch: Batch, device: torch.device | str) -> dict[str, torch.Tensor]:
    """The batch (a dict of tensors) on ``device``."""
    if not isinstance(batch, Mapping):
        raise TypeError(f"a batch must be a dict of tensors, got {type(batch).__name__}")
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _logits(output: object) -> torch.Tensor:
    logits = getattr(output, "logits", output)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            f"the model returned {type(output).__name__}; it must return a logits tensor or an object with "
            "a .logits attribute (e.g. AutoModelForSequenceClassification, not AutoModel/BertModel)"
        )
    if logits.ndim != 2:
        raise ValueError(
            f"expected sentence-level logits of shape (batch, num_labels), got {tuple(logits.shape)}; "
            "a token-level model (batch, seq, hidden) needs a classification head"
        )
    return logits


def _forward(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and summed cross-entropy of one batch (the sum, so micro-batches can be weighted)."""
    if "labels" not in batch:
        raise ValueError(f"the batch has no 'labels' (keys: {sorted(batch)})")
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = _logits(model(**inputs))
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels of shape {tuple(labels.shape)} do not match logits {tuple(logits.shape)}")
    loss_sum = F.cross_entropy(logits.float(), labels, reduction="sum")
    return logits, loss_sum


def make_scaler(device: torch.device | str, use_autocast: bool = True) -> torch.amp.GradScaler | None:
    """A ``GradScaler`` when training will run in fp16 on CUDA, else ``None`` (bf16 and fp32 need none).

    fp16 has a narrow exponent range: small gradients underflow to zero. The scaler multiplies the
    loss by a large factor before ``backward`` and divides the gradients before the optimizer step,
    skipping steps whose gradients overflowed.
    """
    device = torch.device(device)
    if use_autocast and autocast_dtype(device) == torch.float16:
        return torch.amp.GradScaler(device.type)
    return None


def _groups(loader: Iterable[Batch], size: int) -> Iterator[list[Batch]]:
    group: list[Batch] = []
    for batch in loader:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def train_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    optimizer: torch.optim.Optimizer,
    *,
    scheduler: Any | None = None,
    device: torch.device | str | None = None,
    accumulation_steps: int = 1,
    max_grad_norm: float | None = 1.0,
    use_autocast: bool = True,
    scaler: torch.amp.GradScaler | None = None,
    max_steps: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; returns ``{"loss": mean training loss, "steps": optimizer steps, "examples": n}``.

    With ``accumulation_steps = k`` the gradients of ``k`` consecutive micro-batches are summed
    before one optimizer step, each micro-batch's loss weighted by its share of the examples, so a
    step equals one step on the concatenated batch (up to dropout and float rounding). Gradients are
    clipped to ``max_grad_norm`` (``None``: no clipping). ``scheduler.step()`` runs after every
    optimizer step. ``on_step(step, loss)`` is called after each optimizer step; ``max_steps`` stops
    early (used for short experiments).
    """
    _check_model(model)
    if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be a positive int, got {accumulation_steps!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.train()
    total_loss, total_examples, steps = 0.0, 0, 0
    for group in _groups(loader, accumulation_steps):
        if max_steps is not None and steps >= max_steps:
            break
        for batch in group:
            if not isinstance(batch, Mapping) or "labels" not in batch:
                keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
                raise ValueError(f"each batch must be a dict with 'labels'; got {keys}")
        group_size = sum(int(b["labels"].shape[0]) for b in group)
        optimizer.zero_grad(set_to_none=True)
        group_loss = 0.0
        for batch in group:
            batch = move_to(batch, device)
            with autocast(device) if use_autocast else _null():
                _, loss_sum = _forward(model, batch)
            loss = loss_sum / group_size  # weighted share of the accumulated batch's mean loss
            (scaler.scale(loss) if scaler is not None else loss).backward()
            group_loss += float(loss_sum.detach())
        if not math.isfinite(group_loss):
            raise FloatingPointError(
                f"the training loss became {group_loss} at step {steps + 1}: lower the learning rate"
            )
        if scaler is not None:
            scaler.unscale_(optimizer)
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        steps += 1
        total_loss += group_loss
        total_examples += group_size
        if on_step is not None:
            on_step(steps, group_loss / group_size)
    return {"loss": total_loss / max(1, total_examples), "steps": steps, "examples": total_examples}


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int) -> float:
    """Unweighted mean of the per-class F1 scores over ``num_labels`` classes (sklearn's ``average='macro'``)."""
    scores = []
    for c in range(num_labels):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        denom = 2 * tp + fp + fn
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    *,
    device: torch.device | str | None = None,
    use_autocast: bool = True,
) -> dict[str, Any]:
    """Loss, accuracy and macro-F1 of a sentence classifier on ``loader`` (model in eval mode).

    Predictions are ``logits.argmax(dim=-1)`` over the class axis of the ``(batch, num_labels)``
    logits. Returns ``loss``, ``accuracy``, ``macro_f1`` and the arrays ``y_true``, ``y_pred``,
    ``probs`` (softmax probabilities) for reports and ensembles.
    """
    _check_model(model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    losses, trues, logits_all = 0.0, [], []
    for batch in loader:
        batch = move_to(batch, device)
        with autocast(device) if use_autocast else _null():
            logits, loss_sum = _forward(model, batch)
        losses += float(loss_sum)
        trues.append(batch["labels"].cpu())
        logits_all.append(logits.float().cpu())
    model.train(was_training)
    if not trues:
        raise ValueError("the evaluation loader yielded no batches")
    y_true = torch.cat(trues).numpy()
    logits = torch.cat(logits_all)
    y_pred = logits.argmax(dim=-1).numpy()
    return {
        "loss": losses / len(y_true),
        "accuracy": float(np.mean(y_true == y_pred)),
        "macro_f1": macro_f1(y_true, y_pred, logits.shape[1]),
        "y_true": y_true,
        "y_pred": y_pred,
        "probs": logits.softmax(dim=-1).numpy(),
    }


@dataclass
class EarlyStopping:
    """Stop when a validation metric has not improved for ``patience`` evaluations.

    ``mode="max"`` for scores (macro-F1), ``"min"`` for losses. ``update(value, step)`` returns
    True when ``value`` is a new best (by more than ``min_delta``); ``should_stop`` turns True after
    ``patience`` evaluations without one.
    """

    patience: int = 2
    mode: str = "max"
    min_delta: float = 0.0
    best: float | None = None
    best_step: int | None = None
    bad_evaluations: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {self.mode!r}")
        if not isinstance(self.patience, int) or self.patience < 1:
            raise ValueError(f"patience must be a positive int, got {self.patience!r}")

    def update(self, value: float, step: int | None = None) -> bool:
        if not isinstance(value, (int, float)) or math.isnan(value):
            raise ValueError(f"the monitored metric must be a number, got {value!r}")
        sign = 1.0 if self.mode == "max" else -1.0
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.best_step, self.bad_evaluations = float(value), step, 0
            return True
        self.bad_evaluations += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_evaluations >= self.patience


def save_checkpoint(model: nn.Module, path: str | Path, **extra: Any) -> Path:
    """Save the model's ``state_dict`` (and any ``extra`` values, e.g. the step) to ``path``."""
    _check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), **extra}, path)
    return path


def load_checkpoint(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a :func:`save_checkpoint` file into ``model`` (in place); returns the saved extras."""
    _check_model(model)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(saved.pop("state_dict"))
    return saved


@dataclass
class FitResult:
    """What :func:`fit` returns: the history rows, the best validation metric and where it was reached."""

    history: list[dict[str, float]]
    best_metric: float | None
    best_step: int | None
    steps: int
    stopped_early: bool
    seconds: float
    checkpoint: Path | None = None
    last_eval: dict[str, Any] = field(default_factory=dict, repr=False)


def fit(
    model: nn.Module,
    train_loader: Iterable[Batch],
    val_loader: Iterable[Batch] | None = None,
    *,
    epochs: int = 1,
    lr: float = 2e-5,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.1,
    max_grad_norm: float | None = 1.0,
    accumulation_steps: int = 1,
    eval_every: int | None = None,
    metric: str = "macro_f1",
    patience: int | None = None,
    checkpoint_path: str | Path | None = None,
    restore_best: bool = True,
    device: torch.device | str | None = None,
    use_autocast: bool = True,
    log_every: int = 10,
    writer: Any | None = None,
    progress: bool = True,
    max_steps: int | None = None,
) -> FitResult:
    """Fine-tune ``model``: AdamW + linear warmup/decay, evaluation, early stopping, best checkpoint.

    - ``eval_every`` optimizer steps (default: once per epoch) the model is evaluated on
      ``val_loader``; ``metric`` (a key of :func:`evaluate`, higher is better unless it is ``loss``)
      is monitored. Each new best is saved to ``checkpoint_path`` (or kept in memory when ``None``)
      and restored at the end when ``restore_best``.
    - ``patience``: stop after that many evaluations without improvement (``None``: never stop early).
    - ``writer``: a ``torch.utils.tensorboard.SummaryWriter`` (anything with ``add_scalar``).
    - ``max_steps`` caps the total number of optimizer steps (the schedule is sized to it).

    The history holds rows ``{"step", "epoch", "train_loss", "lr"}`` every ``log_every`` steps
    and ``{"step", "epoch", "val_loss", "val_accuracy", "val_macro_f1"}`` at each evaluation.
    """
    from tqdm.auto import tqdm

    _check_model(model)
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio!r}")
    if patience is not None and val_loader is None:
        raise ValueError("early stopping (patience) needs a val_loader")
    try:
        batches_per_epoch = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError("train_loader must have a length (e.g. a torch DataLoader)") from None
    if batches_per_epoch == 0:
        raise ValueError("train_loader is empty")
    device = torch.device(device) if device is not None else get_device()
    model.to(device)
    steps_per_epoch = math.ceil(batches_per_epoch / accumulation_steps)
    total_steps = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)
    eval_every = eval_every or steps_per_epoch
    optimizer = make_optimizer(model, lr, weight_decay)
    scheduler = linear_warmup_schedule(optimizer, int(warmup_ratio * total_steps), total_steps)
    scaler = make_scaler(device, use_autocast)
    higher_is_better = metric != "loss"
    stopper = EarlyStopping(patience=patience or 1, mode="max" if higher_is_better else "min")
    history: list[dict[str, float]] = []
    best_state: dict[str, torch.Tensor] | None = None
    checkpoint = Path(checkpoint_path) if checkpoint_path is not None else None
    state = {"step": 0, "epoch": 0, "recent": [], "stop": False, "last_eval": {}}
    started = time.perf_counter()
    bar = tqdm(total=total_steps, desc="training", disable=not progress)

    def run_evaluation() -> None:
        nonlocal best_state
        result = evaluate(model, val_loader, device=device, use_autocast=use_autocast)
        state["last_eval"] = result
        row = {"step": state["step"], "epoch": state["epoch"]}
        row.update({f"val_{k}": result[k] for k in ("loss", "accuracy", "macro_f1")})
        history.append(row)
        if writer is not None:
            for k in ("loss", "accuracy", "macro_f1"):
                writer.add_scalar(f"val/{k}", result[k], state["step"])
        if metric not in result:
            raise ValueError(f"metric must be one of loss, accuracy, macro_f1; got {metric!r}")
        if stopper.update(float(result[metric]), state["step"]):
            if checkpoint is not None:
                save_checkpoint(model, checkpoint, step=state["step"], metric=float(result[metric]))
            else:
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        elif patience is not None and stopper.should_stop:
            state["stop"] = True
        bar.set_postfix({f"val_{metric}": f"{result[metric]:.3f}"})

    def on_step(_: int, loss: float) -> None:
        state["step"] += 1
        step = state["step"]
        state["recent"].append(loss)
        bar.update(1)
        if writer is not None:
            writer.add_scalar("train/loss", loss, step)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
        if step % log_every == 0 or step == total_steps:
            history.append({
                "step": step, "epoch": state["epoch"],
                "train_loss": float(np.mean(state["recent"])), "lr": scheduler.get_last_lr()[0],
            })
            state["recent"] = []
        if val_loader is not None and (step % eval_every == 0 or step == total_steps):
            run_evaluation()

    try:
        for epoch in range(1, epochs + 1):
            state["epoch"] = epoch
            remaining = total_steps - state["step"]
            if remaining <= 0 or state["stop"]:
                break
            # Stop the epoch as soon as early stopping triggers, by capping the steps one at a time.
            loader = _until(train_loader, lambda: state["stop"])
            train_epoch(
                model, loader, optimizer, scheduler=scheduler, device=device,
                accumulation_steps=accumulation_steps, max_grad_norm=max_grad_norm,
                use_autocast=use_autocast, scaler=scaler, max_steps=remaining, on_step=on_step,
            )
    finally:
        bar.close()
    if restore_best and stopper.best is not None:
        if checkpoint is not None:
            load_checkpoint(model, checkpoint)
        elif best_state is not None:
            model.load_state_dict(best_state)
    if writer is not None:
        writer.flush()
    return FitResult(
        history=history,
        best_metric=stopper.best,
        best_step=stopper.best_step,
        steps=state["step"],
        stopped_early=bool(state["stop"]),
        seconds=time.perf_counter() - started,
        checkpoint=checkpoint,
        last_eval=state["last_eval"],
    )


def _until(loader: Iterable[Batch], stop: Callable[[], bool]) -> Iterator[Batch]:
    for batch in loader:
        if stop():
            return
        yield batch
