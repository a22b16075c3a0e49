"""Counting a Transformer's parameters, FLOPs and memory, and measuring how fast the hardware runs it.

Taught in the architecture chapter (``notebooks/01_llms_and_architecture.ipynb``); the GPT, BERT and
scaling chapters reuse it. Everything here is arithmetic on a :class:`TransformerConfig` (no tensors
are allocated), except the small measuring helpers :func:`time_interleaved`,
:func:`measure_memory_bandwidth` and :func:`detect_cpu`.

    >>> cfg = TransformerConfig(vocab_size=50257, context_length=1024, d_model=768, n_layers=12, n_heads=12)
    >>> parameter_count(cfg)                      # GPT-2 small, exactly as transformers counts it
    124439808
    >>> training_flops(parameter_count(cfg), 300e9)   # 6·N·D
    2.239916544e+20

Conventions
-----------
* **Parameter counts** are exact. A ``"decoder"`` (GPT-style, pre-LayerNorm) counts token and
  position embeddings, the blocks, the final norm and the output head (zero extra parameters when
  tied). An ``"encoder"`` (BERT-style, post-LayerNorm) counts what ``transformers.BertModel`` holds:
  token, position and token-type embeddings with their LayerNorm, the blocks and the pooler; the
  masked-LM head is not part of it.
* **Forward FLOPs per token** count the matrix products only, 2 FLOPs per multiply-add: the weight
  matrices of the blocks, the output head (the "de-embedding", ``2·vocab·d_model``, tied or not) and,
  optionally, the attention scores. Biases, norms, softmax and activations are left out (well under
  1 % of the total for any real model). The attention term for a context of ``n_ctx`` tokens is
  ``4·n_layers·n_ctx·d_model`` per token when every query meets every key (``QKᵀ`` and ``A·V``, each
  ``2·n_ctx·d_model``; what a dense kernel computes even under a causal mask) and half of that,
  ``2·n_layers·n_ctx·d_model``, for a kernel that skips the masked half of a causal mask; the
  latter is the term in Kaplan et al.'s ``C_forward ≈ 2N + 2·n_layer·n_ctx·d_attn``.
* **Training FLOPs** ≈ ``6·N·D``: 2 per parameter per token forward, 4 backward.
* **Memory** follows the ZeRO paper's accounting for AdamW (bytes per parameter: fp32 4+4+8,
  mixed precision 2+2+12, pure bf16 2+2+4) and Korthikanti et al.'s estimate for activations;
  :func:`zero_memory_per_device` divides it across data-parallel devices by ZeRO stage (taught in
  the training-at-scale chapter, ``notebooks/12_training_at_scale.ipynb``).
"""

from __future__ import annotations

import math
import platform
import re
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

import torch

Kind = Literal["decoder", "encoder"]
Positions = Literal["learned", "sinusoidal", "rotary"]
Norm = Literal["layernorm", "rmsnorm"]
AttentionCount = Literal["full", "causal", "none"]

# bytes per parameter for (weights, gradients, optimizer states) and bytes per activation value
PRECISIONS: dict[str, tuple[int, int, int, int]] = {
    "fp32": (4, 4, 8, 4),  # fp32 weights and grads, AdamW m and v in fp32
    "mixed": (2, 2, 12, 2),  # bf16/fp16 weights and grads; fp32 master weights, m and v
    "bf16": (2, 2, 4, 2),  # everything in bf16, AdamW m and v in bf16
}
"""Bytes per parameter (weights, gradients, AdamW states) and per activation value, by precision."""


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


@dataclass(frozen=True)
class TransformerConfig:
    """The sizes and design choices that decide a Transformer stack's parameters, FLOPs and memory.

    ``kind="decoder"`` is GPT-style (pre-LayerNorm blocks, a final norm, an output head that is tied
    to the token embedding when ``tie_embeddings``); with the defaults (learned positions,
    LayerNorm, biases, GELU MLP of width ``4·d_model``) it describes GPT-2 and a minimal nanoGPT-like
    model; ``bias=False`` removes the biases of every Linear *and* LayerNorm, as in nanoGPT.
    ``kind="encoder"`` is BERT-style (embedding LayerNorm, ``n_token_types`` token-type embeddings,
    post-LayerNorm blocks and, if ``pooler``, a ``d_model × d_model`` pooler). ``gated_mlp`` (SwiGLU,
    three matrices), ``norm="rmsnorm"`` and ``positions="rotary"`` describe LLaMA-style models.
    ``d_ff=None`` means ``4·d_model``. Invalid sizes raise ``ValueError``.
    """

    vocab_size: int
    context_length: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int | None = None
    kind: Kind = "decoder"
    tie_embeddings: bool = True
    bias: bool = True
    positions: Positions = "learned"
    norm: Norm = "layernorm"
    gated_mlp: bool = False
    n_token_types: int = 2
    pooler: bool = True
    name: str = ""

    def __post_init__(self) -> None:
        for field in ("vocab_size", "context_length", "d_model", "n_layers", "n_heads"):
            _positive_int(field, getattr(self, field))
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)
        _positive_int("d_ff", self.d_ff)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}: each head needs "
                f"d_model / n_heads dimensions"
            )
        if self.kind not in ("decoder", "encoder"):
            raise ValueError(f"kind must be 'decoder' (GPT-style) or 'encoder' (BERT-style), got {self.kind!r}")
        if self.positions not in ("learned", "sinusoidal", "rotary"):
            raise ValueError(f"positions must be 'learned', 'sinusoidal' or 'rotary', got {self.positions!r}")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")
        if self.kind == "encoder":
            if isinstance(self.n_token_types, bool) or not isinstance(self.n_token_types, int) or self.n_token_types < 0:
                raise ValueError(f"n_token_types must be a non-negative int, got {self.n_token_types!r}")

    @property
    def head_dim(self) -> int:
        """Dimensions per attention head, ``d_model // n_heads``."""
        return self.d_model // self.n_heads


# ----------------------------------------------------------------------------------------------
# Constructors from transformers configs
# ----------------------------------------------------------------------------------------------


def from_bert_config(config: Any, name: str = "") -> TransformerConfig:
    """The :class:`TransformerConfig` of a ``transformers.BertConfig`` (BERT, MiniLM, ...), pooler included."""
    pos = getattr(config, "position_embedding_type", "absolute")
    if pos != "absolute":
        raise ValueError(f"only absolute (learned) BERT position embeddings are supported, got {pos!r}")
    return TransformerConfig(
        vocab_size=config.vocab_size,
        context_length=config.max_position_embeddings,
        d_model=config.hidden_size,
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        d_ff=config.intermediate_size,
        kind="encoder",
        tie_embeddings=True,
        bias=True,
        positions="learned",
        n_token_types=config.type_vocab_size,
        pooler=True,
        name=name or getattr(config, "_name_or_path", "") or "bert",
    )


def from_gpt2_config(config: Any, name: str = "") -> TransformerConfig:
    """The :class:`TransformerConfig` of a ``transformers.GPT2Config`` (GPT-2 with its LM head)."""
    return TransformerConfig(
        vocab_size=config.vocab_size,
        context_length=config.n_positions,
        d_model=config.n_embd,
        n_layers=config.n_layer,
        n_heads=config.n_head,
        d_ff=config.n_inner or 4 * config.n_embd,
        kind="decoder",
        tie_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
        bias=True,
        positions="learned",
        name=name or getattr(config, "_name_or_path", "") or "gpt2",
    )


def from_llama_config(config: Any, name: str = "") -> TransformerConfig:
    """The :class:`TransformerConfig` of a ``transformers.LlamaConfig`` (multi-head attention only)."""
    kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    if kv != config.num_attention_heads:
        raise ValueError(
            f"grouped-query attention (num_key_value_heads={kv} != num_attention_heads="
            f"{config.num_attention_heads}) is not supported by TransformerConfig"
        )
    head_dim = getattr(config, "head_dim", None)
    if head_dim not in (None, config.hidden_size // config.num_attention_heads):
        raise ValueError(f"head_dim={head_dim} differs from hidden_size / num_attention_heads; not supported")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ValueError("LLaMA configs with attention_bias or mlp_bias are not supported")
    return TransformerConfig(
        vocab_size=config.vocab_size,
        context_length=config.max_position_embeddings,
        d_model=config.hidden_size,
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        d_ff=config.intermediate_size,
        kind="decoder",
        tie_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        bias=False,
        positions="rotary",
        norm="rmsnorm",
        gated_mlp=True,
        name=name or getattr(config, "_name_or_path", "") or "llama",
    )


def from_hf_config(config: Any, name: str = "") -> TransformerConfig:
    """Dispatch on ``config.model_type``: ``bert``, ``gpt2`` or ``llama``; anything else is a ``ValueError``."""
    model_type = getattr(config, "model_type", None)
    builders: dict[str, Callable[[Any, str], TransformerConfig]] = {
        "bert": from_bert_config,
        "gpt2": from_gpt2_config,
        "llama": from_llama_config,
    }
    if model_type not in builders:
        raise ValueError(f"unsupported model_type {model_type!r}: use one of {sorted(builders)}")
    return builders[model_type](config, name)


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------


def _norm_params(cfg: TransformerConfig) -> int:
    if cfg.norm == "rmsnorm":
        return cfg.d_model
    return 2 * cfg.d_model if cfg.bias else cfg.d_model


def _check_config(cfg: Any) -> TransformerConfig:
    if not isinstance(cfg, TransformerConfig):
        raise TypeError(f"expected a TransformerConfig, got {type(cfg).__name__}")
    return cfg


def parameter_breakdown(cfg: TransformerConfig) -> dict[str, int]:
    """Parameters by part: ``embeddings``, ``attention``, ``mlp``, ``norms``, ``head``, ``pooler``.

    The values sum to :func:`parameter_count`. ``embeddings`` holds token, position and token-type
    tables; ``norms`` every LayerNorm/RMSNorm (the embedding LayerNorm of an encoder included);
    ``head`` is 0 for a tied decoder and for an encoder.
    """
    cfg = _check_config(cfg)
    d, f, b = cfg.d_model, cfg.d_ff, int(cfg.bias)
    embeddings = cfg.vocab_size * d
    if cfg.positions == "learned":
        embeddings += cfg.context_length * d
    if cfg.kind == "encoder":
        embeddings += cfg.n_token_types * d
    attention = cfg.n_layers * (4 * d * d + 4 * d * b)  # Q, K, V and output projections
    n_mats = 3 if cfg.gated_mlp else 2
    mlp_bias = (2 * f + d) if cfg.gated_mlp else (f + d)
    mlp = cfg.n_layers * (n_mats * d * f + mlp_bias * b)
    # two norms per block; plus the final norm (decoder) or the embedding norm (encoder)
    norms = (2 * cfg.n_layers + 1) * _norm_params(cfg)
    head = cfg.vocab_size * d if (cfg.kind == "decoder" and not cfg.tie_embeddings) else 0
    pooler = d * d + d if (cfg.kind == "encoder" and cfg.pooler) else 0
    return {"embeddings": embeddings, "attention": attention, "mlp": mlp, "norms": norms, "head": head, "pooler": pooler}


def parameter_count(cfg: TransformerConfig, *, non_embedding: bool = False) -> int:
    """Exact number of parameters (shared tensors counted once), as ``sum(p.numel())`` gives it.

    ``non_embedding=True`` leaves out the token, position and token-type tables (Kaplan et al.'s N).
    """
    parts = parameter_breakdown(cfg)
    if non_embedding:
        parts.pop("embeddings")
    return sum(parts.values())


def matmul_params_per_token(cfg: TransformerConfig, *, lm_head: bool = True) -> int:
    """Weights that each token is multiplied with in a forward pass: block matrices (+ the output head)."""
    cfg = _check_config(cfg)
    n_mats = 3 if cfg.gated_mlp else 2
    per_layer = 4 * cfg.d_model * cfg.d_model + n_mats * cfg.d_model * cfg.d_ff
    return cfg.n_layers * per_layer + (cfg.vocab_size * cfg.d_model if lm_head else 0)


# ----------------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------------


def forward_flops_per_token(
    cfg: TransformerConfig,
    context: int | None = None,
    *,
    attention: AttentionCount = "full",
    lm_head: bool = True,
) -> int:
    """Matrix-product FLOPs of one token's forward pass through a context of ``context`` tokens.

    ``2·matmul_params_per_token`` plus the attention-score term: ``"full"`` adds
    ``4·n_layers·context·d_model`` (``QKᵀ`` and ``A·V`` against all ``context`` keys, what a dense
    kernel computes), ``"causal"`` adds half of it (a kernel that skips the masked half; Kaplan et
    al.'s ``2·n_layer·n_ctx·d_attn``), ``"none"`` adds nothing. ``context`` defaults to
    ``cfg.context_length``. ``lm_head=False`` drops the ``2·vocab·d_model`` of the output head (e.g.
    for ``BertModel``, which has none). Biases, norms, softmax and activations are not counted.
    """
    cfg = _check_config(cfg)
    context = cfg.context_length if context is None else context
    _positive_int("context", context)
    factor = {"full": 4, "causal": 2, "none": 0}
    if attention not in factor:
        raise ValueError(f"attention must be 'full', 'causal' or 'none', got {attention!r}")
    return 2 * matmul_params_per_token(cfg, lm_head=lm_head) + factor[attention] * cfg.n_layers * context * cfg.d_model


def training_flops(n_params: float, n_tokens: float) -> float:
    """Training compute ≈ ``6·N·D`` FLOPs: forward 2·N per token, backward 4·N per token."""
    if n_params <= 0 or n_tokens <= 0:
        raise ValueError(f"n_params and n_tokens must be positive, got {n_params} and {n_tokens}")
    return 6.0 * float(n_params) * float(n_tokens)


def gpu_days(flops: float, peak_flops: float, utilization: float = 0.4) -> float:
    """Days on one accelerator with ``peak_flops`` that sustains ``utilization`` of its peak (MFU)."""
    if flops < 0 or peak_flops <= 0:
        raise ValueError(f"flops must be >= 0 and peak_flops > 0, got {flops} and {peak_flops}")
    if not 0 < utilization <= 1:
        raise ValueError(f"utilization must be in (0, 1], got {utilization}")
    return flops / (peak_flops * utilization) / 86_400


# ----------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------


def activation_memory(
    cfg: TransformerConfig,
    batch_size: int,
    seq_len: int | None = None,
    precision: str = "mixed",
    *,
    flash_attention: bool = False,
) -> int:
    """Bytes of activations kept for the backward pass (no recomputation, no model parallelism).

    Korthikanti et al. (2022) per layer, 16-bit values and 1-byte dropout masks:
    ``s·b·(18·h + 4·d_ff) + 5·a·s²·b`` bytes (``34·s·b·h + 5·a·s²·b`` for ``d_ff = 4h``; a gated MLP
    keeps ``6·d_ff`` instead of ``4·d_ff``). ``flash_attention`` drops the ``5·a·s²·b`` of stored
    attention scores. fp32 activations double the per-layer figure. Added: the logits of every
    position in fp32 (``4·b·s·vocab``), which the cross-entropy loss keeps.
    """
    cfg = _check_config(cfg)
    seq_len = cfg.context_length if seq_len is None else seq_len
    _positive_int("batch_size", batch_size)
    _positive_int("seq_len", seq_len)
    act_bytes = _precision(precision)[3]
    s, b, h, a = seq_len, batch_size, cfg.d_model, cfg.n_heads
    per_layer = s * b * (18 * h + (6 if cfg.gated_mlp else 4) * cfg.d_ff)
    if not flash_attention:
        per_layer += 5 * a * s * s * b
    per_layer = per_layer * act_bytes // 2
    logits = 4 * b * s * cfg.vocab_size
    return cfg.n_layers * per_layer + logits


def _precision(precision: str) -> tuple[int, int, int, int]:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def training_memory(
    cfg: TransformerConfig,
    batch_size: int,
    seq_len: int | None = None,
    precision: str = "mixed",
    *,
    flash_attention: bool = False,
) -> dict[str, int]:
    """Bytes to train with AdamW: ``weights``, ``gradients``, ``optimizer`` (states), ``activations``, ``total``.

    ``precision`` is ``"fp32"`` (4+4+8 bytes per parameter), ``"mixed"`` (2+2+12: 16-bit weights and
    gradients, fp32 master weights and AdamW moments; the ZeRO paper's 16·N) or ``"bf16"`` (2+2+4).
    Activations: :func:`activation_memory`. Framework overhead, buffers and fragmentation are extra.
    """
    w, g, o, _ = _precision(precision)
    n = parameter_count(cfg)
    mem = {
        "weights": w * n,
        "gradients": g * n,
        "optimizer": o * n,
        "activations": activation_memory(cfg, batch_size, seq_len, precision, flash_attention=flash_attention),
    }
    mem["total"] = sum(mem.values())
    return mem


ZERO_STAGES: dict[int, str] = {
    0: "plain data parallelism (DDP): everything replicated",
    1: "ZeRO-1: optimizer states sharded",
    2: "ZeRO-2: optimizer states and gradients sharded",
    3: "ZeRO-3 / FSDP: optimizer states, gradients and parameters sharded",
}
"""What each ZeRO stage shards across the data-parallel devices (taught in the training-at-scale chapter)."""


def zero_memory_per_device(
    model: TransformerConfig | int,
    n_devices: int,
    stage: int,
    precision: str = "mixed",
) -> dict[str, float]:
    """Bytes of model state per device under ZeRO ``stage`` 0–3 on ``n_devices`` data-parallel devices.

    ``model`` is a :class:`TransformerConfig` or a parameter count. Returns ``weights``,
    ``gradients``, ``optimizer`` and ``total``, with the bytes per parameter of ``precision`` (see
    :data:`PRECISIONS`): stage 0 replicates all three, stage 1 divides the optimizer states by
    ``n_devices``, stage 2 also the gradients, stage 3 (FSDP) also the weights (Rajbhandari et al.,
    2020: for mixed precision ``(2 + 2 + 12)·Ψ`` at stage 0 down to ``16·Ψ / N_d`` at stage 3).
    Activations, buffers and the temporarily gathered parameters of stage 3 are not included.
    Taught in the training-at-scale chapter.
    """
    n = model if isinstance(model, int) and not isinstance(model, bool) else parameter_count(_check_config(model))
    _positive_int("n_params", n)
    _positive_int("n_devices", n_devices)
    if isinstance(stage, bool) or stage not in ZERO_STAGES:
        raise ValueError(f"stage must be 0, 1, 2 or 3 (0 = no sharding), got {stage!r}")
    w, g, o, _ = _precision(precision)

    def per_device(bytes_per_param: int, sharded: bool) -> float:
        return n * bytes_per_param / (n_devices if sharded else 1)

    mem = {
        "weights": per_device(w, stage >= 3),
        "gradients": per_device(g, stage >= 2),
        "optimizer": per_device(o, stage >= 1),
    }
    mem["total"] = sum(mem.values())
    return mem


# ----------------------------------------------------------------------------------------------
# Hardware: datasheet figures, CPU peak estimate, timing
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GPUSpec:
    """Datasheet figures of an accelerator (dense, no sparsity), with the datasheet they come from."""

    name: str
    bf16_flops: float | None  # dense 16-bit tensor-core FLOP/s (fp16 where there is no bf16)
    fp32_flops: float  # plain fp32 (no TF32) FLOP/s
    memory_bytes: float
    bandwidth: float  # bytes/s
    source: str
    fp8_flops: float | None = None  # dense 8-bit floating-point tensor-core FLOP/s, where the chip has it
    interconnect: float | None = None  # GPU-to-GPU NVLink bandwidth, bytes/s, both directions together
    year: int | None = None  # year the chip was launched


GPU_DATASHEETS: dict[str, GPUSpec] = {
    "T4": GPUSpec("NVIDIA T4", 65e12, 8.1e12, 16e9, 320e9, "NVIDIA T4 Tensor Core GPU datasheet (fp16 tensor)"),
    "L4": GPUSpec("NVIDIA L4", 121e12, 30.3e12, 24e9, 300e9, "NVIDIA L4 datasheet (242 TFLOP/s bf16 is with sparsity)"),
    "V100": GPUSpec("NVIDIA V100 SXM2", 125e12, 15.7e12, 32e9, 900e9, "NVIDIA Tesla V100 datasheet (fp16 tensor)",
                    interconnect=300e9, year=2017),
    "A100": GPUSpec("NVIDIA A100 SXM 80GB", 312e12, 19.5e12, 80e9, 2.039e12, "NVIDIA A100 Tensor Core GPU datasheet",
                    interconnect=600e9, year=2020),
    "H100": GPUSpec("NVIDIA H100 SXM", 989e12, 67e12, 80e9, 3.35e12, "NVIDIA H100 Tensor Core GPU datasheet (1,979 with sparsity)",
                    fp8_flops=1979e12, interconnect=900e9, year=2022),
}
"""Datasheet peaks (not measured by the book), keyed by a short name found in ``torch.cuda.get_device_name``."""


def gpu_datasheet(device_name: str) -> GPUSpec | None:
    """The :data:`GPU_DATASHEETS` entry whose key occurs in ``device_name`` (e.g. ``"Tesla T4"``), else None."""
    for key, spec in GPU_DATASHEETS.items():
        if re.search(rf"\b{key}\b", device_name, flags=re.IGNORECASE):
            return spec
    return None


@dataclass(frozen=True)
class CPUInfo:
    """What :func:`detect_cpu` found: model name, cores, clock (GHz), widest SIMD register (bits), and
    whether the CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16 instructions)."""

    model: str
    cores: int
    clock_ghz: float | None
    simd_bits: int
    native_bf16: bool = False


def detect_cpu() -> CPUInfo:
    """Read the CPU's model, core count, nominal clock and SIMD width (``/proc/cpuinfo`` on Linux).

    The clock is the nominal one in the model name (``@ 2.50GHz``) or else the current ``cpu MHz``;
    SIMD width is 512 with AVX-512F, 256 with AVX/AVX2, 128 otherwise (NEON on ARM). ``cores`` is
    the number of threads PyTorch uses. Off Linux, the clock is ``None``.
    """
    model, clock, flags = platform.processor() or platform.machine(), None, set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            text = fh.read()
    except OSError:
        text = ""
    if m := re.search(r"^model name\s*:\s*(.+)$", text, flags=re.MULTILINE):
        model = m.group(1).strip()
    if m := re.search(r"@\s*([\d.]+)\s*GHz", model):
        clock = float(m.group(1))
    elif m := re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, flags=re.MULTILINE):
        clock = float(m.group(1)) / 1000
    if m := re.search(r"^flags\s*:\s*(.+)$", text, flags=re.MULTILINE):
        flags = set(m.group(1).split())
    simd = 512 if "avx512f" in flags else 256 if ("avx2" in flags or "avx" in flags) else 128
    # without these instructions a CPU converts bf16 to fp32 before multiplying
    native_bf16 = bool(flags & {"avx512_bf16", "amx_bf16"})
    return CPUInfo(model=model, cores=torch.get_num_threads(), clock_ghz=clock, simd_bits=simd,
                   native_bf16=native_bf16)


def cpu_peak_flops(cores: int, clock_ghz: float, simd_bits: int, *, fma_units: int = 2, dtype_bits: int = 32) -> float:
    """Estimated peak FLOP/s = cores × clock × (SIMD lanes of ``dtype_bits``) × 2 (an FMA) × FMA units.

    Two FMA units per core is right for most server x86 cores with AVX-512 or AVX2 (some low-end
    Xeons have one); the clock under heavy AVX-512 load is often below nominal, so this is an upper
    estimate.
    """
    _positive_int("cores", cores)
    _positive_int("simd_bits", simd_bits)
    _positive_int("fma_units", fma_units)
    _positive_int("dtype_bits", dtype_bits)
    if clock_ghz is None or clock_ghz <= 0:
        raise ValueError(f"clock_ghz must be positive, got {clock_ghz}")
    lanes = max(simd_bits // dtype_bits, 1)
    return cores * clock_ghz * 1e9 * lanes * 2 * fma_units


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    warmup: int = 2,
    repeats: int = 5,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Median wall-clock seconds of each function, measured side by side.

    Every function runs ``warmup`` times first; then, ``repeats`` times, each function runs once in
    turn (interleaved, so a slow spell on a shared machine hits all of them alike). On a CUDA or MPS
    ``device`` the GPU is synchronised before and after each call (GPU kernels run asynchronously).
    """
    if not fns:
        raise ValueError("fns must hold at least one function")
    if not all(callable(f) for f in fns.values()):
        raise TypeError("every value of fns must be callable")
    _positive_int("repeats", repeats)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")
    kind = torch.device(device).type if device is not None else "cpu"
    sync = {"cuda": torch.cuda.synchronize, "mps": getattr(torch, "mps", None) and torch.mps.synchronize}.get(kind)
    sync = sync or (lambda: None)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def measure_memory_bandwidth(
    n_bytes: int = 2**27,
    *,
    repeats: int = 5,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Main-memory bandwidth in bytes/s, measured the way the STREAM benchmark does: best of ``repeats``.

    Two kernels on fp32 arrays of ``n_bytes`` each (choose them far larger than the caches):
    ``copy`` (``b[:] = a``, counted as 2 × ``n_bytes`` moved: one read, one write) and ``triad``
    (``a[:] = b + s·c``, 3 × ``n_bytes``: two reads, one write). As in STREAM, the bytes counted are
    the ones the program asks for; a CPU that reads each destination line before writing it moves
    more, so the figure is a lower bound on the traffic the memory system sustains. The *fastest*
    repeat is kept, because interference from other work can only slow a run down. One untimed run
    of each kernel comes first (it touches every page). Returns ``{"copy": ..., "triad": ...}``.
    Taught with the roofline model in the architecture chapter.
    """
    if isinstance(n_bytes, bool) or not isinstance(n_bytes, int) or n_bytes < 4:
        raise ValueError(f"n_bytes must be an int of at least 4 (one fp32 number), got {n_bytes!r}")
    _positive_int("repeats", repeats)
    kind = torch.device(device).type if device is not None else "cpu"
    sync = {"cuda": torch.cuda.synchronize, "mps": getattr(torch, "mps", None) and torch.mps.synchronize}.get(kind)
    sync = sync or (lambda: None)
    n = n_bytes // 4
    a = torch.ones(n, device=device)
    b = torch.full((n,), 2.0, device=device)
    c = torch.full((n,), 0.5, device=device)
    kernels: dict[str, tuple[Callable[[], object], int]] = {
        "copy": (lambda: b.copy_(a), 2),
        "triad": (lambda: torch.add(b, c, alpha=3.0, out=a), 3),
    }
    best = {name: math.inf for name in kernels}
    for fn, _ in kernels.values():
        fn()
    for _ in range(repeats):
        for name, (fn, _) in kernels.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: arrays * 4 * n / max(best[name], 1e-12) for name, (_, arrays) in kernels.items()}


def format_count(x: float, unit: str = "") -> str:
    """``124439808 → '124.4 M'``; ``3.14e23, 'FLOP' → '314.0 ZFLOP'`` (powers of 1000)."""
    if x == 0:
        return f"0 {unit}".strip()
    prefixes = ["", "k", "M", "G", "T", "P", "E", "Z", "Y"] if unit else ["", "k", "M", "B", "T", "Q"]
    exp = min(int(math.floor(math.log10(abs(x)) / 3)), len(prefixes) - 1) if abs(x) >= 1 else 0
    return f"{x / 1000 ** exp:.1f} {prefixes[exp]}{unit}".strip()


__all__ = [
    "PRECISIONS",
    "GPU_DATASHEETS",
    "CPUInfo",
    "GPUSpec",
    "TransformerConfig",
    "activation_memory",
    "cpu_peak_flops",
    "detect_cpu",
    "format_count",
    "forward_flops_per_token",
    "from_bert_config",
    "from_gpt2_config",
    "from_hf_config",
    "from_llama_config",
    "gpu_datasheet",
    "gpu_days",
    "matmul_params_per_token",
    "measure_memory_bandwidth",
    "parameter_breakdown",
    "parameter_count",
    "time_interleaved",
    "training_flops",
    "training_memory",
    "ZERO_STAGES",
    "zero_memory_per_device",
]
