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


@pytest.mark.parametrize("name", ["CPU", " Cpu ", "cpu", torch.device("cpu")])
def test_get_device_reads_names_like_the_scale(monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.get_device(name) == torch.device("cpu")


def test_get_device_is_case_insensitive_for_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(runtime, "_mps_available", lambda: True)
    assert runtime.get_device(" Cuda ") == torch.device("cuda")
    assert runtime.get_device("CUDA:1") == torch.device("cuda", 1)
    assert runtime.get_device("MPS") == torch.device("mps")
    with pytest.raises(RuntimeError, match="has 2 CUDA device"):
        runtime.get_device("cuda:2")


@pytest.mark.parametrize("name", ["tpu", "gpu", "", "meta", torch.device("meta")])
def test_get_device_unknown_names_get_one_clear_error(name):
    with pytest.raises(ValueError, match=r"Unknown device .*use 'cpu', 'cuda' or 'mps'"):
        runtime.get_device(name)


@pytest.mark.parametrize("bad", [0, 1.0, ["cpu"]])
def test_get_device_rejects_values_that_are_not_names(bad):
    with pytest.raises(TypeError, match="device name such as 'cpu'"):
        runtime.get_device(bad)


def test_autocast_accepts_names_in_any_case():
    assert runtime.autocast_dtype("CPU") is None
    with runtime.autocast(" Cpu "):
        pass


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


@pytest.mark.parametrize("bad", [1.5, "0", True, None])
def test_seed_everything_rejects_seeds_that_are_not_integers(bad):
    with pytest.raises(TypeError, match="seed must be an integer"):
        runtime.seed_everything(bad)


@pytest.mark.parametrize("bad, message", [(-1, "at least 0"), (2**64, "at most 18446744073709551615")])
def test_seed_everything_rejects_seeds_out_of_range(bad, message):
    # 2**64 used to reach torch.manual_seed and fail there with "Overflow when unpacking long long"
    with pytest.raises(ValueError, match=f"seed must be {message}"):
        runtime.seed_everything(bad)


def test_seed_everything_accepts_the_whole_range():
    import numpy as np

    assert runtime.seed_everything(runtime.SEED_MAX) == 2**64 - 1
    assert runtime.seed_everything(np.int64(7)) == 7  # a NumPy integer is an integer
    assert torch.initial_seed() == 7


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


@pytest.mark.parametrize("bad", [5, None, b"runs"])
def test_run_dir_rejects_names_that_are_not_str(bad):
    with pytest.raises(TypeError, match="must be a str"):
        runtime.run_dir(bad)


def test_run_dir_says_when_a_file_is_in_the_way(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("x")
    monkeypatch.setenv("LLMBOOK_RUN_DIR", str(tmp_path / "a_file"))
    with pytest.raises(NotADirectoryError, match="a file is in the way"):
        runtime.run_dir("x")
    monkeypatch.setenv("LLMBOOK_RUN_DIR", str(tmp_path))
    with pytest.raises(NotADirectoryError, match="a file is in the way"):
        runtime.run_dir("a_file")


@pytest.mark.parametrize("bad", [{}, "scale: cpu"])
def test_format_report_rejects_what_is_not_a_report(bad):
    with pytest.raises(ValueError, match="non-empty dict"):
        runtime.format_report(bad)


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


def test_write_atomic_writes_bytes_or_through_a_function_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "state.pt"
    runtime.write_atomic(target, b"old")
    runtime.write_atomic(target, lambda handle: torch.save({"x": torch.arange(3)}, handle))
    assert torch.equal(torch.load(target, weights_only=True)["x"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "state.pt"
    runtime.write_atomic(target, b"complete")

    def fails_half_way(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        runtime.write_atomic(target, fails_half_way)
    assert target.read_bytes() == b"complete" and [p.name for p in tmp_path.iterdir()] == ["state.pt"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        runtime.write_atomic(tmp_path / "missing" / "x.pt", b"x")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        runtime.write_atomic(tmp_path, b"x")


def test_read_torch_file_names_the_file_and_the_remedy(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2)}, good)
    assert torch.equal(runtime.read_torch_file(good)["w"], torch.ones(2))
    remedy = "run chapter 9 first"
    with pytest.raises(FileNotFoundError, match=f"no model file at .*absent.pt: {remedy}"):
        runtime.read_torch_file(tmp_path / "absent.pt", what="model file", remedy=remedy)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=f"empty.pt is empty .*{remedy}"):
        runtime.read_torch_file(tmp_path / "empty.pt", remedy=remedy)
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:40])
    (tmp_path / "text.pt").write_text("not a checkpoint")
    for name in ("cut.pt", "text.pt"):
        with pytest.raises(ValueError, match=f"cannot read the model file .*{name}.*{remedy}") as info:
            runtime.read_torch_file(tmp_path / name, what="model file", remedy=remedy)
        assert "\n" not in str(info.value) and info.value.__cause__ is None
    np_scalar = tmp_path / "numpy.pt"
    torch.save({"metric": __import__("numpy").float64(0.5)}, np_scalar)
    with pytest.raises(ValueError, match="numpy.*weights_only=False"):
        runtime.read_torch_file(np_scalar)
    assert runtime.read_torch_file(np_scalar, weights_only=False)["metric"] == 0.5
    with pytest.raises(IsADirectoryError):
        runtime.read_torch_file(tmp_path)
