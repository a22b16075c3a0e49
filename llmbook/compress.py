"""Model compression and its measurement: pruning, quantisation, ONNX Runtime, distillation, timing.

Taught in the deployment chapter (``notebooks/13_deployment.ipynb``).

- :func:`size_on_disk`: bytes a model takes when saved (a ``state_dict`` or a file).
- :func:`benchmark`: latency p50/p95 at batch 1 and throughput at batch 32 of several runtimes,
  *interleaved* (every round runs each runtime in turn, in a rotating order) and summarised by the
  median over rounds, so that a slow moment of a shared machine hits every runtime alike.
- :func:`magnitude_prune`: unstructured L1 pruning (剪枝) of the encoder's linear layers with
  ``torch.nn.utils.prune`` (global: the smallest weights of all layers together);
  :func:`make_pruning_permanent`, :func:`sparsity`.
- :func:`head_importance`, :func:`heads_to_prune`, :func:`prune_heads`: structured pruning of
  attention heads in a BERT encoder (the slices of Q/K/V and of the output projection are removed,
  so the model really shrinks; ``transformers`` 5 dropped its own head-pruning API).
- :func:`quantize_dynamic_int8`: dynamic int8 quantisation (量化) of the linear layers with
  ``torch.ao.quantization.quantize_dynamic``.
- :func:`export_onnx`, :func:`onnx_session`, :func:`quantize_onnx_int8`: ONNX export and ONNX Runtime
  sessions in fp32 and int8.
- :func:`distillation_loss`, :func:`truncated_student`, :func:`distill`: knowledge distillation
  (知识蒸馏) into a student with fewer layers, trained on the teacher's soft labels.

Every runtime is wrapped as a *runner*: a function from a batch of NumPy ``int64`` arrays
(``input_ids``, ``attention_mask``) to logits, so PyTorch and ONNX Runtime are timed and scored the
same way (:func:`torch_runner`, :func:`ort_runner`, :func:`evaluate_runner`).
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmbook.checks import require_bool, require_int

__all__ = [
    "benchmark",
    "distill",
    "distillation_loss",
    "encoder_layers",
    "evaluate_runner",
    "export_onnx",
    "head_importance",
    "heads_to_prune",
    "magnitude_prune",
    "make_pruning_permanent",
    "numpy_batch",
    "onnx_session",
    "ort_runner",
    "prune_heads",
    "quantize_dynamic_int8",
    "quantize_onnx_int8",
    "size_on_disk",
    "sparsity",
    "torch_runner",
    "truncated_student",
]

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]

# ---------------------------------------------------------------------------------------------
# Size and speed
# ---------------------------------------------------------------------------------------------


def size_on_disk(obj: nn.Module | str | os.PathLike) -> int:
    """Bytes on disk: of a file, or of a module's ``state_dict`` saved with ``torch.save``."""
    if isinstance(obj, (str, os.PathLike)):
        return Path(obj).stat().st_size
    if not isinstance(obj, nn.Module):
        raise TypeError(f"size_on_disk needs an nn.Module or a file path, got {type(obj).__name__}")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        torch.save(obj.state_dict(), path)
        return path.stat().st_size


def numpy_batch(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``input_ids`` and ``attention_mask`` of a batch as ``int64`` NumPy arrays (what runners take)."""
    missing = {"input_ids", "attention_mask"} - set(batch)
    if missing:
        raise KeyError(f"the batch has no {sorted(missing)}: runners need input_ids and attention_mask")
    return {key: np.asarray(batch[key].cpu() if isinstance(batch[key], torch.Tensor) else batch[key],
                            dtype=np.int64) for key in ("input_ids", "attention_mask")}


def torch_runner(model: nn.Module) -> Runner:
    """A runner around a PyTorch classifier (eval mode, ``inference_mode``, on the CPU)."""
    model.eval()

    def run(batch: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            out = model(**{k: torch.from_numpy(v) for k, v in batch.items()})
        return getattr(out, "logits", out).float().numpy()

    return run


def ort_runner(session: Any) -> Runner:
    """A runner around an ONNX Runtime ``InferenceSession`` whose first output is the logits."""
    names = {i.name for i in session.get_inputs()}

    def run(batch: dict[str, np.ndarray]) -> np.ndarray:
        return session.run(None, {k: v for k, v in batch.items() if k in names})[0]

    return run


def benchmark(runners: Mapping[str, Runner], single: Sequence[dict[str, np.ndarray]],
              batch: dict[str, np.ndarray], *, rounds: int = 5, batch_repeats: int = 3,
              warmup: int = 2, progress: bool = False) -> Any:
    """Latency at batch 1 and throughput at batch ``len(batch)``, interleaved over ``rounds``.

    In each round every runner, in an order rotated by one each round, (1) runs each of the
    batch-1 inputs in ``single`` once, timed one by one, giving that round's p50 and p95 latency,
    and (2) runs ``batch`` ``batch_repeats`` times, giving texts per second. The table reports the
    median over rounds of each number: a burst of load from elsewhere on the machine lands in one
    round of every runner instead of in all rounds of one. ``warmup`` untimed calls per runner come
    first. Returns a ``pandas.DataFrame`` indexed by runner name with ``p50_ms``, ``p95_ms`` and
    ``throughput`` (texts/s).
    """
    import pandas as pd

    rounds = require_int("rounds", rounds, minimum=1)
    batch_repeats = require_int("batch_repeats", batch_repeats, minimum=1)
    warmup = require_int("warmup", warmup, minimum=0)
    if not runners or not single:
        raise ValueError("benchmark needs at least one runner and one batch-1 input")
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name](single[0])
            runners[name](batch)
    per_round: dict[str, dict[str, list[float]]] = {n: {"p50_ms": [], "p95_ms": [], "throughput": []} for n in names}
    iterator: Iterable[int] = range(rounds)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="benchmark rounds")
    n_texts = len(batch["input_ids"])
    for r in iterator:
        for name in names[r % len(names):] + names[:r % len(names)]:
            run = runners[name]
            times = []
            for example in single:
                t0 = time.perf_counter()
                run(example)
                times.append(time.perf_counter() - t0)
            per_round[name]["p50_ms"].append(1000 * float(np.percentile(times, 50)))
            per_round[name]["p95_ms"].append(1000 * float(np.percentile(times, 95)))
            t0 = time.perf_counter()
            for _ in range(batch_repeats):
                run(batch)
            per_round[name]["throughput"].append(batch_repeats * n_texts / (time.perf_counter() - t0))
    return pd.DataFrame({n: {k: float(np.median(v)) for k, v in per_round[n].items()} for n in names}).T


def evaluate_runner(runner: Runner, loader: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy and macro-F1 of a runner over a loader of labelled batches (plus ``logits``, ``y_true``)."""
    from llmbook.train import macro_f1

    logits, labels = [], []
    for batch in loader:
        logits.append(np.asarray(runner(numpy_batch(batch))))
        labels.append(np.asarray(batch["labels"]))
    if not logits:
        raise ValueError("the loader yielded no batches")
    logits_all, y_true = np.concatenate(logits), np.concatenate(labels)
    y_pred = logits_all.argmax(axis=1)
    return {"accuracy": float(np.mean(y_pred == y_true)), "macro_f1": macro_f1(y_true, y_pred, logits_all.shape[1]),
            "logits": logits_all, "y_true": y_true}

# ---------------------------------------------------------------------------------------------
# Unstructured (magnitude) pruning
# ---------------------------------------------------------------------------------------------


def _prunable(model: nn.Module, exclude: Sequence[str]) -> list[tuple[str, nn.Linear]]:
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(part in name for part in exclude)]


def magnitude_prune(model: nn.Module, amount: float, *, exclude: Sequence[str] = ("classifier", "pooler"),
                    permanent: bool = False) -> list[str]:
    """Zero the fraction ``amount`` of smallest-magnitude weights over all linear layers together.

    Global L1 unstructured pruning (``prune.global_unstructured``): exactly
    ``round(amount * n)`` of the ``n`` prunable weights become zero, wherever they are smallest.
    Linear layers whose name contains a string of ``exclude`` (the new classification head, the
    unused pooler) are left alone. With ``permanent=False`` the pruning stays a mask
    (``weight = weight_orig * weight_mask``), so a fine-tune afterwards keeps the zeros; call
    :func:`make_pruning_permanent` before saving. Returns the names of the pruned modules.
    """
    from torch.nn.utils import prune

    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0 <= amount < 1:
        raise ValueError(f"amount must be a fraction in [0, 1), got {amount!r}")
    permanent = require_bool("permanent", permanent)
    targets = _prunable(model, exclude)
    if not targets:
        raise ValueError("the model has no linear layers to prune (all excluded?)")
    prune.global_unstructured([(m, "weight") for _, m in targets], pruning_method=prune.L1Unstructured,
                              amount=float(amount))
    if permanent:
        make_pruning_permanent(model)
    return [name for name, _ in targets]


def make_pruning_permanent(model: nn.Module) -> int:
    """Fold every pruning mask into its weight (``prune.remove``); returns how many were folded."""
    from torch.nn.utils import prune

    count = 0
    for module in model.modules():
        for name in [h.split("_orig")[0] for h, _ in list(module.named_parameters(recurse=False)) if h.endswith("_orig")]:
            prune.remove(module, name)
            count += 1
    return count


def sparsity(model: nn.Module, *, exclude: Sequence[str] = ("classifier", "pooler")) -> float:
    """Fraction of exactly-zero weights over the linear layers :func:`magnitude_prune` prunes."""
    zeros = total = 0
    for _, module in _prunable(model, exclude):
        zeros += int((module.weight == 0).sum())
        total += module.weight.numel()
    if total == 0:
        raise ValueError("the model has no prunable linear layers")
    return zeros / total

# ---------------------------------------------------------------------------------------------
# Structured pruning of attention heads
# ---------------------------------------------------------------------------------------------


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ``ModuleList`` of Transformer layers of a BERT-style model (``...encoder.layer``)."""
    for name, module in model.named_modules():
        if name.endswith("encoder.layer") and isinstance(module, nn.ModuleList):
            return module
    raise ValueError("no BERT-style encoder found (expected a module named '...encoder.layer')")


def _attention_parts(layer: nn.Module) -> tuple[nn.Module, nn.Linear]:
    attention = getattr(layer, "attention", None)
    self_attention = getattr(attention, "self", None)
    if self_attention is None or not all(hasattr(self_attention, n) for n in ("query", "key", "value")):
        raise ValueError("prune_heads supports BERT-style layers (layer.attention.self.query/key/value)")
    return self_attention, attention.output.dense


def head_importance(model: nn.Module, loader: Iterable[Mapping[str, torch.Tensor]], *,
                    max_batches: int | None = None) -> torch.Tensor:
    """Importance of every attention head, ``(layers, heads)``: first-order Taylor estimate of the loss change.

    For each head, the sum of ``|weight * gradient|`` over its rows of Q, K, V (and biases) and its
    columns of the output projection, accumulated over the batches: roughly how much the loss would
    rise if the head's weights were zeroed (Michel et al., 2019, score heads by the gradient of a
    head mask; this is the same first-order idea applied to the weights).
    """
    layers = encoder_layers(model)
    was_training = model.training
    model.eval()  # no dropout noise in the scores
    model.zero_grad(set_to_none=True)
    for index, batch in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        out = model(**{k: v for k, v in batch.items() if k != "labels"})
        logits = getattr(out, "logits", out)
        F.cross_entropy(logits.float(), batch["labels"]).backward()
    scores = []
    for layer in layers:
        attn, dense = _attention_parts(layer)
        size = attn.attention_head_size
        n_heads = attn.query.out_features // size
        row = torch.zeros(n_heads)
        for lin in (attn.query, attn.key, attn.value):
            if lin.weight.grad is None:
                raise ValueError("no gradients reached the attention weights: is the encoder frozen?")
            contrib = (lin.weight * lin.weight.grad).abs().sum(dim=1)
            if lin.bias is not None:
                contrib = contrib + (lin.bias * lin.bias.grad).abs()
            row += contrib.view(n_heads, size).sum(dim=1).detach()
        row += (dense.weight * dense.weight.grad).abs().sum(dim=0).view(n_heads, size).sum(dim=1).detach()
        scores.append(row)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return torch.stack(scores)


def heads_to_prune(importance: torch.Tensor, fraction: float) -> dict[int, list[int]]:
    """The globally least important ``fraction`` of heads, keeping at least one head in every layer."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction!r}")
    n_layers, n_heads = importance.shape
    budget = int(round(fraction * n_layers * n_heads))
    chosen: dict[int, list[int]] = {}
    for flat in torch.argsort(importance.flatten()).tolist():
        if budget == 0:
            break
        layer, head = divmod(flat, n_heads)
        if len(chosen.get(layer, [])) < n_heads - 1:
            chosen.setdefault(layer, []).append(head)
            budget -= 1
    return {layer: sorted(heads) for layer, heads in sorted(chosen.items())}


def _keep_rows(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    weight = linear.weight.detach().index_select(dim, index).clone()
    if dim == 0:
        new = nn.Linear(linear.in_features, len(index), bias=linear.bias is not None)
        if linear.bias is not None:
            new.bias.data = linear.bias.detach().index_select(0, index).clone()
    else:
        new = nn.Linear(len(index), linear.out_features, bias=linear.bias is not None)
        if linear.bias is not None:
            new.bias.data = linear.bias.detach().clone()
    new.weight.data = weight
    return new.to(linear.weight.device)


def prune_heads(model: nn.Module, heads: Mapping[int, Sequence[int]]) -> int:
    """Remove the given attention heads (``{layer: [head, ...]}``) from a BERT-style encoder, in place.

    The heads' rows of the query, key and value projections and their columns of the attention
    output projection are cut out, so the model has fewer parameters and does less work; the output
    of the remaining heads is unchanged. Every layer must keep at least one head. Heads are numbered
    as they are *now* (prune once, or renumber). Returns the number of parameters removed.
    """
    layers = encoder_layers(model)
    before = sum(p.numel() for p in model.parameters())
    for layer_index, remove in heads.items():
        layer_index = require_int("layer", layer_index, minimum=0, maximum=len(layers) - 1)
        attn, dense = _attention_parts(layers[layer_index])
        size = attn.attention_head_size
        n_heads = attn.query.out_features // size
        remove = sorted(set(int(h) for h in remove))
        if any(not 0 <= h < n_heads for h in remove):
            raise ValueError(f"layer {layer_index} has heads 0..{n_heads - 1}; got {remove}")
        if len(remove) >= n_heads:
            raise ValueError(f"cannot remove all {n_heads} heads of layer {layer_index}: keep at least one")
        if not remove:
            continue
        keep = torch.tensor([h * size + i for h in range(n_heads) if h not in remove for i in range(size)],
                            device=attn.query.weight.device)
        attn.query = _keep_rows(attn.query, keep, 0)
        attn.key = _keep_rows(attn.key, keep, 0)
        attn.value = _keep_rows(attn.value, keep, 0)
        layers[layer_index].attention.output.dense = _keep_rows(dense, keep, 1)
        attn.num_attention_heads = n_heads - len(remove)
        attn.all_head_size = attn.num_attention_heads * size
    return before - sum(p.numel() for p in model.parameters())

# ---------------------------------------------------------------------------------------------
# Quantisation and ONNX
# ---------------------------------------------------------------------------------------------


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers compute in int8 (dynamic quantisation, CPU only).

    Weights are stored as int8 with one scale per tensor; activations are quantised on the fly,
    batch by batch (hence *dynamic*); embeddings and LayerNorm stay fp32. The original is unchanged.
    """
    from torch.ao.quantization import quantize_dynamic

    import warnings

    with warnings.catch_warnings():
        # torch >= 2.10 announces the move of eager quantisation to torchao; the API still works.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        return quantize_dynamic(copy.deepcopy(model).cpu().eval(), {nn.Linear}, dtype=torch.qint8)


class _LogitsOnly(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return getattr(out, "logits", out)


def export_onnx(model: nn.Module, path: str | os.PathLike, *, seq_len: int = 16, opset: int = 17) -> Path:
    """Export a classifier to ONNX with inputs ``input_ids``, ``attention_mask`` and output ``logits``.

    Batch size and sequence length are dynamic axes. The file is written next to ``path`` and moved
    into place (``os.replace``): never a half-written model. Uses the TorchScript-based exporter,
    which handles BERT's masks without extra dependencies.
    """
    seq_len = require_int("seq_len", seq_len, minimum=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _LogitsOnly(copy.deepcopy(model).cpu().eval())
    ids = torch.ones(2, seq_len, dtype=torch.long)
    mask = torch.ones(2, seq_len, dtype=torch.long)
    tmp = path.with_name(f".{path.name}.tmp")
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "logits": {0: "batch"}}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings are not the reader's concern
        torch.onnx.export(wrapper, (ids, mask), str(tmp), input_names=["input_ids", "attention_mask"],
                          output_names=["logits"], dynamic_axes=axes, opset_version=opset, dynamo=False)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def onnx_session(path: str | os.PathLike, *, threads: int | None = None, spinning: bool = False) -> Any:
    """An ONNX Runtime CPU session with all graph optimisations; ``threads`` caps intra-op threads.

    ``spinning=False`` stops ONNX Runtime's worker threads from busy-waiting after each call. Spinning
    shaves microseconds off back-to-back calls on an idle machine, but on a shared CPU (or when
    PyTorch runs between calls, as in :func:`benchmark`) the spinning threads steal the cores the
    next computation needs.
    """
    import onnxruntime as ort

    if not Path(path).is_file():
        raise FileNotFoundError(f"no ONNX file at {path}: create it with export_onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not require_bool("spinning", spinning):
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = require_int("threads", threads, minimum=1)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def quantize_onnx_int8(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Dynamic int8 quantisation of an ONNX model's weights (``onnxruntime.quantization``)."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the quantiser logs a pre-processing hint at WARNING
    try:
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8)
    finally:
        logging.getLogger().setLevel(previous)
    os.replace(tmp, target)
    return target

# ---------------------------------------------------------------------------------------------
# Distillation
# ---------------------------------------------------------------------------------------------


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      labels: torch.Tensor | None = None, *, temperature: float = 2.0,
                      alpha: float = 0.5) -> torch.Tensor:
    """Hinton et al.'s distillation loss: soft-label KL at ``temperature`` mixed with hard-label CE.

    ``alpha * T**2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE(student, labels)``.
    The factor ``T**2`` keeps the soft term's gradients on the scale of the hard term's when ``T``
    changes. Without ``labels`` (or with ``alpha=1``) only the soft term remains.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    t = float(temperature)
    soft = F.kl_div(F.log_softmax(student_logits.float() / t, dim=-1), F.log_softmax(teacher_logits.float() / t, dim=-1),
                    reduction="batchmean", log_target=True) * t * t
    if labels is None or alpha == 1:
        return soft
    hard = F.cross_entropy(student_logits.float(), labels)
    return alpha * soft + (1 - alpha) * hard


def truncated_student(model: nn.Module, keep_layers: Sequence[int]) -> nn.Module:
    """A copy of a BERT-style classifier keeping only the encoder layers ``keep_layers``.

    The student starts from the teacher's own weights (embeddings, the kept layers, the head), as
    DistilBERT started from every other layer of BERT: much better than a random start.
    """
    student = copy.deepcopy(model)
    layers = encoder_layers(student)
    keep = sorted(set(int(i) for i in keep_layers))
    if not keep or any(not 0 <= i < len(layers) for i in keep):
        raise ValueError(f"keep_layers must name layers in 0..{len(layers) - 1}, got {list(keep_layers)}")
    kept = nn.ModuleList([layers[i] for i in keep])
    for name, module in student.named_modules():
        if name.endswith("encoder") and getattr(module, "layer", None) is layers:
            module.layer = kept
    for module in student.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "num_hidden_layers"):
            config.num_hidden_layers = len(keep)
    for index, layer in enumerate(kept):  # attention layers know their index (for caches)
        for sub in layer.modules():
            if hasattr(sub, "layer_idx"):
                sub.layer_idx = index
    return student


def distill(student: nn.Module, teacher: nn.Module, loader: Iterable[Mapping[str, torch.Tensor]], *,
            epochs: int = 1, lr: float = 1e-4, temperature: float = 2.0, alpha: float = 0.5,
            warmup_ratio: float = 0.1, max_grad_norm: float = 1.0, progress: bool = True) -> list[float]:
    """Train ``student`` on ``loader`` with :func:`distillation_loss` against ``teacher`` (frozen, eval mode).

    The book's recipe of the fine-tuning chapter (AdamW without decay on biases and LayerNorm,
    linear warmup and decay, gradient clipping), on the CPU. Returns the loss of every step.
    """
    from llmbook.train import linear_warmup_schedule, make_optimizer

    epochs = require_int("epochs", epochs, minimum=1)
    progress = require_bool("progress", progress)
    total = epochs * len(loader)  # type: ignore[arg-type]
    optimizer = make_optimizer(student, lr=lr)
    schedule = linear_warmup_schedule(optimizer, int(warmup_ratio * total), total)
    teacher.eval()
    student.train()
    losses: list[float] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="distillation")
    for _ in range(epochs):
        for batch in loader:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            with torch.no_grad():
                teacher_logits = getattr(teacher(**inputs), "logits", None)
            logits = student(**inputs).logits
            loss = distillation_loss(logits, teacher_logits, batch["labels"], temperature=temperature, alpha=alpha)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"non-finite distillation loss at step {len(losses) + 1}: lower lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), max_grad_norm)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    student.eval()
    return losses
