"""Tests of llmbook.parallel in one process: memory meters, checkpointing, tensor-parallel layers (which are
ordinary linear layers without a process group), communication formulas, the GPipe simulation and the
command line. The two-process checks are in tests/test_dist_train.py."""

import json
import math

import pytest
import torch
from torch import nn

from llmbook import arch, gpt, parallel


def tiny_gpt(block_size=32, n_embd=32, n_layer=2):
    torch.manual_seed(0)
    return gpt.GPT(gpt.GPTConfig(vocab_size=65, block_size=block_size, n_layer=n_layer, n_head=2, n_embd=n_embd))


def batch(model, b=4, generator_seed=0):
    g = torch.Generator().manual_seed(generator_seed)
    t = model.config.block_size
    return torch.randint(65, (b, t), generator=g), torch.randint(65, (b, t), generator=g)


# ------------------------------------------------------------------------------------------ memory


def test_tensor_bytes_counts_each_storage_once_and_skips_non_tensors():
    a, b = torch.zeros(10), torch.zeros(3, dtype=torch.float64)
    assert parallel.tensor_bytes([a, a[2:5], a.view(2, 5), None, 3, b]) == 40 + 24
    assert parallel.tensor_bytes([]) == 0


def test_model_state_bytes_after_an_adamw_step():
    model = nn.Linear(10, 5)
    opt = torch.optim.AdamW(model.parameters())
    assert parallel.model_state_bytes(model, opt) == {"parameters": 220, "gradients": 0, "optimizer": 0, "total": 220}
    model(torch.randn(2, 10)).sum().backward()
    opt.step()
    state = parallel.model_state_bytes(model, opt)
    # AdamW: two fp32 moments per parameter and one step counter per parameter tensor
    assert state == {"parameters": 220, "gradients": 220, "optimizer": 440 + 2 * 4, "total": 888}
    assert parallel.model_state_bytes(model)["optimizer"] == 0


def test_model_state_bytes_counts_tied_weights_once():
    model = tiny_gpt()
    assert parallel.model_state_bytes(model)["parameters"] == 4 * model.num_params()


def test_model_state_bytes_rejects_wrong_types():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        parallel.model_state_bytes("model")
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        parallel.model_state_bytes(nn.Linear(2, 2), optimizer={"lr": 1})


def test_saved_tensors_meter_counts_activations_not_weights():
    x = torch.randn(100, requires_grad=True)
    with parallel.SavedTensorsMeter() as meter:
        torch.sin(x)  # sin keeps its input for the backward pass
    assert meter.bytes == 400
    layer = nn.Linear(50, 50)
    inp = torch.randn(8, 50, requires_grad=True)
    with parallel.SavedTensorsMeter(exclude=layer.parameters()) as meter:
        layer(inp)
    assert meter.bytes == inp.numel() * 4
    with parallel.SavedTensorsMeter() as meter, torch.no_grad():
        torch.sin(x)
    assert meter.bytes == 0


def test_saved_tensors_meter_agrees_with_arch_activation_memory():
    """The measured activations of the GPT are within 10 % of llmbook.arch's formula (fp32, fused attention)."""
    model = tiny_gpt(block_size=64, n_embd=64, n_layer=2)
    x, y = batch(model, b=4)
    with parallel.SavedTensorsMeter(exclude=model.parameters()) as meter:
        model(x, y)
    cfg = arch.TransformerConfig(vocab_size=65, context_length=64, d_model=64, n_layers=2, n_heads=2)
    predicted = arch.activation_memory(cfg, 4, 64, "fp32", flash_attention=True)
    assert meter.bytes == pytest.approx(predicted, rel=0.1)


def test_memory_meter_follows_allocations_and_frees():
    with parallel.MemoryMeter() as meter:
        a = torch.ones(1000)
        view = a[:10]  # a view allocates nothing
        b = a * 2
        del b
        c = torch.zeros(250)
    assert meter.peak == 8000 and meter.current == 5000
    del a, view, c
    assert meter.current == 0


def test_memory_meter_does_not_count_views_of_memory_allocated_before():
    weight = torch.ones(1000)
    with parallel.MemoryMeter() as meter:
        weight.t()  # a view, as a linear layer takes of its weight
        weight[:10]
        weight.add_(1)  # in place
        torch.ones(10)
    assert meter.peak == 40


def test_memory_meter_sees_the_saving_of_checkpointing():
    peaks = {}
    for name in ("plain", "checkpointed"):
        model = tiny_gpt(block_size=64, n_embd=64, n_layer=4)
        if name == "checkpointed":
            parallel.checkpoint_blocks(model.blocks)
        x, y = batch(model)
        with parallel.MemoryMeter() as meter:
            model(x, y)[1].backward()
        peaks[name] = meter.peak
    assert peaks["checkpointed"] < 0.7 * peaks["plain"]


def test_peak_rss_bytes_is_a_plausible_size():
    rss = parallel.peak_rss_bytes()
    assert rss is None or 10 * 2**20 < rss < 2**40


# ---------------------------------------------------------------------------------- checkpointing


def test_checkpointed_blocks_give_the_same_loss_and_gradients():
    plain, ckpt = tiny_gpt(), tiny_gpt()
    assert parallel.checkpoint_blocks(ckpt.blocks) is ckpt.blocks
    parallel.checkpoint_blocks(ckpt.blocks)  # a second call wraps nothing twice
    assert all(isinstance(b, parallel.CheckpointedBlock) and not isinstance(b.block, parallel.CheckpointedBlock)
               for b in ckpt.blocks)
    x, y = batch(plain)
    losses = []
    for model in (plain, ckpt):
        loss = model(x, y)[1]
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1])
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    ckpt.eval()
    with torch.no_grad():
        torch.testing.assert_close(ckpt(x)[0], plain.eval()(x)[0])


def test_checkpointing_rejects_wrong_types():
    with pytest.raises(TypeError, match="ModuleList"):
        parallel.checkpoint_blocks([nn.Linear(2, 2)])
    with pytest.raises(TypeError, match="nn.Module"):
        parallel.CheckpointedBlock(lambda x: x)


# ----------------------------------------------------------------------------- tensor parallelism


def test_parallel_layers_on_one_process_are_the_full_layers():
    torch.manual_seed(0)
    fc, proj = nn.Linear(8, 32), nn.Linear(32, 8)
    x = torch.randn(2, 3, 8)
    column = parallel.ColumnParallelLinear.from_linear(fc, gather_output=True)
    row = parallel.RowParallelLinear.from_linear(proj, input_is_parallel=False)
    mlp = parallel.ParallelMLP.from_mlp(fc, proj)
    assert (column.rank, column.world_size, row.weight.shape) == (0, 1, (8, 32))
    with parallel.count_communication() as log:
        torch.testing.assert_close(column(x), fc(x))
        torch.testing.assert_close(row(fc(x)), proj(fc(x)))
        torch.testing.assert_close(mlp(x), proj(torch.nn.functional.gelu(fc(x))))
    assert log == []  # one process: nothing to communicate
    assert "rank=0/1" in repr(column) and "rank=0/1" in repr(row)


def test_parallel_layers_train_like_linear_layers():
    torch.manual_seed(0)
    layer = parallel.ColumnParallelLinear(4, 6, bias=False)
    assert layer.bias is None and layer.weight.shape == (6, 4)
    x = torch.randn(5, 4, requires_grad=True)
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(5, 4))


def test_parallel_layers_reject_bad_arguments():
    with pytest.raises(TypeError, match="nn.Linear"):
        parallel.ColumnParallelLinear.from_linear(nn.Conv1d(2, 2, 1))
    with pytest.raises(TypeError, match="nn.Linear"):
        parallel.RowParallelLinear.from_linear("layer")
    with pytest.raises(ValueError, match="in_features must be at least 1"):
        parallel.ColumnParallelLinear(0, 4)
    with pytest.raises(ValueError, match="expects 4"):
        parallel.ColumnParallelLinear(4, 8)(torch.randn(2, 3))
    with pytest.raises(ValueError, match="check input_is_parallel"):
        parallel.RowParallelLinear(8, 4)(torch.randn(2, 3))
    column, row = parallel.ColumnParallelLinear(4, 16), parallel.RowParallelLinear(16, 4)
    with pytest.raises(TypeError, match="gather_output=False"):
        parallel.ParallelMLP(parallel.ColumnParallelLinear(4, 16, gather_output=True), row)
    with pytest.raises(TypeError, match="input_is_parallel=True"):
        parallel.ParallelMLP(column, parallel.RowParallelLinear(16, 4, input_is_parallel=False))
    with pytest.raises(ValueError, match="expects 8 inputs"):
        parallel.ParallelMLP(column, parallel.RowParallelLinear(8, 4))


def test_tensor_parallel_check_on_one_process():
    result = parallel.tensor_parallel_check(batch=2, seq_len=3, d_model=8, seed=1)
    assert result["world_size"] == 1 and result["communication"] == []
    assert max(result["relative_differences"].values()) < 1e-6
    assert torch.tensor(result["output"]).shape == (2, 3, 8)
    assert torch.tensor(result["column_output_slice"]).shape == (2, 3, 32)
    with pytest.raises(ValueError, match="d_model must be at least 1"):
        parallel.tensor_parallel_check(d_model=0)


def test_communication_formulas():
    assert parallel.ring_allreduce_bytes(1000, 1) == 0
    assert parallel.ring_allreduce_bytes(1000, 2) == 4000
    assert parallel.ring_allreduce_bytes(1000, 8, 2) == pytest.approx(2 * 7 / 8 * 2000)
    assert parallel.megatron_mlp_comm_values(2, 3, 4) == {"forward": 24, "backward": 24}
    ddp = parallel.data_parallel_comm_bytes(10**6, 4)
    assert ddp == parallel.ring_allreduce_bytes(10**6, 4)
    assert parallel.data_parallel_comm_bytes(10**6, 4, sharded=True) == pytest.approx(1.5 * ddp)
    with pytest.raises(ValueError, match="world_size must be at least 1"):
        parallel.ring_allreduce_bytes(10, 0)
    with pytest.raises(TypeError, match="n_values must be an integer"):
        parallel.ring_allreduce_bytes(1.5, 2)
    with pytest.raises(ValueError, match="seq_len must be at least 1"):
        parallel.megatron_mlp_comm_values(1, 0, 4)
    with pytest.raises(ValueError, match="n_params must be at least 0"):
        parallel.data_parallel_comm_bytes(-1, 2)


# ------------------------------------------------------------------------------------------ GPipe


@pytest.mark.parametrize("p, m", [(1, 1), (1, 4), (2, 1), (4, 4), (4, 8), (3, 16)])
def test_gpipe_simulation_matches_the_bubble_formula(p, m):
    tf, tb = 1.0, 2.0
    tasks = parallel.gpipe_schedule(p, m, tf, tb)
    assert len(tasks) == 2 * p * m
    assert max(t.end for t in tasks) == pytest.approx((m + p - 1) * (tf + tb))
    assert parallel.simulated_bubble_fraction(tasks) == pytest.approx(parallel.bubble_fraction(p, m))
    assert parallel.bubble_fraction(p, m) == pytest.approx((p - 1) / (m + p - 1))
    end = {(t.kind, t.stage, t.microbatch): t.end for t in tasks}
    for t in tasks:
        if t.kind == "F" and t.stage > 0:
            assert t.start >= end["F", t.stage - 1, t.microbatch]
        if t.kind == "B":
            assert t.start >= end["F", t.stage, t.microbatch]
            if t.stage < p - 1:
                assert t.start >= end["B", t.stage + 1, t.microbatch]
    for s in range(p):  # a stage does one thing at a time
        spans = sorted((t.start, t.end) for t in tasks if t.stage == s)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def test_gpipe_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_stages must be at least 1"):
        parallel.gpipe_schedule(0, 4)
    with pytest.raises(ValueError, match="backward_time must be a positive number"):
        parallel.gpipe_schedule(2, 4, backward_time=0)
    with pytest.raises(ValueError, match="forward_time must be a positive number"):
        parallel.gpipe_schedule(2, 4, forward_time=math.nan)
    with pytest.raises(TypeError, match="n_microbatches must be an integer"):
        parallel.bubble_fraction(2, 1.5)
    with pytest.raises(ValueError, match="tasks is empty"):
        parallel.simulated_bubble_fraction([])


# -------------------------------------------------------------------------- launch environment, files


def test_distributed_env_names_what_is_missing(monkeypatch):
    for name in parallel.DIST_ENV_VARS:
        monkeypatch.setenv(name, "0")
    assert parallel.distributed_env()["RANK"] == "0"
    monkeypatch.delenv("MASTER_PORT")
    with pytest.raises(parallel.LaunchError, match=r"missing: MASTER_PORT\); run: torchrun") as info:
        parallel.distributed_env("llmbook.parallel")
    assert "\n" not in str(info.value)


def test_write_atomic_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "result.json"
    parallel.write_atomic(target, b"old")
    parallel.write_atomic(target, b"new")
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["result.json"]
    with pytest.raises(FileNotFoundError):
        parallel.write_atomic(tmp_path / "missing" / "x.json", b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_command_line_help_and_errors(capsys, monkeypatch):
    with pytest.raises(SystemExit) as info:
        parallel.main(["--help"])
    assert info.value.code == 0 and "torchrun --nproc_per_node=2" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        parallel.main(["--batch", "0"])
    assert info.value.code == 2 and "expected a positive integer" in capsys.readouterr().err
    for name in parallel.DIST_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    assert parallel.main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "must be started by torchrun" in err


def test_command_line_rejects_a_bad_run_folder(capsys, monkeypatch, tmp_path):
    for name in parallel.DIST_ENV_VARS:
        monkeypatch.setenv(name, "0")
    monkeypatch.setenv("LLMBOOK_RUN_DIR", str(tmp_path))
    assert parallel.main(["--out", "a/b"]) == 2
    assert "plain folder name" in capsys.readouterr().err


def test_result_json_is_valid_for_one_process(tmp_path):
    # The JSON the command writes holds this structure; check it serialises.
    result = parallel.tensor_parallel_check(batch=1, seq_len=2, d_model=4)
    assert json.loads(json.dumps(result))["relative_differences"]["output"] < 1e-6
