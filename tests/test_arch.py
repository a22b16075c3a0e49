"""Tests of llmbook.arch: exact parameter counts against transformers, FLOPs against torch's counter,
memory accounting, config validation and the measuring helpers."""

import math
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, GPT2Model, LlamaConfig, LlamaForCausalLM

from llmbook import arch
from llmbook.arch import TransformerConfig
from llmbook.pretrained import bundled_checkpoint_path


def hf_count(model_cls, config) -> int:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = model_cls(config)
    return sum(p.numel() for p in model.parameters())


BERT_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)


@pytest.mark.parametrize(
    "name, model_cls, config",
    [
        ("bert-base", BertModel, BertConfig()),
        ("bert-large", BertModel, BertConfig(**BERT_LARGE)),
        ("gpt2", GPT2Model, GPT2Config()),
        ("gpt2-lm-head", GPT2LMHeadModel, GPT2Config()),
        ("gpt2-untied", GPT2LMHeadModel, GPT2Config(n_layer=2, n_embd=64, n_head=4, tie_word_embeddings=False)),
        ("llama-tiny", LlamaForCausalLM, LlamaConfig(vocab_size=1000, hidden_size=128, intermediate_size=344,
                                                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4)),
    ],
)
def test_parameter_count_matches_transformers_exactly(name, model_cls, config):
    cfg = arch.from_hf_config(config)
    assert arch.parameter_count(cfg) == hf_count(model_cls, config), name
    assert sum(arch.parameter_breakdown(cfg).values()) == arch.parameter_count(cfg)


def test_known_totals_and_the_bundled_minilm():
    assert arch.parameter_count(arch.from_bert_config(BertConfig())) == 109_482_240
    assert arch.parameter_count(arch.from_gpt2_config(GPT2Config())) == 124_439_808
    config = BertConfig.from_dict(json.loads((Path(bundled_checkpoint_path()) / "config.json").read_text()))
    cfg = arch.from_bert_config(config)
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads) == (384, 6, 12)
    assert arch.parameter_count(cfg) == hf_count(BertModel, config)


def test_llama_7b_count():
    cfg = TransformerConfig(vocab_size=32000, context_length=2048, d_model=4096, n_layers=32, n_heads=32, d_ff=11008,
                            tie_embeddings=False, bias=False, positions="rotary", norm="rmsnorm", gated_mlp=True)
    assert arch.parameter_count(cfg) == 6_738_415_616


class _Block(nn.Module):
    def __init__(self, d, h, bias):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d, bias=bias), nn.LayerNorm(d, bias=bias)
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d, bias=bias), nn.Linear(d, d, bias=bias)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d, bias=bias), nn.Linear(4 * d, d, bias=bias)


class _NanoGPT(nn.Module):
    """The parameter layout of a minimal nanoGPT-like model (no forward needed to count)."""

    def __init__(self, vocab, ctx, d, layers, heads, bias):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.h = nn.ModuleList(_Block(d, heads, bias) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d, bias=bias)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied


@pytest.mark.parametrize("bias", [True, False])
def test_nanogpt_like_model(bias):
    model = _NanoGPT(65, 64, 128, 4, 4, bias)
    cfg = TransformerConfig(vocab_size=65, context_length=64, d_model=128, n_layers=4, n_heads=4, bias=bias)
    assert arch.parameter_count(cfg) == sum(p.numel() for p in model.parameters())
    assert arch.parameter_count(cfg, non_embedding=True) == arch.parameter_count(cfg) - (65 + 64) * 128


def test_forward_flops_match_torch_flop_counter_gpt2():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=300, n_positions=32, n_embd=64, n_layer=2, n_head=4)
    model = GPT2LMHeadModel(config).eval()
    model.set_attn_implementation("eager")
    batch, seq = 2, 16
    ids = torch.randint(0, 300, (batch, seq))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(ids)
    cfg = arch.from_gpt2_config(config)
    expected = batch * seq * arch.forward_flops_per_token(cfg, context=seq, attention="full")
    assert counter.get_total_flops() == expected
    # Kaplan's causal term is half of the dense one; "none" drops it
    full, causal, none = (arch.forward_flops_per_token(cfg, 16, attention=a) for a in ("full", "causal", "none"))
    assert full - none == 2 * (causal - none) == 4 * 2 * 16 * 64


def test_forward_flops_match_torch_flop_counter_bert():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=32, attn_implementation="eager")
    model = BertModel(config).eval()
    batch, seq = 3, 10
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randint(0, 200, (batch, seq)))
    cfg = arch.from_bert_config(config)
    pooler = batch * 2 * 64 * 64  # the pooler multiplies one vector per sequence
    assert counter.get_total_flops() == batch * seq * arch.forward_flops_per_token(cfg, seq, lm_head=False) + pooler


def test_training_flops_and_gpu_days():
    assert arch.training_flops(175e9, 300e9) == pytest.approx(3.15e23)
    assert arch.gpu_days(86_400 * 100.0, 100.0, utilization=1.0) == pytest.approx(1.0)
    assert arch.gpu_days(86_400 * 100.0, 100.0, utilization=0.5) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="utilization"):
        arch.gpu_days(1.0, 1.0, utilization=0)
    with pytest.raises(ValueError, match="positive"):
        arch.training_flops(0, 1)


def test_training_memory_accounting():
    cfg = arch.from_gpt2_config(GPT2Config())
    n = arch.parameter_count(cfg)
    for precision, per_param in (("fp32", 16), ("mixed", 16), ("bf16", 8)):
        mem = arch.training_memory(cfg, batch_size=1, seq_len=128, precision=precision)
        assert mem["weights"] + mem["gradients"] + mem["optimizer"] == per_param * n
        assert mem["total"] == sum(v for k, v in mem.items() if k != "total")
    s, b, h, a, L, V = 128, 4, 768, 12, 12, 50257
    act = arch.activation_memory(cfg, b, s, "mixed")
    assert act == L * (34 * s * b * h + 5 * a * s * s * b) + 4 * b * s * V  # Korthikanti et al., d_ff = 4h
    assert arch.activation_memory(cfg, b, s, "mixed", flash_attention=True) == L * 34 * s * b * h + 4 * b * s * V
    assert arch.activation_memory(cfg, b, s, "fp32") > act
    assert arch.activation_memory(cfg, 2 * b, s) == 2 * act
    with pytest.raises(ValueError, match="precision"):
        arch.training_memory(cfg, 1, precision="fp8")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(d_model=100, n_heads=12), "not divisible by n_heads"),
        (dict(d_model=0), "d_model must be positive"),
        (dict(n_layers=-1), "n_layers must be positive"),
        (dict(d_ff=0), "d_ff must be positive"),
        (dict(kind="seq2seq"), "kind"),
        (dict(positions="alibi"), "positions"),
        (dict(norm="batchnorm"), "norm"),
    ],
)
def test_invalid_configs_raise_clear_errors(kwargs, match):
    base = dict(vocab_size=100, context_length=16, d_model=64, n_layers=2, n_heads=4)
    with pytest.raises(ValueError, match=match):
        TransformerConfig(**{**base, **kwargs})


def test_type_errors_and_unsupported_configs():
    with pytest.raises(TypeError, match="d_model must be an int"):
        TransformerConfig(vocab_size=10, context_length=4, d_model=64.0, n_layers=1, n_heads=1)
    with pytest.raises(TypeError):
        arch.parameter_count({"d_model": 64})
    with pytest.raises(ValueError, match="unsupported model_type"):
        arch.from_hf_config(type("C", (), {"model_type": "t5"})())
    with pytest.raises(ValueError, match="grouped-query"):
        arch.from_llama_config(LlamaConfig(num_attention_heads=32, num_key_value_heads=8))
    cfg = TransformerConfig(vocab_size=10, context_length=4, d_model=64, n_layers=1, n_heads=4)
    assert cfg.d_ff == 256 and cfg.head_dim == 16
    with pytest.raises(ValueError, match="attention"):
        arch.forward_flops_per_token(cfg, attention="sparse")
    with pytest.raises(ValueError, match="context must be positive"):
        arch.forward_flops_per_token(cfg, context=0)


def test_hardware_helpers():
    assert arch.cpu_peak_flops(2, 2.5, 512) == 2 * 2.5e9 * 16 * 2 * 2
    assert arch.cpu_peak_flops(1, 1.0, 256, dtype_bits=64, fma_units=1) == 1e9 * 4 * 2
    with pytest.raises(ValueError, match="clock"):
        arch.cpu_peak_flops(2, 0, 512)
    info = arch.detect_cpu()
    assert info.cores >= 1 and info.simd_bits in (128, 256, 512)
    assert arch.gpu_datasheet("Tesla T4").name == "NVIDIA T4"
    assert arch.gpu_datasheet("NVIDIA A100-SXM4-80GB").bf16_flops == 312e12
    assert arch.gpu_datasheet("Quadro RTX 5000") is None
    assert arch.format_count(124_439_808) == "124.4 M"
    assert arch.format_count(3.14e23, "FLOP") == "314.0 ZFLOP"


def test_time_interleaved_runs_each_function_and_validates():
    calls = {"a": 0, "b": 0}

    def bump(key):
        return lambda: calls.__setitem__(key, calls[key] + 1)

    times = arch.time_interleaved({"a": bump("a"), "b": bump("b")}, warmup=1, repeats=3, device="cpu")
    assert set(times) == {"a", "b"} and all(t >= 0 for t in times.values())
    assert calls == {"a": 4, "b": 4}
    with pytest.raises(ValueError):
        arch.time_interleaved({})
    with pytest.raises(TypeError):
        arch.time_interleaved({"x": 3})
    with pytest.raises(ValueError):
        arch.time_interleaved({"a": bump("a")}, repeats=0)


def test_zero_memory_per_device_matches_the_zero_paper():
    # Rajbhandari et al. (2020), Figure 1: a 7.5B model on 64 GPUs with mixed-precision Adam (K = 12).
    totals = [arch.zero_memory_per_device(7_500_000_000, 64, stage)["total"] / 1e9 for stage in range(4)]
    assert totals == pytest.approx([120.0, 31.4, 16.6, 1.9], abs=0.05)
    stage3 = arch.zero_memory_per_device(7_500_000_000, 64, 3)
    assert stage3["weights"] == stage3["gradients"] == 2 * 7.5e9 / 64
    assert stage3["optimizer"] == 12 * 7.5e9 / 64


def test_zero_stage_0_is_training_memory_and_stage_3_divides_everything():
    cfg = TransformerConfig(vocab_size=1000, context_length=64, d_model=64, n_layers=2, n_heads=4)
    for precision in arch.PRECISIONS:
        plain = arch.training_memory(cfg, 1, precision=precision)
        stage0 = arch.zero_memory_per_device(cfg, 8, 0, precision)
        assert {k: stage0[k] for k in ("weights", "gradients", "optimizer")} == {
            k: plain[k] for k in ("weights", "gradients", "optimizer")}
        assert arch.zero_memory_per_device(cfg, 8, 3, precision)["total"] == pytest.approx(stage0["total"] / 8)
    one = arch.zero_memory_per_device(arch.parameter_count(cfg), 1, 3)
    assert one == arch.zero_memory_per_device(cfg, 1, 0)  # one device: nothing to shard
    stages = [arch.zero_memory_per_device(cfg, 4, s)["total"] for s in range(4)]
    assert stages == sorted(stages, reverse=True) and set(arch.ZERO_STAGES) == {0, 1, 2, 3}


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(stage=4), ValueError, "stage must be 0, 1, 2 or 3"),
    (dict(stage=True), ValueError, "stage must be"),
    (dict(n_devices=0), ValueError, "n_devices must be positive"),
    (dict(n_devices=2.0), TypeError, "n_devices must be an int"),
    (dict(precision="fp8"), ValueError, "precision must be one of"),
    (dict(model=0), ValueError, "n_params must be positive"),
    (dict(model="7B"), TypeError, "expected a TransformerConfig"),
])
def test_zero_memory_per_device_rejects_bad_arguments(kwargs, error, match):
    args = {"model": 7_000_000_000, "n_devices": 8, "stage": 1, **kwargs}
    with pytest.raises(error, match=match):
        arch.zero_memory_per_device(args["model"], args["n_devices"], args["stage"], args.get("precision", "mixed"))


def test_memory_bandwidth_counts_stream_bytes_and_keeps_the_best_repeat(monkeypatch):
    # A fake clock: the k-th timed call lasts k seconds, so the first repeat of each kernel is the best.
    ticks = iter(range(10_000))
    durations = iter([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # copy, triad, copy, triad, ...
    now = {"t": 0.0}

    def fake_clock():
        if next(ticks) % 2:  # every second call ends a timed kernel
            now["t"] += next(durations)
        return now["t"]

    monkeypatch.setattr(arch.time, "perf_counter", fake_clock)
    bw = arch.measure_memory_bandwidth(4096, repeats=3, device="cpu")
    assert bw == {"copy": 2 * 4096 / 1.0, "triad": 3 * 4096 / 2.0}


def test_memory_bandwidth_really_runs_the_kernels_and_validates():
    bw = arch.measure_memory_bandwidth(1 << 16, repeats=2)
    assert set(bw) == {"copy", "triad"} and all(v > 0 and math.isfinite(v) for v in bw.values())
    with pytest.raises(ValueError, match="n_bytes must be an int of at least 4"):
        arch.measure_memory_bandwidth(2)
    with pytest.raises(ValueError, match="n_bytes"):
        arch.measure_memory_bandwidth(1e6)
    with pytest.raises(ValueError, match="repeats"):
        arch.measure_memory_bandwidth(1024, repeats=0)


def test_datasheets_record_the_hardware_that_llms_drive():
    v100, a100, h100 = (arch.GPU_DATASHEETS[k] for k in ("V100", "A100", "H100"))
    assert (v100.year, a100.year, h100.year) == (2017, 2020, 2022)
    assert [g.interconnect for g in (v100, a100, h100)] == [300e9, 600e9, 900e9]  # NVLink 2, 3, 4
    assert h100.fp8_flops == 1979e12 and a100.fp8_flops is None
    assert arch.GPU_DATASHEETS["T4"].interconnect is None  # fields added with defaults: old entries still build


@pytest.mark.parametrize(
    "flags, native",
    [("fpu avx2 avx512f avx512_bf16", True), ("fpu avx2 amx_bf16 amx_tile", True), ("fpu avx2 avx512f", False)],
)
def test_detect_cpu_reports_native_bf16_from_the_flags(monkeypatch, flags, native):
    import builtins
    import io

    text = f"model name\t: Test CPU @ 2.50GHz\nflags\t\t: {flags}\n"
    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        return io.StringIO(text) if path == "/proc/cpuinfo" else real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    info = arch.detect_cpu()
    assert info.native_bf16 is native and info.clock_ghz == 2.5
