import re

import pytest
import torch

from llmbook import runtime


def test_scale_defaults_to_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.get_scale() == "cpu"


def test_scale_defaults_to_gpu_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.get_scale() == "gpu"


@pytest.mark.parametrize("raw, expected", [("smoke", "smoke"), (" CPU ", "cpu"), ("Gpu", "gpu"), ("", None)])
def test_scale_reads_the_environment(monkeypatch, raw, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("LLMBOOK_SCALE", raw)
    assert runtime.get_scale() == (expected or "cpu")


def test_unknown_scale_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("LLMBOOK_SCALE", "laptop")
    with pytest.raises(ValueError, match=r"LLMBOOK_SCALE='laptop' is not a known scale.*smoke, cpu, gpu"):
        runtime.get_scale()


def test_by_scale_picks_the_current_value(monkeypatch):
    for scale, expected in [("smoke", 1), ("cpu", 2), ("gpu", 3)]:
        monkeypatch.setenv("LLMBOOK_SCALE", scale)
        assert runtime.by_scale(smoke=1, cpu=2, gpu=3) == expected


def test_by_scale_requires_every_scale():
    with pytest.raises(TypeError):
        runtime.by_scale(smoke=1, cpu=2)  # type: ignore[call-arg]


def test_get_device_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "_mps_available", lambda: False)
    assert runtime.get_device() == torch.device("cpu")


def test_get_device_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(runtime, "_mps_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.get_device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.get_device() == torch.device("cuda")


def test_get_device_rejects_unavailable_or_unknown(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.get_device("cpu") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="'cuda' was requested but is not available"):
        runtime.get_device("cuda")
    with pytest.raises((ValueError, RuntimeError)):
        runtime.get_device("tpu")


def test_seed_everything_repeats_all_generators():
    import random

    import numpy as np

    def draw():
        return random.random(), float(np.random.rand()), torch.rand(2).tolist()

    assert runtime.seed_everything(123) == 123
    first = draw()
    runtime.seed_everything(123)
    assert draw() == first
    runtime.seed_everything(124)
    assert draw() != first


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True])
def test_seed_everything_rejects_bad_seeds(bad):
    with pytest.raises(ValueError, match="non-negative int"):
        runtime.seed_everything(bad)


def test_autocast_is_a_no_op_on_cpu():
    assert runtime.autocast_dtype("cpu") is None
    a = torch.randn(4, 4)
    with runtime.autocast("cpu"):
        assert (a @ a).dtype == torch.float32


def test_autocast_dtype_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert runtime.autocast_dtype("cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert runtime.autocast_dtype("cuda") == torch.float16


def test_run_dir_is_created_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = runtime.run_dir("finetune")
    assert path == runtime.Path("runs") / "finetune" and path.is_dir()
    monkeypatch.setenv("LLMBOOK_RUN_DIR", str(tmp_path / "elsewhere"))
    assert runtime.run_dir("x") == tmp_path / "elsewhere" / "x"


@pytest.mark.parametrize("bad", ["", "..", "a/b", "/abs"])
def test_run_dir_rejects_paths(bad):
    with pytest.raises(ValueError, match="plain folder name"):
        runtime.run_dir(bad)


def test_environment_report_names_what_produced_outputs(monkeypatch):
    monkeypatch.setenv("LLMBOOK_SCALE", "smoke")
    report = runtime.environment_report()
    for key in ("scale", "device", "python", "torch", "transformers", "llmbook", "date"):
        assert report[key], key
    assert report["scale"] == "smoke"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", report["date"])
    assert not any("/" in value and "site-packages" in value for value in report.values())
    text = runtime.format_report(report)
    assert text.splitlines()[0].startswith("scale") and ": smoke" in text
