"""Data-parallel training of the GPT chapter's model: one process, DDP or FSDP, from one script.

Taught in the training-at-scale chapter (``notebooks/12_training_at_scale.ipynb``)::

    python -m llmbook.dist_train --mode single --batch-size 16 --out single
    torchrun --nproc_per_node=2 --master_addr=127.0.0.1 --master_port=29500 \\
        -m llmbook.dist_train --mode ddp --batch-size 8 --out ddp
    torchrun ... -m llmbook.dist_train --mode fsdp --batch-size 8 --out fsdp

Every process builds the same GPT (:mod:`llmbook.gpt`, same seed) and, at every step, draws the
same *global* batch of ``processes × --batch-size`` Tiny Shakespeare windows; process ``r`` trains
on rows ``r·B … (r+1)·B − 1`` of it. So ``--mode single --batch-size 16`` and two processes of
``--mode ddp --batch-size 8`` see exactly the same data, and end with the same parameters up to
floating-point rounding: DDP averages the gradients of equal-sized local batches, which is the
gradient of the mean loss over the global batch.

* ``single``: plain PyTorch in one process (no ``torch.distributed``).
* ``ddp``: ``torch.nn.parallel.DistributedDataParallel`` — full replicas, gradients all-reduced.
* ``fsdp``: ``torch.distributed.fsdp.fully_shard`` (FSDP2) on every block and on the model —
  parameters, gradients and AdamW states sharded across the processes.

Only rank 0 prints and writes. Under the run folder (:func:`llmbook.runtime.run_dir`, git-ignored)
``<--out>/result.json`` holds the options, the loss of every step (the global batch's mean),
throughput, every process's memory and the SHA-256 of ``<--out>/params.pt``, the final full
parameters. Both files are written atomically. :func:`launch` starts the script (or any module)
under torchrun on the loopback interface with a time limit, as the chapter and the tests do.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from llmbook import gpt
from llmbook.parallel import (
    LaunchError,
    distributed_env,
    model_state_bytes,
    peak_rss_bytes,
    positive_int_arg,
    shown_path,
    write_atomic,
)
from llmbook.runtime import free_port

MODES = ("single", "ddp", "fsdp")
PROG = "llmbook.dist_train"


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (``python -m llmbook.dist_train --help``)."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {PROG}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train the GPT chapter's model on Tiny Shakespeare in one process (--mode single)\n"
                    "or data-parallel in several processes started by torchrun (--mode ddp or fsdp):\n\n"
                    f"  python -m {PROG} --mode single --batch-size 16\n"
                    "  torchrun --nproc_per_node=2 --master_addr=127.0.0.1 --master_port=29500 \\\n"
                    f"      -m {PROG} --mode ddp --batch-size 8\n\n"
                    "Results go to <run folder>/<--out>/result.json and params.pt (run folder: ./runs\n"
                    "or $LLMBOOK_RUN_DIR).",
    )
    parser.add_argument("--mode", choices=MODES, default="single",
                        help="single: one process; ddp: DistributedDataParallel; fsdp: fully_shard (default single)")
    parser.add_argument("--steps", type=positive_int_arg, default=20, help="optimizer steps (default 20)")
    parser.add_argument("--warmup-steps", type=int, default=2,
                        help="first steps left out of the throughput measurement (default 2)")
    parser.add_argument("--batch-size", type=positive_int_arg, default=8,
                        help="windows per process and step; the global batch is processes x this (default 8)")
    parser.add_argument("--block-size", type=positive_int_arg, default=64, help="tokens per window (default 64)")
    parser.add_argument("--n-layer", type=positive_int_arg, default=4, help="Transformer blocks (default 4)")
    parser.add_argument("--n-head", type=positive_int_arg, default=4, help="attention heads (default 4)")
    parser.add_argument("--n-embd", type=positive_int_arg, default=128, help="model width (default 128)")
    parser.add_argument("--lr", type=_non_negative_float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    parser.add_argument("--grad-clip", type=_non_negative_float, default=1.0,
                        help="clip the gradient norm to this; 0 turns clipping off (default 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and of the batches (default 0)")
    parser.add_argument("--threads", type=positive_int_arg, default=None,
                        help="torch threads per process (default: as set by OMP_NUM_THREADS; torchrun sets 1)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cpu (gloo) or cuda (nccl, one GPU per process) (default cpu)")
    parser.add_argument("--log-every", type=positive_int_arg, default=10, help="print the loss every N steps (default 10)")
    parser.add_argument("--out", default=None,
                        help="folder name under the run folder for result.json and params.pt (default dist_train_MODE)")
    return parser


# ----------------------------------------------------------------------------------------------
# Data and model
# ----------------------------------------------------------------------------------------------


def char_data() -> tuple[torch.Tensor, int]:
    """Tiny Shakespeare's training split as character ids, and the vocabulary size (as in the GPT chapter)."""
    from llmbook.data import load_dataset

    train_text = load_dataset("tiny_shakespeare", "train")
    chars = sorted(set(train_text + load_dataset("tiny_shakespeare", "validation")))
    stoi = {ch: i for i, ch in enumerate(chars)}
    return torch.tensor([stoi[ch] for ch in train_text], dtype=torch.long), len(chars)


def global_batch(data: torch.Tensor, n_processes: int, batch_size: int, block_size: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The step's global batch, ``n_processes·batch_size`` windows, identical on every process."""
    return gpt.get_batch(data, n_processes * batch_size, block_size, generator)


def local_rows(t: torch.Tensor, rank: int, batch_size: int) -> torch.Tensor:
    """Process ``rank``'s share of a global batch: rows ``rank·batch_size … (rank+1)·batch_size − 1``."""
    return t[rank * batch_size : (rank + 1) * batch_size]


def make_model(args: argparse.Namespace, vocab_size: int) -> gpt.GPT:
    """The GPT of the options, initialised from ``--seed`` (identically on every process)."""
    from llmbook.runtime import seed_everything

    seed_everything(args.seed)
    config = gpt.GPTConfig(vocab_size=vocab_size, block_size=args.block_size, n_layer=args.n_layer,
                           n_head=args.n_head, n_embd=args.n_embd, dropout=0.0, attn_impl="sdpa")
    return gpt.GPT(config)


def full_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter as a full CPU tensor, by name (FSDP shards gathered; collective under FSDP)."""
    out = {}
    for name, p in model.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name] = full.detach().to("cpu", copy=True)
    return out


def load_params(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``params.pt`` written by this script."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no parameters file at {path}: run python -m {PROG} (or torchrun) first")
    return torch.load(path, map_location="cpu", weights_only=True)


def max_param_difference(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Largest absolute difference between two parameter dicts with the same names and shapes."""
    if set(a) != set(b):
        raise ValueError(f"the parameter names differ: {sorted(set(a) ^ set(b))[:5]}")
    for name in a:
        if a[name].shape != b[name].shape:
            raise ValueError(f"{name} has shape {tuple(a[name].shape)} in one and {tuple(b[name].shape)} in the other")
    return max(float((a[n].float() - b[n].float()).abs().max()) for n in a)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def _check_options(args: argparse.Namespace) -> None:
    if args.warmup_steps < 0 or args.warmup_steps >= args.steps:
        raise LaunchError(
            f"--warmup-steps must be between 0 and --steps - 1 = {args.steps - 1}, got {args.warmup_steps}"
        )
    if args.n_embd % args.n_head:
        raise LaunchError(f"--n-embd {args.n_embd} is not divisible by --n-head {args.n_head}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise LaunchError("--device cuda was asked for, but PyTorch sees no CUDA GPU here; use --device cpu")
    if args.out is not None and (not args.out or Path(args.out).name != args.out or args.out in {".", ".."}):
        raise LaunchError(f"--out must be a plain folder name such as ddp_run, got {args.out!r}")


def _environment(args: argparse.Namespace) -> tuple[int, int, int]:
    """(rank, world size, local rank) of this process; raises a one-line error if the launch is wrong."""
    if args.mode == "single":
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world > 1:
            raise LaunchError(
                f"--mode single runs one process, but WORLD_SIZE={world}: use --mode ddp or fsdp under torchrun, "
                f"or start single mode with python -m {PROG}"
            )
        return 0, 1, 0
    env = distributed_env(PROG, f"--mode {args.mode}")
    rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
    if args.device == "cuda" and local >= torch.cuda.device_count():
        raise LaunchError(
            f"process {rank} needs GPU {local} but there are {torch.cuda.device_count()}: start at most "
            f"{torch.cuda.device_count()} processes per machine with --device cuda, or use --device cpu"
        )
    return rank, world, local


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run the training the options describe and return the result (rank 0 also writes it).

    Must be called in every process of the launch; ``ddp`` and ``fsdp`` initialise and destroy the
    default process group themselves.
    """
    import torch.distributed as dist

    from llmbook.runtime import run_dir

    _check_options(args)
    rank, world, local_rank = _environment(args)
    try:
        folder = run_dir(args.out or f"dist_train_{args.mode}")
    except NotADirectoryError as err:  # a file is in the way of the run folder
        raise LaunchError(str(err)) from None
    threads_before = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(f"cuda:{local_rank}" if args.device == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    distributed = args.mode != "single"
    if distributed:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    log = print if rank == 0 else (lambda *a, **k: None)
    try:
        data, vocab_size = char_data()
        model = make_model(args, vocab_size).to(device)
        n_params = sum(p.numel() for p in model.parameters())
        if args.mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            # Gradients as views into DDP's communication buckets: no second copy of them.
            model = DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None,
                                            gradient_as_bucket_view=True)
        elif args.mode == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for block in model.blocks:
                fully_shard(block)
            fully_shard(model)
        optimizer = gpt.configure_optimizer(model, args.lr)
        generator = torch.Generator().manual_seed(args.seed)
        log(f"{args.mode}: {world} process(es), {'nccl' if device.type == 'cuda' else 'gloo' if distributed else 'no'} "
            f"communication, {device.type}, {torch.get_num_threads()} thread(s) each; GPT with {n_params:,} "
            f"parameters; global batch {world * args.batch_size} x {args.block_size} tokens", flush=True)

        losses, memory, start = [], None, time.perf_counter()
        for step in range(args.steps):
            if step == args.warmup_steps:
                _synchronize(device, distributed)
                start = time.perf_counter()
            x, y = global_batch(data, world, args.batch_size, args.block_size, generator)
            x, y = local_rows(x, rank, args.batch_size).to(device), local_rows(y, rank, args.batch_size).to(device)
            _, loss = model(x, y)
            loss.backward()
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            if memory is None:  # after the first step every kind of state exists
                memory = model_state_bytes(model, optimizer)
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
                mean_loss = loss.detach().clone()
                if distributed:  # the global batch's loss: the mean over the processes' equal shares
                    dist.all_reduce(mean_loss)
                    mean_loss /= world
                log(f"step {step + 1:4d}  loss {mean_loss.item():.4f}", flush=True)
        _synchronize(device, distributed)
        seconds = time.perf_counter() - start

        step_losses = torch.stack(losses).float().cpu()
        memory = {**memory, "rank": rank, "peak_rss": peak_rss_bytes(),
                  "cuda_max_allocated": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}
        memory_per_process = [memory]
        if distributed:
            step_losses = step_losses.to(device)
            dist.all_reduce(step_losses)
            step_losses = (step_losses / world).cpu()
            memory_per_process = [None] * world
            dist.all_gather_object(memory_per_process, memory)
        params = full_parameters(model.module if args.mode == "ddp" else model)
        timed = args.steps - args.warmup_steps
        result = {
            "mode": args.mode, "world_size": world, "device": device.type,
            "backend": ("nccl" if device.type == "cuda" else "gloo") if distributed else None,
            "threads_per_process": torch.get_num_threads(), "seed": args.seed, "steps": args.steps,
            "warmup_steps": args.warmup_steps, "batch_size_per_process": args.batch_size,
            "global_batch_size": world * args.batch_size, "block_size": args.block_size,
            "model": {"n_layer": args.n_layer, "n_head": args.n_head, "n_embd": args.n_embd,
                      "vocab_size": vocab_size}, "n_parameters": n_params, "lr": args.lr,
            "grad_clip": args.grad_clip, "losses": step_losses.tolist(), "timed_steps": timed,
            "seconds": seconds, "tokens_per_second": timed * world * args.batch_size * args.block_size / seconds,
            "memory_per_process": memory_per_process, "params_file": "params.pt",
        }
        if rank == 0:
            buffer = io.BytesIO()
            torch.save(params, buffer)
            write_atomic(folder / "params.pt", buffer.getvalue())
            result["params_sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
            write_atomic(folder / "result.json", json.dumps(result, indent=1).encode())
            log(f"{result['tokens_per_second']:,.0f} tokens/s over {timed} steps; wrote result.json and "
                f"params.pt to {shown_path(folder)}", flush=True)
        return result
    finally:
        torch.set_num_threads(threads_before)  # train() may run inside a notebook or a test session
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


def _synchronize(device: torch.device, distributed: bool) -> None:
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if distributed:
        dist.barrier()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m llmbook.dist_train`` and ``torchrun -m llmbook.dist_train``.

    Returns 0 on success and 2, after one line on stderr, when the options or the launch are wrong
    (for example ``--mode ddp`` without torchrun).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        train(args)
    except LaunchError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    return 0


# ----------------------------------------------------------------------------------------------
# Launching
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LaunchResult:
    """What :func:`launch` ran (``command``, as one would type it), its exit status, output and duration."""

    command: str
    returncode: int
    output: str
    seconds: float


def launch(args: Sequence[str], nproc: int | None = None, *, module: str = PROG, timeout: float = 300,
           env: Mapping[str, str] | None = None, check: bool = True) -> LaunchResult:
    """Run ``python -m module args`` (``nproc=None``) or ``torchrun --nproc_per_node=nproc -m module args``.

    torchrun (started as ``python -m torch.distributed.run``, the same program) listens on
    127.0.0.1 at a free port, so nothing leaves the machine; on Linux gloo is also pinned to the
    loopback interface. ``OMP_NUM_THREADS`` defaults to 1 (what torchrun would set, without its
    warning). The whole process group is stopped if it runs longer than ``timeout`` seconds, which
    raises ``TimeoutError``. With ``check``, a non-zero exit status raises ``RuntimeError`` with the
    end of the output. stdout and stderr are returned together, in order.
    """
    if nproc is not None and (isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1):
        raise ValueError(f"nproc must be a positive int (processes per machine) or None, got {nproc!r}")
    if not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    args = [str(a) for a in args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    if sys.platform.startswith("linux") and "GLOO_SOCKET_IFNAME" not in full_env and _has_interface("lo"):
        full_env["GLOO_SOCKET_IFNAME"] = "lo"
    for _attempt in range(3):  # another program may take the free port before torchrun does
        if nproc is None:
            cmd, shown = [sys.executable, "-m", module, *args], ["python", "-m", module, *args]
        else:
            flags = [f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1", f"--master_port={free_port()}"]
            cmd = [sys.executable, "-m", "torch.distributed.run", *flags, "-m", module, *args]
            shown = ["torchrun", *flags, "-m", module, *args]
        result = _run(cmd, " ".join(shown), timeout, full_env)
        if nproc is None or "address already in use" not in result.output.lower():
            break
    if check and result.returncode != 0:
        tail = "\n".join(result.output.strip().splitlines()[-15:])
        raise RuntimeError(f"{result.command} exited with status {result.returncode}; its output ends with:\n{tail}")
    return result


def _has_interface(name: str) -> bool:
    try:
        return any(n == name for _, n in socket.if_nameindex())
    except (OSError, AttributeError):
        return False


def _run(cmd: list[str], shown: str, timeout: float, env: Mapping[str, str]) -> LaunchResult:
    start = time.perf_counter()
    posix = os.name == "posix"
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(env),
                            start_new_session=posix)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc, posix)
        raise TimeoutError(f"{shown} did not finish within {timeout:g} s and was stopped") from None
    except BaseException:  # e.g. KeyboardInterrupt in a notebook: leave no processes behind
        _stop(proc, posix)
        raise
    return LaunchResult(shown, proc.returncode, output, time.perf_counter() - start)


def _stop(proc: subprocess.Popen, posix: bool) -> None:
    """Stop ``proc`` and every process it started: SIGTERM, then SIGKILL to whatever is left.

    torchrun starts its workers in their own sessions, so signalling torchrun's process group does
    not reach them; torchrun passes a SIGTERM on to them, and the workers found below (Linux) are
    killed individually if they outlive it.
    """
    workers = _descendants(proc.pid)
    _signal(proc, posix, signal.SIGTERM)
    try:
        proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        _signal(proc, posix, signal.SIGKILL)
        proc.communicate()
    for pid in workers | _descendants(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _signal(proc: subprocess.Popen, posix: bool, sig: signal.Signals) -> None:
    try:
        if posix:
            os.killpg(proc.pid, sig)
        else:
            proc.kill()
    except ProcessLookupError:
        pass


def _descendants(pid: int) -> set[int]:
    """Process ids below ``pid`` in the process tree (read from /proc; empty where there is none)."""
    parents: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return set()
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (command)"
        if len(fields) > 1 and fields[1].isdigit():
            parents[int(entry)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        children = {child for child, parent in parents.items() if parent in frontier} - found
        found |= children
        frontier = children
    return found


__all__ = [
    "LaunchResult",
    "MODES",
    "build_parser",
    "char_data",
    "free_port",
    "full_parameters",
    "global_batch",
    "launch",
    "load_params",
    "local_rows",
    "main",
    "make_model",
    "max_param_difference",
    "train",
]

if __name__ == "__main__":
    sys.exit(main())
