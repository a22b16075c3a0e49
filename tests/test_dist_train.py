"""Tests of llmbook.dist_train: the command line and its errors, single-process training in-process, the
launcher's time limit and clean-up, and — with two gloo processes on the loopback interface — that DDP and
FSDP end where single-process training on the concatenated batch ends, and that the tensor-parallel MLP
equals the single-process one."""

import hashlib
import json
import time
import uuid
from pathlib import Path

import pytest
import torch

from llmbook import dist_train, parallel

TINY = ["--steps", "4", "--warmup-steps", "1", "--n-layer", "2", "--n-head", "2", "--n-embd", "32",
        "--block-size", "32", "--seed", "3", "--log-every", "2", "--threads", "1"]


@pytest.fixture
def run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMBOOK_RUN_DIR", str(tmp_path))
    for name in parallel.DIST_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def read_result(folder: Path) -> dict:
    return json.loads((folder / "result.json").read_text())


# --------------------------------------------------------------------------------- command line


def test_help_lists_the_modes_and_torchrun(capsys):
    with pytest.raises(SystemExit) as info:
        dist_train.main(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert "{single,ddp,fsdp}" in out and "torchrun --nproc_per_node=2" in out


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_distributed_modes_without_torchrun_fail_with_one_line(mode, run_folder, capsys):
    assert dist_train.main(["--mode", mode, *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("llmbook.dist_train: error:") and "torchrun" in err and "RANK" in err
    assert not list(run_folder.iterdir())  # nothing written


def test_single_mode_refuses_to_run_in_several_processes(run_folder, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert dist_train.main(["--mode", "single", *TINY]) == 2
    assert "use --mode ddp or fsdp" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "expected a positive integer"),
    (["--batch-size", "two"], "expected a positive integer"),
    (["--lr", "-1"], "expected a finite number >= 0"),
    (["--mode", "pipeline"], "invalid choice"),
])
def test_bad_options_are_rejected_by_argparse(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        dist_train.main(args)
    assert info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--steps", "3", "--warmup-steps", "3"], "--warmup-steps must be between 0 and --steps - 1 = 2"),
    (["--n-embd", "30", "--n-head", "4"], "--n-embd 30 is not divisible by --n-head 4"),
    (["--out", "a/b"], "--out must be a plain folder name"),
])
def test_inconsistent_options_fail_with_one_line(args, message, run_folder, capsys):
    assert dist_train.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_fails_with_one_line(run_folder, capsys):
    assert dist_train.main(["--device", "cuda", *TINY]) == 2
    assert "PyTorch sees no CUDA GPU" in capsys.readouterr().err


def test_a_file_in_the_way_of_the_run_folder_is_one_line(run_folder, capsys):
    (run_folder / "blocked").write_text("x")
    assert dist_train.main(["--out", "blocked", *TINY]) == 2
    assert "a file is in the way" in capsys.readouterr().err


# ------------------------------------------------------------------------------ single process


def test_single_mode_writes_a_reproducible_result(run_folder, capsys):
    threads_before = torch.get_num_threads()
    assert dist_train.main(["--mode", "single", "--batch-size", "4", "--out", "a", *TINY]) == 0
    out = capsys.readouterr().out
    assert "single: 1 process(es)" in out and "step    4  loss" in out and "tokens/s" in out
    result = read_result(run_folder / "a")
    params_bytes = (run_folder / "a" / "params.pt").read_bytes()
    assert result["params_sha256"] == hashlib.sha256(params_bytes).hexdigest()
    assert len(result["losses"]) == 4 and result["global_batch_size"] == 4 and result["timed_steps"] == 3
    assert result["losses"][-1] < result["losses"][0]
    memory = result["memory_per_process"][0]
    assert memory["parameters"] == 4 * result["n_parameters"] == memory["gradients"]
    assert memory["optimizer"] >= 2 * memory["parameters"] and memory["peak_rss"] > 0
    assert sorted(p.name for p in (run_folder / "a").iterdir()) == ["params.pt", "result.json"]  # no temp files
    assert result["threads_per_process"] == 1 and torch.get_num_threads() == threads_before  # restored

    assert dist_train.main(["--mode", "single", "--batch-size", "4", "--out", "b", *TINY]) == 0
    a = dist_train.load_params(run_folder / "a" / "params.pt")
    b = dist_train.load_params(run_folder / "b" / "params.pt")
    assert dist_train.max_param_difference(a, b) == 0.0  # fixed seed: the same run twice


def test_the_global_batch_is_the_concatenation_of_the_local_batches():
    data = torch.arange(1000)
    x, y = dist_train.global_batch(data, 2, 3, 8, torch.Generator().manual_seed(0))
    assert x.shape == (6, 8)
    torch.testing.assert_close(torch.cat([dist_train.local_rows(x, r, 3) for r in range(2)]), x)
    torch.testing.assert_close(y, x + 1)
    x1, _ = dist_train.global_batch(data, 1, 6, 8, torch.Generator().manual_seed(0))
    torch.testing.assert_close(x1, x)  # one process with the whole batch draws the same windows


def test_param_helpers_report_problems(tmp_path):
    with pytest.raises(FileNotFoundError, match="no parameters file"):
        dist_train.load_params(tmp_path / "params.pt")
    a = {"w": torch.zeros(2)}
    assert dist_train.max_param_difference(a, {"w": torch.tensor([0.0, 0.5])}) == 0.5
    with pytest.raises(ValueError, match="names differ"):
        dist_train.max_param_difference(a, {"v": torch.zeros(2)})
    with pytest.raises(ValueError, match="has shape"):
        dist_train.max_param_difference(a, {"w": torch.zeros(3)})


# ---------------------------------------------------------------------------------- launching


def test_launch_rejects_bad_arguments():
    with pytest.raises(ValueError, match="nproc must be a positive int"):
        dist_train.launch([], 0)
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        dist_train.launch([], None, timeout=0)
    port = dist_train.free_port()
    assert 1024 <= port <= 65535


def test_launch_reports_a_failed_program(run_folder):
    with pytest.raises(RuntimeError, match="exited with status 2; its output ends with:\n.*torchrun"):
        dist_train.launch(["--mode", "ddp"], None, timeout=120)
    result = dist_train.launch(["--mode", "ddp"], None, timeout=120, check=False)
    assert result.returncode == 2 and result.command == "python -m llmbook.dist_train --mode ddp"


def _processes_mentioning(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="inspects /proc to check that no process is left")
def test_launch_stops_every_process_at_the_time_limit():
    marker = f"llmbook-test-{uuid.uuid4().hex}"
    statement = f"import time; time.sleep(60)  # {marker}"
    start = time.perf_counter()
    with pytest.raises(TimeoutError, match="did not finish within 5 s and was stopped"):
        dist_train.launch(["-n", "1", "-r", "1", statement], 2, module="timeit", timeout=5)
    assert time.perf_counter() - start < 30
    assert _processes_mentioning(marker) == []  # torchrun and both workers are gone


# ------------------------------------------------------------------------- two gloo processes


def test_ddp_and_tensor_parallel_on_two_processes_equal_one_process(run_folder):
    """DDP with 2 x 4 windows ends where one process with the 8 concatenated windows ends; the Megatron
    MLP split over 2 processes computes the single-process MLP's output and gradients."""
    assert dist_train.main(["--mode", "single", "--batch-size", "8", "--out", "single", *TINY]) == 0
    ddp = dist_train.launch(["--mode", "ddp", "--batch-size", "4", "--out", "ddp", *TINY], 2, timeout=120)
    assert "ddp: 2 process(es), gloo communication" in ddp.output
    assert ddp.output.count("tokens/s") == 1  # only rank 0 prints
    single, distributed = read_result(run_folder / "single"), read_result(run_folder / "ddp")
    assert distributed["world_size"] == 2 and distributed["global_batch_size"] == single["global_batch_size"]
    torch.testing.assert_close(torch.tensor(distributed["losses"]), torch.tensor(single["losses"]))
    diff = dist_train.max_param_difference(dist_train.load_params(run_folder / "single" / "params.pt"),
                                           dist_train.load_params(run_folder / "ddp" / "params.pt"))
    assert diff < 1e-5
    assert [m["rank"] for m in distributed["memory_per_process"]] == [0, 1]

    tp = dist_train.launch(["--d-model", "16", "--out", "tp"], 2, module="llmbook.parallel", timeout=120)
    assert "tensor-parallel MLP on 2 processes" in tp.output
    processes = read_result(run_folder / "tp")["processes"]
    assert [p["rank"] for p in processes] == [0, 1]
    for p in processes:
        assert max(p["relative_differences"].values()) < 1e-5
        assert [(e["op"], e["direction"], e["numel"]) for e in p["communication"]] == [
            ("all_reduce", "forward", 4 * 8 * 16), ("all_reduce", "backward", 4 * 8 * 16)]
    torch.testing.assert_close(torch.tensor(processes[0]["output"]), torch.tensor(processes[1]["output"]))
    assert torch.tensor(processes[0]["column_output_slice"]).shape == (4, 8, 32)  # half of the 64 hidden units


def test_fsdp_on_two_processes_equals_one_process_and_halves_the_model_state(run_folder):
    assert dist_train.main(["--mode", "single", "--batch-size", "8", "--out", "single", *TINY]) == 0
    dist_train.launch(["--mode", "fsdp", "--batch-size", "4", "--out", "fsdp", *TINY], 2, timeout=120)
    single, fsdp = read_result(run_folder / "single"), read_result(run_folder / "fsdp")
    torch.testing.assert_close(torch.tensor(fsdp["losses"]), torch.tensor(single["losses"]))
    diff = dist_train.max_param_difference(dist_train.load_params(run_folder / "single" / "params.pt"),
                                           dist_train.load_params(run_folder / "fsdp" / "params.pt"))
    assert diff < 1e-5
    full = single["memory_per_process"][0]
    for shard in fsdp["memory_per_process"]:
        for kind in ("parameters", "gradients", "optimizer"):
            assert shard[kind] == pytest.approx(full[kind] / 2, rel=0.05), kind
    assert sum(m["parameters"] for m in fsdp["memory_per_process"]) >= full["parameters"]
