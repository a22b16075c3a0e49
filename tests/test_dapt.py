"""Domain-adaptive MLM pretraining helpers (llmbook.dapt) with the book's loop."""

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

from llmbook import dapt
from llmbook.bert import IGNORE_INDEX
from llmbook.pretrained import bundled_checkpoint_path
from llmbook.textclf import TextClassificationDataset, make_loader
from llmbook.train import fit

TEXTS = [
    "Apple shares rise after earnings beat estimates https://t.co/abc",
    "Fed signals two more rate hikes this year",
    "Oil prices fall as OPEC output climbs",
    "Goldman downgrades Tesla to sell, citing margins",
] * 4


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(bundled_checkpoint_path())


@pytest.fixture
def tiny_mlm(tokenizer):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    return BertForMaskedLM(config)


def test_overlap_key_catches_near_duplicates():
    a = "Stocks SLIDE as yields jump https://t.co/AAA"
    b = "stocks slide as yields jump!  https://t.co/BBB"
    assert dapt.overlap_key(a) == dapt.overlap_key(b)
    kept, dropped = dapt.drop_overlap([a, "something else"], [b])
    assert kept == ["something else"] and dropped == 1
    with pytest.raises(TypeError, match="not one str"):
        dapt.drop_overlap("one text", [b])


def test_collator_gives_flat_labels_at_the_masked_positions(tokenizer):
    encoded = tokenizer(TEXTS[:4])
    rows = [{k: encoded[k][i] for k in encoded} | {"labels": 1} for i in range(4)]
    batch = dapt.MaskedLMCollator(tokenizer, mlm_probability=0.5, seed=1)(rows)
    original = dapt.MaskedLMCollator(tokenizer, mlm_probability=0.5, seed=1).pad(
        [{k: v for k, v in r.items() if k != "labels"} for r in rows])["input_ids"]
    positions = batch["mlm_positions"]
    assert positions.dtype == torch.bool and positions.shape == batch["input_ids"].shape
    assert batch["labels"].ndim == 1 and batch["labels"].numel() == int(positions.sum()) > 0
    assert torch.equal(batch["labels"], original[positions])
    assert not positions[original == tokenizer.cls_token_id].any()
    assert not positions[original == tokenizer.pad_token_id].any()
    again = dapt.MaskedLMCollator(tokenizer, mlm_probability=0.5, seed=1)(rows)
    assert torch.equal(again["input_ids"], batch["input_ids"])  # seeded


def test_masked_positions_model_matches_the_full_mlm_logits(tokenizer, tiny_mlm):
    encoded = tokenizer(TEXTS[:3])
    rows = [{k: encoded[k][i] for k in encoded} for i in range(3)]
    batch = dapt.MaskedLMCollator(tokenizer, seed=0)(rows)
    tiny_mlm.eval()
    wrapped = dapt.MaskedPositionsModel(tiny_mlm)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = wrapped(**inputs)
    full = tiny_mlm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(logits, full[batch["mlm_positions"]], atol=1e-5)
    labels = torch.where(batch["mlm_positions"], batch["input_ids"], IGNORE_INDEX)
    assert logits.shape == (int(batch["mlm_positions"].sum()), len(tokenizer)) and labels.shape == full.shape[:2]


def test_fit_trains_the_mlm_and_lowers_the_held_out_loss(tokenizer, tiny_mlm):
    before = dapt.masked_lm_loss(tiny_mlm, TEXTS, tokenizer, seed=3)
    assert before == dapt.masked_lm_loss(tiny_mlm, TEXTS, tokenizer, seed=3)  # same masks, same loss
    dataset = TextClassificationDataset(TEXTS, [0] * len(TEXTS), tokenizer, max_length=32)
    loader = make_loader(dataset, dapt.MaskedLMCollator(tokenizer, seed=0), batch_size=8, shuffle=True)
    fit(dapt.MaskedPositionsModel(tiny_mlm), loader, epochs=15, lr=3e-3, progress=False, warmup_ratio=0.0)
    after = dapt.masked_lm_loss(tiny_mlm, TEXTS, tokenizer, seed=3)
    assert after["loss"] < before["loss"] - 1.0
    assert before["perplexity"] == pytest.approx(2.718281828 ** before["loss"])


def test_load_masked_lm_names_the_missing_head_of_the_bundled_checkpoint():
    model, missing = dapt.load_masked_lm(bundled_checkpoint_path())
    assert "cls.predictions.transform.dense.weight" in missing
    assert not any(name.startswith("bert.") for name in missing)  # the encoder is complete
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight  # tied
    with pytest.raises(ValueError, match="is not a checkpoint folder"):
        dapt.load_masked_lm("no/such/folder")
    with pytest.raises(ValueError, match="is not a checkpoint folder"):
        dapt.load_masked_lm("./missing")


def test_load_masked_lm_draws_the_new_head_from_its_seed_and_leaves_the_callers_random_state():
    path = bundled_checkpoint_path()
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first, _ = dapt.load_masked_lm(path, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's stream is untouched
    again, _ = dapt.load_masked_lm(path, seed=5)
    other, _ = dapt.load_masked_lm(path, seed=6)
    head = "cls.predictions.transform.dense.weight"
    assert torch.equal(first.state_dict()[head], again.state_dict()[head])
    assert not torch.equal(first.state_dict()[head], other.state_dict()[head])
    with pytest.raises(ValueError, match="seed must be at least 0"):
        dapt.load_masked_lm(path, seed=-1)
    assert hf_logging.get_verbosity() == verbosity  # a refused call leaves transformers' logging as it was


def test_masked_lm_loss_checks_its_texts(tokenizer, tiny_mlm):
    with pytest.raises(ValueError, match="non-empty list"):
        dapt.masked_lm_loss(tiny_mlm, [], tokenizer)
