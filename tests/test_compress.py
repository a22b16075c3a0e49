"""Tests of llmbook.compress: pruning, head pruning, quantisation, ONNX Runtime, distillation, timing."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmbook import compress
from llmbook.textclf import MeanPoolingClassifier


def tiny_classifier(seed=0, layers=3):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    return MeanPoolingClassifier(BertModel(config), num_labels=3).eval()


def tiny_batch(n=5, seq=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 120, (n, seq), generator=g)
    mask = torch.ones(n, seq, dtype=torch.long)
    if n > 1:
        mask[1, seq // 2:] = 0  # padding in one row
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(n) % 3}


def logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_onnx_runtime_fp32_equals_pytorch_within_1e4_for_other_batch_sizes_and_lengths(tmp_path):
    pytest.importorskip("onnxruntime")
    model = tiny_classifier()
    path = compress.export_onnx(model, tmp_path / "tiny.onnx", seq_len=8)
    run = compress.ort_runner(compress.onnx_session(path, threads=1))
    for n, seq in [(1, 5), (5, 12)]:  # dynamic axes: neither matches the export's example
        batch = tiny_batch(n, seq)
        np.testing.assert_allclose(run(compress.numpy_batch(batch)), logits(model, batch).numpy(), atol=1e-4, rtol=0)
    assert not list(tmp_path.glob(".*tmp"))


def test_onnx_int8_is_smaller_and_close(tmp_path):
    pytest.importorskip("onnxruntime")
    model = tiny_classifier()
    fp32 = compress.export_onnx(model, tmp_path / "m.onnx")
    int8 = compress.quantize_onnx_int8(fp32, tmp_path / "m-int8.onnx")
    assert compress.size_on_disk(int8) < compress.size_on_disk(fp32)
    batch = compress.numpy_batch(tiny_batch())
    a = compress.ort_runner(compress.onnx_session(fp32))(batch)
    b = compress.ort_runner(compress.onnx_session(int8))(batch)
    assert a.shape == b.shape and np.abs(a - b).max() < 0.5


def test_magnitude_pruning_sparsity_is_exact_and_survives_training():
    model = tiny_classifier()
    names = compress.magnitude_prune(model, 0.3)
    prunable = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n in names]
    total = sum(m.weight.numel() for m in prunable)
    assert "classifier" not in names and all("pooler" not in n for n in names)
    assert compress.sparsity(model) == round(0.3 * total) / total
    head_before = model.classifier.weight.clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = tiny_batch()
    model.train()
    F.cross_entropy(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                    batch["labels"]).backward()
    optimizer.step()
    assert compress.sparsity(model) == round(0.3 * total) / total  # the mask keeps pruned weights at zero
    assert not torch.equal(head_before, model.classifier.weight)  # the head was trained, not pruned
    assert compress.make_pruning_permanent(model) == len(names)
    assert not any(n.endswith("_orig") for n, _ in model.named_parameters())
    assert compress.sparsity(model) == round(0.3 * total) / total


def test_magnitude_prune_permanent_and_bad_amounts():
    model = tiny_classifier()
    compress.magnitude_prune(model, 0.5, permanent=True)
    assert not any(n.endswith("_orig") for n, _ in model.named_parameters())
    for amount in (1.0, -0.1, "half", True):
        with pytest.raises(ValueError, match="fraction"):
            compress.magnitude_prune(tiny_classifier(), amount)


def test_pruning_heads_equals_zeroing_their_output_and_removes_parameters():
    model = tiny_classifier()
    batch = tiny_batch()
    reference = tiny_classifier()
    # Zero the heads' columns of the output projection: the same function as removing them.
    heads = {0: [1, 3], 2: [0]}
    size = 32 // 4
    for layer, remove in heads.items():
        dense = compress.encoder_layers(reference)[layer].attention.output.dense
        for h in remove:
            dense.weight.data[:, h * size:(h + 1) * size] = 0
    removed = compress.prune_heads(model, heads)
    assert removed == 3 * (3 * (32 * size + size) + 32 * size)
    torch.testing.assert_close(logits(model, batch), logits(reference, batch), atol=1e-5, rtol=1e-5)
    assert compress.encoder_layers(model)[0].attention.self.num_attention_heads == 2
    with pytest.raises(ValueError, match="keep at least one"):
        compress.prune_heads(model, {1: [0, 1, 2, 3]})
    with pytest.raises(ValueError, match="heads 0..1"):
        compress.prune_heads(model, {0: [2]})


def test_head_importance_and_choice_keep_a_head_per_layer():
    model = tiny_classifier()
    importance = compress.head_importance(model, [tiny_batch()])
    assert importance.shape == (3, 4) and bool((importance > 0).all())
    assert all(p.grad is None for p in model.parameters())
    chosen = compress.heads_to_prune(torch.tensor([[0.0, 0.1, 0.2, 0.3], [5, 6, 7, 8], [9, 9, 9, 9]]), 0.5)
    assert chosen == {0: [0, 1, 2], 1: [0, 1, 2]}
    assert sum(len(v) for v in chosen.values()) == 6


def test_dynamic_quantisation_copies_and_stays_close():
    model = tiny_classifier()
    quantized = compress.quantize_dynamic_int8(model)
    assert type(model.classifier) is torch.nn.Linear  # the original is untouched
    assert "quantized" in type(quantized.classifier).__module__
    assert compress.size_on_disk(quantized) < compress.size_on_disk(model)
    batch = tiny_batch()
    assert (logits(quantized, batch) - logits(model, batch)).abs().max() < 0.2


def test_distillation_loss_matches_its_formula():
    torch.manual_seed(0)
    s, t = torch.randn(6, 3), torch.randn(6, 3)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    T = 3.0
    p_t = F.softmax(t / T, dim=-1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / T, dim=-1))).sum(-1).mean()
    expected = 0.7 * T * T * kl + 0.3 * F.cross_entropy(s, y)
    torch.testing.assert_close(compress.distillation_loss(s, t, y, temperature=T, alpha=0.7), expected)
    assert float(compress.distillation_loss(t, t, temperature=T)) == pytest.approx(0, abs=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        compress.distillation_loss(s, t[:2])


def test_truncated_student_keeps_the_named_layers_and_learns_from_the_teacher():
    teacher = tiny_classifier()
    student = compress.truncated_student(teacher, [0, 2])
    assert len(compress.encoder_layers(student)) == 2 and len(compress.encoder_layers(teacher)) == 3
    torch.testing.assert_close(compress.encoder_layers(student)[1].output.dense.weight,
                               compress.encoder_layers(teacher)[2].output.dense.weight)
    teacher = tiny_classifier(seed=1)  # a different teacher with confident outputs: something to learn
    teacher.classifier.weight.data *= 30
    batch = tiny_batch()
    before = float(compress.distillation_loss(logits(student, batch), logits(teacher, batch), temperature=2.0))
    losses = compress.distill(student, teacher, [batch] * 10, epochs=2, lr=1e-3, alpha=1.0, progress=False)
    after = float(compress.distillation_loss(logits(student, batch), logits(teacher, batch), temperature=2.0))
    assert len(losses) == 20 and after < before
    with pytest.raises(ValueError, match="keep_layers"):
        compress.truncated_student(teacher, [3])


def test_benchmark_and_evaluate_runner_shapes():
    model = tiny_classifier()
    run = compress.torch_runner(model)
    single = [compress.numpy_batch(tiny_batch(1, 6, seed=i)) for i in range(3)]
    big = compress.numpy_batch(tiny_batch(5))
    table = compress.benchmark({"a": run, "b": run}, single, big, rounds=2, warmup=1)
    assert list(table.index) == ["a", "b"] and list(table.columns) == ["p50_ms", "p95_ms", "throughput"]
    assert bool((table > 0).all().all())
    scores = compress.evaluate_runner(run, [tiny_batch(), tiny_batch(seed=1)])
    assert scores["logits"].shape == (10, 3) and 0 <= scores["macro_f1"] <= 1


def test_size_on_disk_and_bad_inputs(tmp_path):
    model = tiny_classifier()
    n_bytes = compress.size_on_disk(model)
    assert n_bytes > 4 * sum(p.numel() for p in model.parameters())
    file = tmp_path / "x.bin"
    file.write_bytes(b"12345")
    assert compress.size_on_disk(file) == 5
    with pytest.raises(TypeError, match="nn.Module or a file path"):
        compress.size_on_disk(3)
    with pytest.raises(KeyError, match="input_ids"):
        compress.numpy_batch({"input_ids": [1]})


def test_onnx_session_turns_spinning_off_by_default(tmp_path, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    entries = []
    real = ort.SessionOptions.add_session_config_entry
    monkeypatch.setattr(ort.SessionOptions, "add_session_config_entry",
                        lambda self, key, value: entries.append((key, value)) or real(self, key, value))
    path = compress.export_onnx(tiny_classifier(), tmp_path / "m.onnx")
    compress.onnx_session(path)
    assert ("session.intra_op.allow_spinning", "0") in entries
    entries.clear()
    compress.onnx_session(path, spinning=True)
    assert entries == []
