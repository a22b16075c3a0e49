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
  restored (also when training fails part-way), and optional TensorBoard logging (any
  ``SummaryWriter``-like object).

Checkpoints are written atomically (a temporary file in the same folder, flushed to disk, then
renamed over the target), so a save that fails part-way never destroys the previous checkpoint, and
:func:`load_checkpoint` checks every key and shape before it changes a single weight.

A model is called as ``model(**inputs)`` where ``inputs`` is the batch without ``labels``; it may
return a logits tensor or an object with ``.logits`` (every Hugging Face model). The loss is the
mean cross-entropy computed here, so models with and without a built-in loss behave the same.
"""

from __future__ import annotations

import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmbook.checks import require_bool, require_int
from llmbook.runtime import autocast, autocast_dtype, get_device, read_torch_file, write_atomic

Batch = Mapping[str, torch.Tensor]

__all__ = [
    "EarlyStopping",
    "FitResult",
    "IGNORE_INDEX",
    "evaluate",
    "fit",
    "linear_warmup_schedule",
    "load_checkpoint",
    "macro_f1",
    "make_optimizer",
    "make_scaler",
    "move_to",
    "param_groups",
    "save_checkpoint",
    "train_epoch",
]

_NO_DECAY_MARKERS = ("bias", "layernorm", "layer_norm", "ln_", "norm.weight")
IGNORE_INDEX = -100  # the label F.cross_entropy (and Hugging Face) leave out of the loss
METRICS = ("loss", "accuracy", "macro_f1")  # what evaluate() reports and fit() can monitor


def _check_model(model: object) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _require_positive_number(name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not _is_number(value) or not math.isfinite(float(value)) or not float(value) > 0:  # type: ignore[arg-type]
        none = " (or None)" if allow_none else ""
        raise ValueError(f"{name} must be a positive finite number{none}, got {value!r}")


def _non_finite_error(what: str, value: float, step: int) -> FloatingPointError:
    return FloatingPointError(
        f"the {what} became {value} at optimizer step {step} of this epoch: the weights are diverging; "
        "lower the learning rate (or clip gradients with max_grad_norm, or train without fp16 autocast)"
    )


def param_groups(model: nn.Module, weight_decay: float = 0.01) -> list[dict[str, Any]]:
    """Two AdamW parameter groups: decayed weight matrices, and undecayed biases / norms.

    Weight decay pulls parameters towards zero. For a weight matrix that is a useful prior; for a
    bias or a LayerNorm gain (whose natural value is 1) it is not, so BERT's recipe excludes them.
    A parameter is undecayed if it is 1-D (biases, norm gains) or its name marks it as a bias/norm.
    Frozen parameters (``requires_grad=False``) are left out.
    """
    _check_model(model)
    if not _is_number(weight_decay) or not 0 <= weight_decay < math.inf:
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
    _require_positive_number("lr", lr)
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=float(lr))


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


def _forward(
    model: nn.Module, batch: Batch, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and summed cross-entropy of one batch (the sum, so micro-batches can be weighted).

    Labels equal to ``ignore_index`` add nothing to the sum, as in ``F.cross_entropy``.
    """
    if "labels" not in batch:
        raise ValueError(f"the batch has no 'labels' (keys: {sorted(batch)})")
    labels = batch["labels"]
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
        kind = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise TypeError(f"labels must be a tensor of integer class ids, got {kind}; convert with .long()")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = _logits(model(**inputs))
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels of shape {tuple(labels.shape)} do not match logits {tuple(logits.shape)}")
    num_labels = logits.shape[1]
    outside = (labels != ignore_index) & ((labels < 0) | (labels >= num_labels))
    if bool(outside.any()):
        bad = int(labels[outside][0])
        raise ValueError(
            f"label {bad} is out of range for a model with {num_labels} outputs: labels must be in "
            f"[0, {num_labels - 1}] (or {ignore_index} to leave an example out); check num_labels"
        )
    loss_sum = F.cross_entropy(logits.float(), labels, reduction="sum", ignore_index=ignore_index)
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
    ignore_index: int = IGNORE_INDEX,
    adversary: Callable[[Callable[[], torch.Tensor], Callable[[torch.Tensor], None]], None] | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; returns ``{"loss": mean training loss, "steps": optimizer steps, "examples": n}``.

    With ``accumulation_steps = k`` the gradients of ``k`` consecutive micro-batches are summed
    before one optimizer step, each micro-batch's loss weighted by its share of the examples, so a
    step equals one step on the concatenated batch (up to dropout and float rounding). Gradients are
    clipped to ``max_grad_norm`` (``None``: no clipping). ``scheduler.step()`` runs after every
    optimizer step. ``on_step(step, loss)`` is called after each optimizer step; ``max_steps`` stops
    early (used for short experiments).

    Labels equal to ``ignore_index`` (-100, as in ``F.cross_entropy``) are left out of the loss and
    of the example counts. A non-finite loss (or, when clipping without a ``GradScaler``, a
    non-finite gradient norm) raises ``FloatingPointError`` naming the step *before* the optimizer
    step, so the weights are never updated with NaN. An empty loader raises ``ValueError``.

    ``adversary`` (adversarial training, robustness chapter; e.g. :class:`llmbook.robust.FGM`) is
    called after each micro-batch's backward pass as ``adversary(compute_loss, backward)``:
    ``compute_loss()`` recomputes that micro-batch's weighted loss (under autocast) and
    ``backward(loss)`` back-propagates it (through the ``GradScaler`` when there is one), so the
    adversary can perturb the model, add the gradients of the perturbed loss, and undo the
    perturbation before the optimizer step.
    """
    _check_model(model)
    if adversary is not None and not callable(adversary):
        raise TypeError(
            f"adversary must be callable as adversary(compute_loss, backward), got {type(adversary).__name__}"
        )
    accumulation_steps = require_int("accumulation_steps", accumulation_steps, minimum=1)
    use_autocast = require_bool("use_autocast", use_autocast)
    _require_positive_number("max_grad_norm", max_grad_norm, allow_none=True)
    if max_steps is not None:
        max_steps = require_int("max_steps", max_steps, minimum=0)
    ignore_index = require_int("ignore_index", ignore_index)
    if on_step is not None and not callable(on_step):
        raise TypeError(f"on_step must be a function (step, loss) -> None, got {type(on_step).__name__}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.train()
    total_loss, total_examples, steps, batches_seen = 0.0, 0, 0, 0
    for group in _groups(loader, accumulation_steps):
        batches_seen += len(group)
        if max_steps is not None and steps >= max_steps:
            break
        for batch in group:
            if not isinstance(batch, Mapping) or "labels" not in batch:
                keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
                raise ValueError(f"each batch must be a dict with 'labels'; got {keys}")
        # The examples that count: every label except those marked ignore_index.
        group_size = sum(int((torch.as_tensor(b["labels"]) != ignore_index).sum()) for b in group)
        optimizer.zero_grad(set_to_none=True)
        group_loss = 0.0
        for batch in group:
            batch = move_to(batch, device)
            with autocast(device) if use_autocast else _null():
                _, loss_sum = _forward(model, batch, ignore_index)
            loss = loss_sum / max(1, group_size)  # weighted share of the accumulated batch's mean loss
            (scaler.scale(loss) if scaler is not None else loss).backward()
            group_loss += float(loss_sum.detach())
            if adversary is not None:
                adversary(_loss_closure(model, batch, ignore_index, group_size, device, use_autocast),
                          lambda extra: (scaler.scale(extra) if scaler is not None else extra).backward())
        if not math.isfinite(group_loss):
            raise _non_finite_error("training loss", group_loss, steps + 1)
        if scaler is not None:
            scaler.unscale_(optimizer)
        if max_grad_norm is not None:
            grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm))
            # With a GradScaler an overflowing step is expected: the scaler skips it and lowers its scale.
            if scaler is None and not math.isfinite(grad_norm):
                raise _non_finite_error("gradient norm", grad_norm, steps + 1)
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
            on_step(steps, group_loss / max(1, group_size))
    if batches_seen == 0:
        raise ValueError("the training loader yielded no batches: check the dataset and the batch size")
    return {"loss": total_loss / max(1, total_examples), "steps": steps, "examples": total_examples}


def _loss_closure(
    model: nn.Module, batch: Batch, ignore_index: int, group_size: int, device: torch.device, use_autocast: bool
) -> Callable[[], torch.Tensor]:
    """A function that recomputes one micro-batch's weighted training loss (for an ``adversary``)."""

    def compute_loss() -> torch.Tensor:
        with autocast(device) if use_autocast else _null():
            return _forward(model, batch, ignore_index)[1] / max(1, group_size)

    return compute_loss


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_labels: int) -> float:
    """Unweighted mean of the per-class F1 scores over the classes ``0 .. num_labels - 1``.

    :func:`llmbook.metrics.precision_recall_f1` with ``num_classes=num_labels``: every class of the
    task counts, also one absent from both inputs (it scores 0), which is sklearn's
    ``f1_score(average="macro", labels=range(num_labels), zero_division=0)``.
    """
    from llmbook.metrics import precision_recall_f1

    num_labels = require_int("num_labels", num_labels, minimum=1)
    return float(precision_recall_f1(y_true, y_pred, average="macro", num_classes=num_labels)[2])


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    *,
    device: torch.device | str | None = None,
    use_autocast: bool = True,
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, Any]:
    """Loss, accuracy and macro-F1 of a sentence classifier on ``loader`` (model in eval mode).

    Predictions are ``logits.argmax(dim=-1)`` over the class axis of the ``(batch, num_labels)``
    logits. Returns ``loss``, ``accuracy``, ``macro_f1`` and the arrays ``y_true``, ``y_pred``,
    ``probs`` (softmax probabilities) for reports and ensembles.

    Examples labelled ``ignore_index`` (-100) are left out of everything, as ``F.cross_entropy``
    leaves them out of its mean: the loss, the metrics and the three arrays cover the other
    examples only. Non-finite logits (a diverged model) raise ``FloatingPointError`` instead of
    scoring the argmax of NaN; an empty loader raises ``ValueError``.
    """
    _check_model(model)
    use_autocast = require_bool("use_autocast", use_autocast)
    ignore_index = require_int("ignore_index", ignore_index)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    losses, trues, logits_all = 0.0, [], []
    try:
        for index, batch in enumerate(loader):
            batch = move_to(batch, device)
            with autocast(device) if use_autocast else _null():
                logits, loss_sum = _forward(model, batch, ignore_index)
            if not bool(torch.isfinite(logits).all()):
                raise FloatingPointError(
                    f"the model produced NaN or infinite logits on evaluation batch {index}: its weights have "
                    "diverged (lower the learning rate and reload a good checkpoint), or fp16 overflowed "
                    "(evaluate with use_autocast=False)"
                )
            losses += float(loss_sum)
            trues.append(batch["labels"].cpu())
            logits_all.append(logits.float().cpu())
    finally:
        model.train(was_training)
    if not trues:
        raise ValueError("the evaluation loader yielded no batches")
    y_true = torch.cat(trues)
    logits = torch.cat(logits_all)
    scored = y_true != ignore_index
    if not bool(scored.any()):
        raise ValueError(f"every label in the evaluation loader is {ignore_index} (ignore_index): nothing to score")
    y_true, logits = y_true[scored].numpy(), logits[scored]
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


def _plain_extra(value: Any) -> Any:
    """``value`` with NumPy scalars turned into Python numbers (also inside lists, tuples and dicts).

    ``torch.load(weights_only=True)`` refuses NumPy scalars, and a metric computed with NumPy
    (``np.mean(...)``) is one, so it would make the checkpoint unloadable by :func:`load_checkpoint`.
    """
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain_extra(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return type(value)(_plain_extra(v) for v in value)
    return value


_SAFE_LEAVES = (type(None), bool, int, float, complex, str, bytes, torch.Tensor, torch.Size, torch.dtype, torch.device)


def _plainly_loadable(value: Any) -> bool:
    """True for values ``torch.load(weights_only=True)`` always reads (checked without serialising tensors)."""
    if type(value) in _SAFE_LEAVES or isinstance(value, torch.Tensor):
        return True
    if type(value) in (list, tuple, set):
        return all(_plainly_loadable(v) for v in value)
    if type(value) is dict:
        return all(_plainly_loadable(k) and _plainly_loadable(v) for k, v in value.items())
    return False


def _check_extra_loads(name: str, value: Any) -> None:
    """Raise ``TypeError`` unless ``value`` survives the save/safe-load round trip of a checkpoint."""
    if _plainly_loadable(value):  # e.g. an optimizer's state_dict: no need to serialise it twice
        return
    buffer = io.BytesIO()
    try:
        torch.save(value, buffer)
        buffer.seek(0)
        torch.load(buffer, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TypeError(
            f"save_checkpoint: the extra {name}={type(value).__name__} cannot be saved so that load_checkpoint "
            f"can read it back safely ({type(exc).__name__}); pass numbers, strings, None, tensors, or "
            "lists/dicts of those (e.g. convert an array with .tolist())"
        ) from None


def save_checkpoint(model: nn.Module, path: str | Path, **extra: Any) -> Path:
    """Save the model's ``state_dict`` (and any ``extra`` values, e.g. the step) to ``path``; returns ``path``.

    The save is atomic: the checkpoint is written to a temporary file in the same folder, flushed
    to disk (``os.fsync``), then renamed over ``path`` (``os.replace``). If anything fails on the way
    (an extra that cannot be saved, a full disk, an interrupt), the previous file at ``path`` is
    left exactly as it was and the temporary file is removed.

    Extras must load back under ``torch.load(weights_only=True)``: NumPy scalars are converted to
    Python numbers; anything else that would not load (a ``Path``, a NumPy array, a function)
    raises ``TypeError`` before any file is touched.
    """
    _check_model(model)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path (str or Path), got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: give a file path such as {path / 'best.pt'}")
    if "state_dict" in extra:
        raise ValueError("'state_dict' is reserved for the model's weights; give the extra another name")
    extra = {name: _plain_extra(value) for name, value in extra.items()}
    for name, value in extra.items():
        _check_extra_loads(name, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda handle: torch.save({"state_dict": model.state_dict(), **extra}, handle))


_SHOWN_KEYS = 3  # how many offending keys an error message lists


def _some(keys: list[str]) -> str:
    more = f" and {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else ""
    return ", ".join(keys[:_SHOWN_KEYS]) + more


def _check_state_dict(model: nn.Module, state: Mapping[str, Any], path: Path) -> None:
    """Raise ``ValueError`` listing missing, unexpected and mis-shaped keys, before anything is loaded."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != expected[k].shape
    ]
    not_tensors = [k for k in expected if k in state and not isinstance(state[k], torch.Tensor)]
    if not (missing or unexpected or mismatched or not_tensors):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({_some(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_some(unexpected)})")
    if mismatched:
        problems.append(f"{len(mismatched)} of another shape (checkpoint vs model: {_some(mismatched)})")
    if not_tensors:
        problems.append(f"{len(not_tensors)} not tensors ({_some(not_tensors)})")
    hint = "load it into a model built with the same architecture and settings (e.g. num_labels)"
    prefixes = {k.split(".", 1)[0] for k in unexpected}
    if unexpected and prefixes <= {"module", "_orig_mod"}:
        hint = "its keys start with 'module.' or '_orig_mod.' (a DataParallel or compiled model): strip that prefix"
    raise ValueError(
        f"the checkpoint {path} does not fit this {type(model).__name__}: {'; '.join(problems)}. "
        f"The model was left unchanged; {hint}."
    )


def load_checkpoint(model: nn.Module, path: str | Path, *, weights_only: bool = True) -> dict[str, Any]:
    """Load a :func:`save_checkpoint` file into ``model`` (in place); returns the saved extras.

    A plain ``state_dict`` saved with ``torch.save(model.state_dict(), path)`` is accepted too
    (its extras are ``{}``). Every key and shape is checked *before* any weight changes, so a
    checkpoint that does not fit raises ``ValueError`` (naming the first few missing, unexpected
    and mis-shaped keys) and leaves the model untouched. An empty, truncated or corrupt file raises
    ``ValueError`` naming it.

    ``weights_only=True`` (the default) loads with ``torch.load(weights_only=True)``, which cannot run
    code hidden in a file. Only for a file you trust that holds other objects (e.g. NumPy scalars,
    saved by older code) pass ``weights_only=False``.
    """
    _check_model(model)
    weights_only = require_bool("weights_only", weights_only)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path (str or Path), got {type(path).__name__}")
    path = Path(path)
    saved = read_torch_file(path, what="checkpoint", remedy="save it again", weights_only=weights_only)
    if isinstance(saved, Mapping) and isinstance(saved.get("state_dict"), Mapping):
        extras = {k: v for k, v in saved.items() if k != "state_dict"}
        state = saved["state_dict"]
    elif isinstance(saved, Mapping) and saved and all(isinstance(v, torch.Tensor) for v in saved.values()):
        extras, state = {}, saved  # a plain state_dict
    else:
        inner = [k for k, v in saved.items() if isinstance(v, Mapping)] if isinstance(saved, Mapping) else []
        hint = f" (its entry {inner[0]!r} may hold the weights)" if inner else ""
        raise ValueError(
            f"{path} holds a {type(saved).__name__} that is neither a save_checkpoint file nor a state_dict"
            f"{hint}; save the model with save_checkpoint(model, path)"
        )
    _check_state_dict(model, state, path)
    model.load_state_dict(state)
    return dict(extras)


@dataclass
class FitResult:
    """What :func:`fit` returns: the history rows, the best validation metric and where it was reached.

    When ``fit`` fails part-way, the same object describing the run up to the failure is attached to
    the exception as ``exc.partial_result`` (see :func:`fit`).
    """

    history: list[dict[str, float]]
    best_metric: float | None
    best_step: int | None
    steps: int
    stopped_early: bool
    seconds: float
    checkpoint: Path | None = None
    last_eval: dict[str, Any] = field(default_factory=dict, repr=False)


def _check_checkpoint_path(checkpoint_path: object) -> Path:
    """The checkpoint path as a ``Path``, or one clear error if a file could never be written there."""
    if not isinstance(checkpoint_path, (str, os.PathLike)):
        raise TypeError(f"checkpoint_path must be a file path (str or Path) or None, got {checkpoint_path!r}")
    path = Path(checkpoint_path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint_path {path} is a folder: give a file path such as {path / 'best.pt'}")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # save_checkpoint creates missing folders
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"checkpoint_path {path}: {folder} is a file, so no folder can be made there")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"checkpoint_path {path}: the folder {folder} is not writable; choose another folder")
    return path


def _all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.is_floating_point())


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
    adversary: Callable[[Callable[[], torch.Tensor], Callable[[torch.Tensor], None]], None] | None = None,
) -> FitResult:
    """Fine-tune ``model``: AdamW + linear warmup/decay, evaluation, early stopping, best checkpoint.

    - ``eval_every`` optimizer steps (default: once per epoch) the model is evaluated on
      ``val_loader``; ``metric`` (``"macro_f1"``, ``"accuracy"`` or ``"loss"``; higher is better
      unless it is ``loss``) is monitored. Each new best is saved to ``checkpoint_path`` with
      :func:`save_checkpoint` (atomic; extras ``step`` and ``metric``) or kept in memory when
      ``None``, and restored at the end when ``restore_best``.
    - ``patience``: stop after that many evaluations without improvement (``None``: never stop early).
    - ``writer``: a ``torch.utils.tensorboard.SummaryWriter`` (anything with ``add_scalar``).
    - ``max_steps`` caps the total number of optimizer steps (the schedule is sized to it).
    - ``adversary``: adversarial training such as :class:`llmbook.robust.FGM`, passed on to
      :func:`train_epoch` (``None``: plain training).

    The history holds rows ``{"step", "epoch", "train_loss", "lr"}`` every ``log_every`` steps
    and ``{"step", "epoch", "val_loss", "val_accuracy", "val_macro_f1"}`` at each evaluation.

    Every argument is checked before the first training step (one clear error each), including
    that a file can be written at ``checkpoint_path``.

    **When training fails part-way** (a non-finite loss or gradient, non-finite logits at an
    evaluation, ``KeyboardInterrupt``, or any other exception), ``fit`` re-raises the exception
    after two things:

    1. If an evaluation had already found a best state, the model gets those best weights back
       (from ``checkpoint_path``, or from memory) — when ``restore_best`` is True, and also when it
       is False but the current weights contain NaN or infinity. Otherwise the model keeps the
       weights it had at the moment of failure.
    2. The run so far is attached to the exception as ``exc.partial_result``, a :class:`FitResult`
       (``history``, ``best_metric``, ``best_step``, ``steps`` completed, ``last_eval``, ...).
       On Python 3.11+ a note on the exception says which weights the model now holds.

    A non-finite loss or gradient (from :func:`train_epoch`) or non-finite logits (from
    :func:`evaluate`) come out as a new ``FloatingPointError`` whose message names the step of
    ``fit`` and suggests a lower learning rate (the original is its ``__context__``); no optimizer
    step is taken with a non-finite loss. Every other exception is re-raised as it is::

        try:
            result = fit(model, train_loader, val_loader, lr=1e-2)
        except FloatingPointError as exc:
            result = exc.partial_result  # the history up to the failure; model = best weights
    """
    from tqdm.auto import tqdm

    _check_model(model)
    epochs = require_int("epochs", epochs, minimum=1)
    _require_positive_number("lr", lr)
    if not _is_number(weight_decay) or not 0 <= weight_decay < math.inf:
        raise ValueError(f"weight_decay must be a non-negative finite number, got {weight_decay!r}")
    if not _is_number(warmup_ratio) or not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio must be a number in [0, 1), got {warmup_ratio!r}")
    _require_positive_number("max_grad_norm", max_grad_norm, allow_none=True)
    accumulation_steps = require_int("accumulation_steps", accumulation_steps, minimum=1)
    if eval_every is not None:
        eval_every = require_int("eval_every", eval_every, minimum=1)
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")
    if patience is not None:
        patience = require_int("patience", patience, minimum=1)
    restore_best = require_bool("restore_best", restore_best)
    use_autocast = require_bool("use_autocast", use_autocast)
    progress = require_bool("progress", progress)
    log_every = require_int("log_every", log_every, minimum=1)
    if max_steps is not None:
        max_steps = require_int("max_steps", max_steps, minimum=1)
    if adversary is not None and not callable(adversary):
        raise TypeError(
            f"adversary must be callable as adversary(compute_loss, backward), got {type(adversary).__name__}"
        )
    if writer is not None and not callable(getattr(writer, "add_scalar", None)):
        raise TypeError(f"writer must have an add_scalar method (a SummaryWriter), got {type(writer).__name__}")
    if patience is not None and val_loader is None:
        raise ValueError("early stopping (patience) needs a val_loader")
    checkpoint = None
    if checkpoint_path is not None:
        if val_loader is None:
            raise ValueError("checkpoint_path needs a val_loader: the best state is chosen by validation")
        checkpoint = _check_checkpoint_path(checkpoint_path)
    try:
        batches_per_epoch = len(train_loader)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError("train_loader must have a length (e.g. a torch DataLoader)") from None
    if batches_per_epoch == 0:
        raise ValueError("train_loader is empty")
    if val_loader is not None and hasattr(val_loader, "__len__") and len(val_loader) == 0:  # type: ignore[arg-type]
        raise ValueError("val_loader is empty: give it at least one batch, or pass val_loader=None")
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
    state: dict[str, Any] = {"step": 0, "epoch": 0, "recent": [], "stop": False, "last_eval": {}, "where": "step 1"}
    started = time.perf_counter()

    def result() -> FitResult:
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

    def run_evaluation() -> None:
        nonlocal best_state
        outcome = evaluate(model, val_loader, device=device, use_autocast=use_autocast)
        state["last_eval"] = outcome
        row = {"step": state["step"], "epoch": state["epoch"]}
        row.update({f"val_{k}": outcome[k] for k in METRICS})
        history.append(row)
        if writer is not None:
            for k in METRICS:
                writer.add_scalar(f"val/{k}", outcome[k], state["step"])
        before = (stopper.best, stopper.best_step, stopper.bad_evaluations)
        if stopper.update(float(outcome[metric]), state["step"]):
            if checkpoint is not None:
                try:
                    save_checkpoint(model, checkpoint, step=state["step"], metric=float(outcome[metric]))
                except BaseException:  # the file still holds the previous best: keep reporting that one
                    stopper.best, stopper.best_step, stopper.bad_evaluations = before
                    raise
            else:
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        elif patience is not None and stopper.should_stop:
            state["stop"] = True
        bar.set_postfix({f"val_{metric}": f"{outcome[metric]:.3f}"})

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
            state["where"] = f"the evaluation after step {step}"
            run_evaluation()
        state["where"] = f"step {step + 1}"

    def restore_after_failure() -> str:
        """Put the best weights back if there are any (see the docstring); say what the model holds."""
        if stopper.best is None:
            return "fit: no evaluation had finished, so the model holds the weights of the moment of failure"
        if not restore_best and _all_finite(model):
            return "fit: restore_best=False, so the model holds the weights of the moment of failure"
        try:
            if checkpoint is not None:
                load_checkpoint(model, checkpoint)
                source = str(checkpoint)
            else:
                assert best_state is not None
                model.load_state_dict(best_state)
                source = "memory"
        except Exception as exc:  # keep the original error; say why the weights could not come back
            return f"fit: could not restore the best weights ({type(exc).__name__}: {exc})"
        return (
            f"fit: the model holds the best weights again (step {stopper.best_step}, val_{metric} = "
            f"{stopper.best:.4f}, from {source}); the run so far is in exc.partial_result"
        )

    bar = tqdm(total=total_steps, desc="training", disable=not progress)
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
                adversary=adversary,
            )
    except BaseException as exc:
        bar.close()
        error = exc
        if isinstance(exc, FloatingPointError):  # name the step of the whole run, not of the epoch
            error = FloatingPointError(f"fit stopped at {state['where']} (epoch {state['epoch']}): {exc}")
        note = restore_after_failure()
        try:
            error.partial_result = result()  # type: ignore[attr-defined]
        except AttributeError:  # an exception class with __slots__
            pass
        if hasattr(error, "add_note"):  # Python 3.11+
            error.add_note(note)
        if writer is not None and callable(getattr(writer, "flush", None)):
            try:
                writer.flush()
            except Exception:  # the training error is the one to report
                pass
        if error is exc:
            raise
        raise error from None  # one message, not two tracebacks; the original stays in __context__
    bar.close()
    if restore_best and stopper.best is not None:
        if checkpoint is not None:
            load_checkpoint(model, checkpoint)
        elif best_state is not None:
            model.load_state_dict(best_state)
    if writer is not None and callable(getattr(writer, "flush", None)):
        writer.flush()
    return result()


def _until(loader: Iterable[Batch], stop: Callable[[], bool]) -> Iterator[Batch]:
    for batch in loader:
        if stop():
            return
        yield batch
