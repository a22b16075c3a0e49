"""Tests of llmbook.lora: LoRA and bottleneck adapters by hand, checked against the peft library."""

import copy

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

from llmbook.lora import (
    Adapter,
    LoRALinear,
    apply_lora,
    insert_adapters,
    lora_layers,
    merge_lora,
    parameter_counts,
    peft_encoder,
)
from llmbook.textclf import MeanPoolingClassifier

LAYERS = 2


def tiny_bert(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=LAYERS, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=40)
    return BertModel(config).eval()


def tiny_classifier(seed: int = 0) -> MeanPoolingClassifier:
    return MeanPoolingClassifier(tiny_bert(seed), num_labels=3).eval()


def batch(seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, 60, (3, 7), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0  # one padded example
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def hidden(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).last_hidden_state


def randomise_lora(model: nn.Module, seed: int = 2) -> None:
    """Give every LoRA B a non-zero value, so that the update actually changes the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.1)


# ---------------------------------------------------------------------------------------------- LoRA


def test_lora_linear_starts_as_its_base_layer_and_trains_only_a_and_b():
    torch.manual_seed(0)
    base = nn.Linear(8, 5)
    x = torch.randn(4, 8)
    expected = base(x).detach()
    layer = LoRALinear(base, r=2, alpha=4)
    assert layer.lora_A.shape == (2, 8) and layer.lora_B.shape == (5, 2)
    assert layer.scaling == 2.0
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    layer(x).sum().backward()
    assert base.weight.grad is None and base.bias.grad is None
    assert layer.lora_B.grad is not None and layer.lora_B.grad.abs().sum() > 0


def test_zero_initialised_lora_leaves_model_outputs_unchanged():
    model = tiny_bert()
    inputs = batch()
    before = hidden(model, inputs)
    apply_lora(model, ["query", "value"], r=4, alpha=8)
    assert len(lora_layers(model)) == 2 * LAYERS
    torch.testing.assert_close(hidden(model, inputs), before, rtol=0, atol=0)


def test_lora_gives_the_same_outputs_as_peft_with_the_same_weights():
    from peft import LoraConfig, get_peft_model

    ours, theirs = tiny_bert(), tiny_bert()
    inputs = batch()
    base_output = hidden(ours, inputs)
    apply_lora(ours, ["query", "value"], r=4, alpha=8)
    randomise_lora(ours)
    theirs = get_peft_model(theirs, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    copied = 0
    for name, layer in lora_layers(ours).items():
        target = theirs.base_model.model.get_submodule(name)
        with torch.no_grad():
            target.lora_A["default"].weight.copy_(layer.lora_A)
            target.lora_B["default"].weight.copy_(layer.lora_B)
        copied += 1
    assert copied == 2 * LAYERS
    ours_output = hidden(ours, inputs)
    assert (ours_output - base_output).abs().max() > 1e-3  # the update really acts
    torch.testing.assert_close(ours_output, hidden(theirs.eval(), inputs), rtol=1e-6, atol=1e-6)


def test_merged_model_gives_the_same_outputs_with_the_original_parameter_count():
    model = tiny_bert()
    original = parameter_counts(model)["total"]
    inputs = batch()
    apply_lora(model, ["query", "value"], r=4, alpha=8)
    randomise_lora(model)
    assert parameter_counts(model)["total"] == original + 2 * LAYERS * (4 * 16 + 16 * 4)
    unmerged = hidden(model, inputs)
    merge_lora(model)
    assert not lora_layers(model)
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith(("query", "value")))
    assert parameter_counts(model)["total"] == original
    torch.testing.assert_close(hidden(model, inputs), unmerged, rtol=1e-5, atol=1e-6)


def test_merged_weight_is_w_plus_scaled_b_times_a():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(6, 4), r=2, alpha=6)
    with torch.no_grad():
        layer.lora_B.normal_()
    merged = layer.merged()
    torch.testing.assert_close(merged.weight, layer.base.weight + 3.0 * layer.lora_B @ layer.lora_A)
    torch.testing.assert_close(merged.bias, layer.base.bias)


def test_only_lora_parameters_and_named_modules_require_grad():
    model = tiny_classifier()
    apply_lora(model, ["query", "value"], r=4, alpha=8, trainable_modules=["classifier"])
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    lora = {name for name in trainable if name.endswith(("lora_A", "lora_B"))}
    assert len(lora) == 2 * 2 * LAYERS
    assert trainable - lora == {"classifier.weight", "classifier.bias"}
    counts = parameter_counts(model)
    assert counts["trainable"] == 2 * LAYERS * (4 * 16 + 16 * 4) + 16 * 3 + 3
    assert 0 < counts["percent"] < 100


def test_lora_without_trainable_modules_trains_lora_only():
    model = tiny_bert()
    apply_lora(model, "query", r=2)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(name.endswith(("lora_A", "lora_B")) for name in trainable)


@pytest.mark.parametrize("r", [0, -1])
def test_rank_below_one_is_refused(r):
    with pytest.raises(ValueError, match="r .*at least 1"):
        apply_lora(tiny_bert(), ["query"], r=r)
    with pytest.raises(ValueError, match="at least 1"):
        LoRALinear(nn.Linear(4, 4), r=r)


def test_non_integer_rank_is_refused():
    with pytest.raises(TypeError, match="integer"):
        apply_lora(tiny_bert(), ["query"], r=2.5)


def test_rank_above_the_layer_size_is_refused():
    with pytest.raises(ValueError, match="exceeds"):
        LoRALinear(nn.Linear(4, 3), r=4)


def test_target_that_matches_nothing_is_refused_with_the_linear_names():
    with pytest.raises(ValueError, match=r"'qeury' matches no module.*'query'"):
        apply_lora(tiny_bert(), ["qeury", "value"])


def test_non_linear_target_is_refused():
    with pytest.raises(TypeError, match="BertAttention, not an nn.Linear"):
        apply_lora(tiny_bert(), ["attention"])


def test_a_failed_apply_leaves_the_model_untouched():
    model = tiny_bert()
    with pytest.raises(TypeError):
        apply_lora(model, ["query", "attention"])
    assert not lora_layers(model)
    assert all(p.requires_grad for p in model.parameters())


def test_an_unknown_trainable_module_leaves_the_model_untouched():
    model = tiny_classifier()
    with pytest.raises(ValueError, match="'head' matches no module"):
        apply_lora(model, ["query"], trainable_modules="head")
    with pytest.raises(ValueError, match="'head' matches no module"):
        insert_adapters(model, trainable_modules="head")
    assert not lora_layers(model) and not any(isinstance(m, Adapter) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


def test_lora_applied_twice_is_refused():
    model = apply_lora(tiny_bert(), ["query"])
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model, ["query"])


@pytest.mark.parametrize("kwargs, match", [
    ({"alpha": 0}, "alpha"), ({"alpha": float("nan")}, "alpha"), ({"dropout": 1.0}, "dropout"),
    ({"target_modules": []}, "empty"), ({"trainable_modules": ["head"]}, "'head' matches no module"),
])
def test_bad_lora_arguments_are_refused(kwargs, match):
    kwargs = {"target_modules": ["query"], **kwargs}
    with pytest.raises(ValueError, match=match):
        apply_lora(tiny_bert(), **kwargs)


def test_merging_a_model_without_lora_is_refused():
    with pytest.raises(ValueError, match="nothing to merge"):
        merge_lora(tiny_bert())


def test_lora_linear_needs_a_linear():
    with pytest.raises(TypeError, match="nn.Linear"):
        LoRALinear(nn.Conv1d(2, 2, 1))


# ------------------------------------------------------------------------------------------ Adapters


def test_adapter_starts_as_the_identity_and_counts_its_parameters():
    adapter = Adapter(16, bottleneck_size=4)
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(adapter(x), x, rtol=0, atol=0)
    assert sum(p.numel() for p in adapter.parameters()) == 2 * 16 * 4 + 4 + 16


def test_insert_adapters_after_attention_and_ffn_outputs_keeps_outputs_at_init():
    model = tiny_classifier()
    inputs = batch()
    with torch.no_grad():
        before = model(**inputs).logits
    insert_adapters(model, bottleneck_size=4, trainable_modules=["classifier"])
    adapters = [name for name, m in model.named_modules() if isinstance(m, Adapter)]
    assert len(adapters) == 2 * LAYERS
    assert sum(name.endswith("attention.output.dense.1") for name in adapters) == LAYERS
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, before, rtol=0, atol=0)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= trainable
    assert all(".1." in n or "LayerNorm" in n or n.startswith("classifier") for n in trainable)
    assert not any("query" in n or "word_embeddings" in n for n in trainable)


def test_trained_adapters_change_the_outputs():
    model = tiny_bert()
    inputs = batch()
    before = hidden(model, inputs)
    insert_adapters(model, bottleneck_size=4)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, Adapter):
                module.up.weight.normal_()
    assert (hidden(model, inputs) - before).abs().max() > 1e-3


def test_insert_adapters_refuses_models_without_bert_blocks_and_second_insertion():
    with pytest.raises(ValueError, match="no BERT attention/feed-forward output blocks"):
        insert_adapters(nn.Sequential(nn.Linear(4, 4)))
    model = insert_adapters(tiny_bert(), bottleneck_size=2)
    with pytest.raises(ValueError, match="already has adapters"):
        insert_adapters(model)
    with pytest.raises(ValueError, match="at least 1"):
        insert_adapters(tiny_bert(), bottleneck_size=0)


# ---------------------------------------------------------------------------------- peft on the head


def test_peft_lora_on_the_encoder_equals_llmbook_lora_on_the_classifier():
    from peft import LoraConfig

    ours, theirs = tiny_classifier(), tiny_classifier()
    inputs = batch()
    apply_lora(ours, ["query", "value"], r=2, alpha=4, trainable_modules=["classifier"])
    randomise_lora(ours)
    peft_encoder(theirs, LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"]))
    base = theirs.base_model.peft_model.get_base_model()
    for name, layer in lora_layers(ours.base_model).items():
        target = base.get_submodule(name)
        with torch.no_grad():
            target.lora_A["default"].weight.copy_(layer.lora_A)
            target.lora_B["default"].weight.copy_(layer.lora_B)
    theirs.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs).logits, theirs(**inputs).logits, rtol=1e-6, atol=1e-6)
    assert parameter_counts(ours)["trainable"] == parameter_counts(theirs)["trainable"]


def test_prompt_tuning_through_peft_encoder_keeps_the_input_length_and_a_trainable_head():
    from peft import PromptTuningConfig

    model = tiny_classifier()
    config = PromptTuningConfig(num_virtual_tokens=5)
    peft_encoder(model, config)
    assert config.task_type is None  # the caller's config is left as it was
    inputs = batch()
    out = model.base_model(**inputs, token_type_ids=torch.zeros_like(inputs["input_ids"]))
    assert out.last_hidden_state.shape == (3, 7, 16)  # the 5 virtual positions are dropped
    logits = model(**inputs, labels=torch.tensor([0, 1, 2]))
    logits.loss.backward()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= trainable
    assert parameter_counts(model)["trainable"] == 5 * 16 + 16 * 3 + 3


def test_peft_encoder_refuses_wrong_inputs():
    from peft import LoraConfig

    with pytest.raises(TypeError, match="peft config"):
        peft_encoder(tiny_classifier(), {"r": 8})
    with pytest.raises(TypeError, match="no separate encoder"):
        peft_encoder(nn.Linear(2, 2), LoraConfig(target_modules=["query"]))
    model = peft_encoder(tiny_classifier(), LoraConfig(target_modules=["query"]))
    with pytest.raises(ValueError, match="already has peft"):
        peft_encoder(model, LoraConfig(target_modules=["query"]))


def test_lora_works_on_a_deep_copy():
    # The notebook deep-copies models to compare variants from identical weights.
    model = apply_lora(tiny_bert(), ["query"], r=2)
    clone = copy.deepcopy(model)
    inputs = batch()
    torch.testing.assert_close(hidden(clone, inputs), hidden(model, inputs), rtol=0, atol=0)
