"""Training at scale: memory meters, activation checkpointing, tensor-parallel layers, pipeline schedules.

Taught in the training-at-scale chapter (``notebooks/12_training_at_scale.ipynb``); the distributed
training script that uses these pieces is :mod:`llmbook.dist_train`.

Memory
    :func:`tensor_bytes` and :func:`model_state_bytes` count what a model and its optimizer hold;
    :class:`SavedTensorsMeter` counts what autograd keeps for the backward pass (the activations);
    :class:`MemoryMeter` follows every tensor PyTorch operations allocate and frees inside a block of
    code and reports the peak; :func:`peak_rss_bytes` is the operating system's count for the whole
    process.
Activation checkpointing
    :class:`CheckpointedBlock` and :func:`checkpoint_blocks` keep only a block's input and recompute
    the rest during the backward pass (``torch.utils.checkpoint``).
Tensor parallelism (Megatron-LM)
    :class:`ColumnParallelLinear` splits a linear layer's output features across processes,
    :class:`RowParallelLinear` its input features; :class:`ParallelMLP` chains them so that an MLP
    needs one all-reduce forward and one backward. With one process they are ordinary linear layers.
    :func:`count_communication` records every collective they call; :func:`ring_allreduce_bytes`
    and :func:`megatron_mlp_comm_values` give the volume on paper.
Pipeline parallelism (GPipe)
    :func:`gpipe_schedule` simulates the micro-batch timeline of a pipeline, :func:`bubble_fraction`
    is its idle share ``(p - 1) / (m + p - 1)``.

Run under ``torchrun --nproc_per_node=2 -m llmbook.parallel`` the module checks that the tensor-parallel
MLP equals the single-process one and writes the result (see :func:`main`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.checkpoint import checkpoint
from torch.utils.weak import WeakIdKeyDictionary

from llmbook.checks import require_int
from llmbook.runtime import write_atomic  # exported here too: dist_train and the tensor-parallel check write results with it

# ----------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------


def _local(t: torch.Tensor) -> torch.Tensor:
    """The part of ``t`` this process holds: a ``DTensor``'s local shard, any other tensor itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def tensor_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of memory behind ``tensors``: each storage counted once, however many views share it.

    Non-tensors (``None``, ints, ...) are skipped. A sharded ``DTensor`` (FSDP) counts only the
    shard held by this process.
    """
    seen: dict[int, int] = {}
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        storage = _local(t).untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def model_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes this process holds for ``parameters``, ``gradients`` and ``optimizer`` states, and their ``total``.

    Measured from the tensors themselves (shared parameters counted once, FSDP shards as held
    locally). Gradients count only where they exist (after a backward pass, before
    ``zero_grad(set_to_none=True)``); AdamW's states exist after the first ``step``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = list(model.parameters())
    state: dict[str, int] = {
        "parameters": tensor_bytes(params),
        "gradients": tensor_bytes(p.grad for p in params),
        "optimizer": 0,
    }
    if optimizer is not None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        state["optimizer"] = tensor_bytes(v for s in optimizer.state.values() for v in s.values())
    state["total"] = sum(state.values())
    return state


class SavedTensorsMeter:
    """Counts the bytes autograd saves for the backward pass inside a ``with`` block: the activations.

    Uses ``torch.autograd.graph.saved_tensors_hooks``: every tensor an operation keeps for its
    gradient passes through the hook once. Storages are counted once (a view of a saved tensor is
    free), and the storages of ``exclude`` (usually ``model.parameters()``, which a linear layer
    saves to compute its input's gradient) are not activations and are left out.

        >>> with SavedTensorsMeter(exclude=model.parameters()) as meter:
        ...     loss = model(x, y)[1]
        >>> meter.bytes

    What a checkpointed region keeps is not a saved tensor of the outer graph: measure that with
    :class:`MemoryMeter`.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._excluded = {_local(t).untyped_storage().data_ptr() for t in exclude}
        self._storages: dict[int, int] = {}
        self._hooks: Any = None

    @property
    def bytes(self) -> int:
        """Bytes of distinct storages saved so far."""
        return sum(self._storages.values())

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self._excluded:
            self._storages[storage.data_ptr()] = storage.nbytes()
        return t

    def __enter__(self) -> "SavedTensorsMeter":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


class MemoryMeter(TorchDispatchMode):
    """Peak bytes of tensor memory allocated by PyTorch operations inside a ``with`` block, on any device.

    A *dispatch mode* sees the output of every operation that runs inside the block (the backward
    pass included, and the recomputation of checkpointed regions). Each new storage (an output that
    shares no memory with the operation's inputs, so not a view or an in-place result) is added to
    :attr:`current` and a weak reference subtracts it again when the storage is freed; :attr:`peak`
    is the largest :attr:`current` seen. Memory that existed before the block (weights, optimizer
    states) is not counted: the meter measures what a step adds on top of it. Allocator caches and
    fragmentation are not counted either, so on a GPU ``torch.cuda.max_memory_allocated`` agrees
    with it up to the allocator's rounding.

        >>> with MemoryMeter() as meter:
        ...     model(x, y)[1].backward()
        >>> meter.peak
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._sizes: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._refs: set[weakref.ref] = set()

    def _freed(self, nbytes: int, ref: weakref.ref) -> None:
        self.current -= nbytes
        self._refs.discard(ref)

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        if storage in self._sizes:  # a view, or an in-place result: no new memory
            return
        nbytes = storage.nbytes()
        self._sizes[storage] = nbytes
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        self._refs.add(weakref.ref(storage, lambda ref, n=nbytes: self._freed(n, ref)))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (PyTorch's protocol)
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        # An output that shares memory with an input (a view such as a weight's transpose, or an
        # in-place result) is no new allocation, even if that memory was allocated before the block.
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and not t.is_meta}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and not t.is_meta and t.untyped_storage().data_ptr() not in inputs:
                self._track(t)
        return out


def peak_rss_bytes() -> int | None:
    """Largest resident memory of this process so far, in bytes (the OS's count), or ``None`` off Unix.

    It includes the Python interpreter and PyTorch's libraries (a few hundred MB) and never goes
    down, so compare it between processes that did the same thing differently.
    """
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes, Linux KiB


# ----------------------------------------------------------------------------------------------
# Activation checkpointing
# ----------------------------------------------------------------------------------------------


class CheckpointedBlock(nn.Module):
    """Wraps a block so that its forward pass keeps only its input; the backward pass recomputes the rest.

    ``forward(x, *args)`` calls ``torch.utils.checkpoint.checkpoint(block, x, *args,
    use_reentrant=False)`` while training with gradients enabled, and the block directly otherwise
    (evaluation keeps nothing for a backward pass anyway). The results and gradients equal the
    unwrapped block's; the price is one more forward pass of the block.
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        if not isinstance(block, nn.Module):
            raise TypeError(f"block must be a torch.nn.Module, got {type(block).__name__}")
        self.block = block

    def forward(self, x: torch.Tensor, *args: Any) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            return checkpoint(self.block, x, *args, use_reentrant=False)
        return self.block(x, *args)


def checkpoint_blocks(blocks: nn.ModuleList) -> nn.ModuleList:
    """Wrap every block of ``blocks`` (e.g. ``model.blocks`` of a GPT) in a :class:`CheckpointedBlock`, in place.

    Blocks that are already wrapped stay as they are, so calling it twice is harmless. Returns ``blocks``.
    """
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"blocks must be an nn.ModuleList such as model.blocks, got {type(blocks).__name__}")
    for i, block in enumerate(blocks):
        if not isinstance(block, CheckpointedBlock):
            blocks[i] = CheckpointedBlock(block)
    return blocks


# ----------------------------------------------------------------------------------------------
# Tensor parallelism
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommEvent:
    """One collective call: which (``all_reduce``, ``all_gather``), in which pass, on how many values."""

    op: str
    direction: str  # "forward" or "backward"
    numel: int
    bytes_per_value: int


_COMM_LOGS: list[list[CommEvent]] = []


@contextlib.contextmanager
def count_communication() -> Iterator[list[CommEvent]]:
    """Record every collective the tensor-parallel layers call inside the block, as :class:`CommEvent` s.

    ``numel`` is the size of the tensor handed to the collective (the logical volume);
    :func:`ring_allreduce_bytes` turns an all-reduce's size into the bytes each process sends.
    """
    log: list[CommEvent] = []
    _COMM_LOGS.append(log)
    try:
        yield log
    finally:
        _COMM_LOGS.remove(log)


def _record(op: str, direction: str, t: torch.Tensor) -> None:
    for log in _COMM_LOGS:
        log.append(CommEvent(op, direction, t.numel(), t.element_size()))


def _world() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(t: torch.Tensor, direction: str) -> torch.Tensor:
    import torch.distributed as dist

    if _world()[1] == 1:
        return t
    t = t.contiguous().clone()
    _record("all_reduce", direction, t)
    dist.all_reduce(t)
    return t


def _all_gather_last(t: torch.Tensor, direction: str) -> torch.Tensor:
    import torch.distributed as dist

    world = _world()[1]
    if world == 1:
        return t
    t = t.contiguous()
    parts = [torch.empty_like(t) for _ in range(world)]
    _record("all_gather", direction, t)
    dist.all_gather(parts, t)
    return torch.cat(parts, dim=-1)


def _my_slice(t: torch.Tensor) -> torch.Tensor:
    rank, world = _world()
    size = t.shape[-1] // world
    return t[..., rank * size : (rank + 1) * size].contiguous()


class _CopyToParallel(torch.autograd.Function):
    """Megatron's *f*: identity forward; all-reduce of the input's gradient backward."""

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        return x

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        return _all_reduce(grad, "backward")


class _ReduceFromParallel(torch.autograd.Function):
    """Megatron's *g*: all-reduce (sum of the partial results) forward; identity backward."""

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        return _all_reduce(x, "forward")

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        return grad


class _GatherFromParallel(torch.autograd.Function):
    """All-gather along the last dimension forward; keep this process's slice of the gradient backward."""

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        return _all_gather_last(x, "forward")

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        return _my_slice(grad)


class _ScatterToParallel(torch.autograd.Function):
    """Keep this process's slice of the last dimension forward; all-gather the gradient backward."""

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        return _my_slice(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        return _all_gather_last(grad, "backward")


def _check_split(name: str, size: int, world_size: int) -> None:
    if size % world_size:
        raise ValueError(
            f"{name}={size} is not divisible by the {world_size} processes: every process must hold an equal "
            f"slice; pick a size that is a multiple of {world_size}"
        )


class ColumnParallelLinear(nn.Module):
    """A linear layer whose *output* features are split across processes (weight split by rows).

    Process ``r`` of ``p`` holds rows ``r·out/p … (r+1)·out/p`` of the weight (and of the bias) and
    computes that slice of the output from the full input: ``y_r = x W_rᵀ + b_r``. No
    communication is needed forward; backward, the input's gradient is the sum of every process's
    contribution (an all-reduce). ``gather_output=True`` all-gathers the slices into the full
    output; :class:`ParallelMLP` keeps them split and feeds them to a :class:`RowParallelLinear`.

    The rank and the number of processes are the default process group's (0 and 1 without one,
    which makes this an ordinary ``nn.Linear``).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, gather_output: bool = False) -> None:
        super().__init__()
        in_features = require_int("in_features", in_features, minimum=1)
        out_features = require_int("out_features", out_features, minimum=1)
        self.rank, self.world_size = _world()
        _check_split("out_features", out_features, self.world_size)
        self.in_features, self.out_features = in_features, out_features
        self.gather_output = bool(gather_output)
        local = out_features // self.world_size
        self.weight = nn.Parameter(torch.empty(local, in_features))
        self.bias = nn.Parameter(torch.zeros(local)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, gather_output: bool = False) -> "ColumnParallelLinear":
        """This process's slice of a full ``nn.Linear`` (the same on every process, e.g. seeded)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, gather_output=gather_output)
        rows = slice(layer.rank * layer.weight.shape[0], (layer.rank + 1) * layer.weight.shape[0])
        with torch.no_grad():
            layer.weight.copy_(linear.weight[rows])
            if linear.bias is not None:
                layer.bias.copy_(linear.bias[rows])
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input has {x.shape[-1]} features, the layer expects {self.in_features}")
        y = F.linear(_CopyToParallel.apply(x), self.weight, self.bias)
        return _GatherFromParallel.apply(y) if self.gather_output else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features} "
                f"(this process: {self.weight.shape[0]}), rank={self.rank}/{self.world_size}")


class RowParallelLinear(nn.Module):
    """A linear layer whose *input* features are split across processes (weight split by columns).

    Process ``r`` holds columns ``r·in/p … (r+1)·in/p`` of the weight and computes a partial
    result from its slice of the input, ``x_r W_rᵀ``; the full output is their sum, taken by an
    all-reduce, plus the bias (held whole by every process). With ``input_is_parallel=True`` (the
    default, as after a :class:`ColumnParallelLinear`) the input already is this process's slice;
    otherwise the layer takes its slice of the full input itself.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 input_is_parallel: bool = True) -> None:
        super().__init__()
        in_features = require_int("in_features", in_features, minimum=1)
        out_features = require_int("out_features", out_features, minimum=1)
        self.rank, self.world_size = _world()
        _check_split("in_features", in_features, self.world_size)
        self.in_features, self.out_features = in_features, out_features
        self.input_is_parallel = bool(input_is_parallel)
        self.weight = nn.Parameter(torch.empty(out_features, in_features // self.world_size))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, input_is_parallel: bool = True) -> "RowParallelLinear":
        """This process's slice of a full ``nn.Linear`` (the same on every process, e.g. seeded)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    input_is_parallel=input_is_parallel)
        width = layer.weight.shape[1]
        with torch.no_grad():
            layer.weight.copy_(linear.weight[:, layer.rank * width : (layer.rank + 1) * width])
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = self.weight.shape[1] if self.input_is_parallel else self.in_features
        if x.shape[-1] != expected:
            raise ValueError(
                f"input has {x.shape[-1]} features, this process expects {expected} "
                f"({'its slice' if self.input_is_parallel else 'the full input'}); "
                f"check input_is_parallel"
            )
        if not self.input_is_parallel:
            x = _ScatterToParallel.apply(x)
        y = _ReduceFromParallel.apply(F.linear(x, self.weight))
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features} (this process: {self.weight.shape[1]}), "
                f"out_features={self.out_features}, rank={self.rank}/{self.world_size}")


class ParallelMLP(nn.Module):
    """The Megatron-LM MLP: column-parallel ``Linear(d, 4d)`` → GELU → row-parallel ``Linear(4d, d)``.

    The hidden activations stay split (GELU acts element-wise, so each process applies it to its
    own slice), so the whole MLP communicates once forward (the row layer's all-reduce) and once
    backward (the column layer's), each on a ``(batch, seq, d)`` tensor.
    """

    def __init__(self, fc: ColumnParallelLinear, proj: RowParallelLinear) -> None:
        super().__init__()
        if not isinstance(fc, ColumnParallelLinear) or fc.gather_output:
            raise TypeError("fc must be a ColumnParallelLinear with gather_output=False")
        if not isinstance(proj, RowParallelLinear) or not proj.input_is_parallel:
            raise TypeError("proj must be a RowParallelLinear with input_is_parallel=True")
        if fc.out_features != proj.in_features:
            raise ValueError(f"fc has {fc.out_features} outputs but proj expects {proj.in_features} inputs")
        self.fc, self.proj = fc, proj

    @classmethod
    def from_mlp(cls, fc: nn.Linear, proj: nn.Linear) -> "ParallelMLP":
        """This process's half (third, ...) of the MLP ``proj(gelu(fc(x)))`` with full layers ``fc`` and ``proj``."""
        return cls(ColumnParallelLinear.from_linear(fc), RowParallelLinear.from_linear(proj))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


def ring_allreduce_bytes(n_values: int, world_size: int, bytes_per_value: int = 4) -> float:
    """Bytes each process sends in a ring all-reduce of ``n_values`` values: ``2·(p−1)/p · n · bytes``.

    A ring all-reduce is a reduce-scatter followed by an all-gather, each moving ``(p−1)/p`` of the
    data per process, so the cost per process barely grows with ``p``. One process sends nothing.
    """
    require_int("n_values", n_values, minimum=0)
    require_int("world_size", world_size, minimum=1)
    require_int("bytes_per_value", bytes_per_value, minimum=1)
    return 2 * (world_size - 1) / world_size * n_values * bytes_per_value


def megatron_mlp_comm_values(batch: int, seq_len: int, d_model: int) -> dict[str, int]:
    """Values all-reduced by one tensor-parallel MLP per training step: ``batch·seq_len·d_model`` each way.

    Forward, the row-parallel layer sums its partial outputs; backward, the column-parallel layer
    sums its partial input gradients. (Attention split by heads adds the same again per layer.)
    """
    n = 1
    for name, value in (("batch", batch), ("seq_len", seq_len), ("d_model", d_model)):
        n *= require_int(name, value, minimum=1)
    return {"forward": n, "backward": n}


def data_parallel_comm_bytes(n_params: int, world_size: int, bytes_per_value: int = 4,
                             *, sharded: bool = False) -> float:
    """Bytes each process sends per training step to keep data-parallel replicas in sync.

    DDP all-reduces the gradients: ``2·(p−1)/p·N`` values. Fully sharded data parallelism (FSDP,
    ZeRO-3) all-gathers the parameters before the forward pass and again before the backward pass
    and reduce-scatters the gradients: ``3·(p−1)/p·N`` values, 1.5 times DDP's.
    """
    require_int("n_params", n_params, minimum=0)
    require_int("world_size", world_size, minimum=1)
    require_int("bytes_per_value", bytes_per_value, minimum=1)
    factor = 3 if sharded else 2
    return factor * (world_size - 1) / world_size * n_params * bytes_per_value


# ----------------------------------------------------------------------------------------------
# Pipeline parallelism
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineTask:
    """One stage working on one micro-batch: ``kind`` is ``"F"`` (forward) or ``"B"`` (backward)."""

    stage: int
    microbatch: int
    kind: str
    start: float
    end: float


def gpipe_schedule(n_stages: int, n_microbatches: int, forward_time: float = 1.0,
                   backward_time: float = 2.0) -> list[PipelineTask]:
    """Simulate one GPipe training step: every task starts as soon as its inputs and its stage are ready.

    Stage ``s`` runs the forward pass of micro-batch ``m`` after stage ``s−1`` has (its input), and
    its own earlier micro-batches; after all forward passes (GPipe's flush) the backward passes run
    from the last stage to the first, latest micro-batch first, each after the stage above has
    passed the gradient down. Times are in arbitrary units; a backward pass usually costs about
    twice a forward pass.
    """
    p = require_int("n_stages", n_stages, minimum=1)
    m = require_int("n_microbatches", n_microbatches, minimum=1)
    for name, value in (("forward_time", forward_time), ("backward_time", backward_time)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    free = [0.0] * p  # when each stage finishes its last task
    done: dict[tuple[str, int, int], float] = {}
    tasks = []
    for mb in range(m):
        for s in range(p):
            start = max(free[s], done.get(("F", s - 1, mb), 0.0))
            free[s] = done["F", s, mb] = start + forward_time
            tasks.append(PipelineTask(s, mb, "F", start, free[s]))
    for mb in reversed(range(m)):
        for s in reversed(range(p)):
            start = max(free[s], done.get(("B", s + 1, mb), 0.0))
            free[s] = done["B", s, mb] = start + backward_time
            tasks.append(PipelineTask(s, mb, "B", start, free[s]))
    return tasks


def simulated_bubble_fraction(tasks: Sequence[PipelineTask]) -> float:
    """Share of stage-time spent idle in a schedule: ``1 − busy / (stages × makespan)``."""
    if not tasks:
        raise ValueError("tasks is empty: pass the list gpipe_schedule returns")
    stages = {t.stage for t in tasks}
    makespan = max(t.end for t in tasks) - min(t.start for t in tasks)
    busy = sum(t.end - t.start for t in tasks)
    return 1.0 - busy / (len(stages) * makespan)


def bubble_fraction(n_stages: int, n_microbatches: int) -> float:
    """GPipe's idle share ``(p − 1) / (m + p − 1)`` for ``p`` stages and ``m`` micro-batches."""
    p = require_int("n_stages", n_stages, minimum=1)
    m = require_int("n_microbatches", n_microbatches, minimum=1)
    return (p - 1) / (m + p - 1)


# ----------------------------------------------------------------------------------------------
# Launch environment and atomic writes (shared with llmbook.dist_train)
# ----------------------------------------------------------------------------------------------

DIST_ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""The environment variables torchrun sets for every process it starts."""


class LaunchError(RuntimeError):
    """A program was started the wrong way (not under torchrun, bad options); the message is one line."""


def distributed_env(program: str = "llmbook.dist_train", example_args: str = "") -> dict[str, str]:
    """The variables torchrun sets for this process (``RANK``, ``WORLD_SIZE``, ...).

    Raises a one-line :class:`LaunchError` that names the missing ones and the torchrun command to use.
    """
    missing = [name for name in DIST_ENV_VARS if not os.environ.get(name)]
    if missing:
        raise LaunchError(
            f"{program} must be started by torchrun, which sets {', '.join(DIST_ENV_VARS)} (missing: "
            f"{', '.join(missing)}); run: torchrun --nproc_per_node=2 --master_addr=127.0.0.1 "
            f"--master_port=29500 -m {program}{' ' + example_args if example_args else ''}"
        )
    return {name: os.environ[name] for name in DIST_ENV_VARS}


def shown_path(path: str | Path) -> str:
    """``path`` relative to the working directory when possible, so that logs a notebook keeps show no local paths."""
    try:
        return os.path.relpath(path)
    except ValueError:  # on another drive (Windows)
        return str(path)


# ----------------------------------------------------------------------------------------------
# The tensor-parallel check, run under torchrun
# ----------------------------------------------------------------------------------------------


def tensor_parallel_check(batch: int = 4, seq_len: int = 8, d_model: int = 32, seed: int = 0) -> dict[str, Any]:
    """Compare the tensor-parallel MLP with the single-process MLP on every process of the group.

    Every process builds the same full MLP and input from ``seed``, takes its slices
    (:meth:`ParallelMLP.from_mlp`), runs forward and backward of ``sum(y²)`` through both and
    returns the largest differences (output, input gradient, weight and bias gradients against the
    matching slices), the collectives counted by :func:`count_communication`, the output, and this
    process's output of the column-parallel layer alone (its slice of ``fc(x)``). Differences are
    relative: the largest absolute difference divided by the reference's largest magnitude.
    """
    batch = require_int("batch", batch, minimum=1)
    seq_len = require_int("seq_len", seq_len, minimum=1)
    d_model = require_int("d_model", d_model, minimum=1)
    rank, world = _world()
    _check_split("4·d_model", 4 * d_model, world)
    gen = torch.Generator().manual_seed(seed)
    fc, proj = nn.Linear(d_model, 4 * d_model), nn.Linear(4 * d_model, d_model)
    with torch.no_grad():
        for p in (*fc.parameters(), *proj.parameters()):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    x = torch.randn(batch, seq_len, d_model, generator=gen)

    x_ref = x.clone().requires_grad_(True)
    y_ref = proj(F.gelu(fc(x_ref)))
    y_ref.pow(2).sum().backward()

    mlp = ParallelMLP.from_mlp(fc, proj)
    x_tp = x.clone().requires_grad_(True)
    with count_communication() as log:
        y_tp = mlp(x_tp)
        y_tp.pow(2).sum().backward()
    rows = slice(rank * mlp.fc.weight.shape[0], (rank + 1) * mlp.fc.weight.shape[0])

    def relative(a: torch.Tensor, b: torch.Tensor) -> float:
        with torch.no_grad():
            return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))

    with torch.no_grad():
        column_slice = mlp.fc(x)
    return {
        "rank": rank,
        "world_size": world,
        "relative_differences": {
            "output": relative(y_tp, y_ref),
            "input_grad": relative(x_tp.grad, x_ref.grad),
            "fc_weight_grad": relative(mlp.fc.weight.grad, fc.weight.grad[rows]),
            "fc_bias_grad": relative(mlp.fc.bias.grad, fc.bias.grad[rows]),
            "proj_weight_grad": relative(mlp.proj.weight.grad, proj.weight.grad[:, rows]),
            "proj_bias_grad": relative(mlp.proj.bias.grad, proj.bias.grad),
        },
        "communication": [asdict(e) for e in log],
        "output": y_tp.detach().tolist(),
        "column_output_slice": column_slice.tolist(),
    }


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``python -m llmbook.parallel`` (run it under torchrun)."""
    parser = argparse.ArgumentParser(
        prog="python -m llmbook.parallel",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Check that the tensor-parallel (Megatron) MLP equals the single-process MLP:\n\n"
                    "  torchrun --nproc_per_node=2 --master_addr=127.0.0.1 --master_port=29500 \\\n"
                    "      -m llmbook.parallel --d-model 32\n\n"
                    "Results go to <run folder>/<--out>/result.json (run folder: ./runs or $LLMBOOK_RUN_DIR).",
    )
    parser.add_argument("--batch", type=positive_int_arg, default=4, help="sequences in the input (default 4)")
    parser.add_argument("--seq-len", type=positive_int_arg, default=8, help="positions per sequence (default 8)")
    parser.add_argument("--d-model", type=positive_int_arg, default=32,
                        help="model width; the hidden layer is 4x (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the input (default 0)")
    parser.add_argument("--out", default="tensor_parallel",
                        help="folder name under the run folder (llmbook.runtime.run_dir) for result.json")
    return parser


def positive_int_arg(text: str) -> int:
    """An argparse ``type`` for options that must be positive integers (shared with ``llmbook.dist_train``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """``torchrun -m llmbook.parallel``: run :func:`tensor_parallel_check` on every process; rank 0 writes JSON.

    The file, ``<run folder>/<--out>/result.json``, holds every process's result. Exits with status
    1 if any relative difference exceeds 1e-5, and 2 with a one-line message on bad options or when not
    started by torchrun.
    """
    import torch.distributed as dist

    from llmbook.runtime import run_dir

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        distributed_env("llmbook.parallel")
        folder = run_dir(args.out)
    except (LaunchError, ValueError, TypeError, NotADirectoryError) as err:  # run_dir: a bad --out
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    if 4 * args.d_model % int(os.environ["WORLD_SIZE"]):
        print(f"{parser.prog}: error: 4·d_model={4 * args.d_model} is not divisible by the "
              f"{os.environ['WORLD_SIZE']} processes", file=sys.stderr)
        return 2
    dist.init_process_group("gloo")
    try:
        result = tensor_parallel_check(args.batch, args.seq_len, args.d_model, args.seed)
        results: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(results, result)
        worst = max(v for r in results for v in r["relative_differences"].values())
        if dist.get_rank() == 0:
            path = write_atomic(folder / "result.json", json.dumps({"processes": results}, indent=1).encode())
            print(f"tensor-parallel MLP on {dist.get_world_size()} processes: largest relative difference from "
                  f"the single-process MLP {worst:.1e}; wrote {shown_path(path)}")
        return 0 if worst <= 1e-5 else 1
    finally:
        dist.destroy_process_group()


__all__ = [
    "CheckpointedBlock",
    "ColumnParallelLinear",
    "CommEvent",
    "DIST_ENV_VARS",
    "LaunchError",
    "MemoryMeter",
    "ParallelMLP",
    "PipelineTask",
    "RowParallelLinear",
    "SavedTensorsMeter",
    "bubble_fraction",
    "checkpoint_blocks",
    "count_communication",
    "data_parallel_comm_bytes",
    "distributed_env",
    "gpipe_schedule",
    "megatron_mlp_comm_values",
    "model_state_bytes",
    "peak_rss_bytes",
    "ring_allreduce_bytes",
    "shown_path",
    "simulated_bubble_fraction",
    "tensor_bytes",
    "tensor_parallel_check",
    "write_atomic",
]

if __name__ == "__main__":
    sys.exit(main())
