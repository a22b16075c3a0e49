"""Tests of llmbook.bert: equality with transformers.BertModel, masking statistics, NSP pairs, errors."""

from __future__ import annotations

import json

import pytest
import torch

from llmbook import bert
from llmbook.bert import IGNORE_INDEX, BertConfig, BertForPreTraining, BertModel, mask_tokens

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def checkpoint():
    from llmbook.pretrained import PretrainedUnavailableError, bundled_checkpoint_path

    try:
        return bundled_checkpoint_path()
    except PretrainedUnavailableError as exc:  # pragma: no cover - the package is in requirements.txt
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def models(checkpoint):
    reference = transformers.BertModel.from_pretrained(checkpoint).eval()
    ours = BertModel.from_pretrained(checkpoint)
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    return reference, ours, tokenizer


def _compare(reference, ours, **batch):
    with torch.no_grad():
        expected = reference(**batch)
        hidden, pooled = ours(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
    torch.testing.assert_close(hidden, expected.last_hidden_state, atol=1e-4, rtol=0)
    torch.testing.assert_close(pooled, expected.pooler_output, atol=1e-4, rtol=0)


def test_equal_to_transformers_with_padding(models):
    reference, ours, tokenizer = models
    batch = tokenizer(
        ["BERT reads in both directions.", "A much longer sentence, so that the first one needs padding here."],
        padding=True,
        return_tensors="pt",
    )
    assert (batch["attention_mask"] == 0).any()
    _compare(reference, ours, **batch)


def test_equal_to_transformers_on_sentence_pairs(models):
    reference, ours, tokenizer = models
    batch = tokenizer(
        ["The cat sat on the mat.", "Attention is all you need?"],
        ["It was warm there.", "Not quite: feed-forward layers matter too, and so does normalisation."],
        padding=True,
        return_tensors="pt",
    )
    assert (batch["token_type_ids"] == 1).any()
    _compare(reference, ours, **batch)


def test_equal_to_transformers_at_512_tokens(models):
    reference, ours, _ = models
    ids = torch.randint(1000, 30000, (1, 512), generator=torch.Generator().manual_seed(0))
    ids[0, 0], ids[0, -1] = 101, 102
    _compare(reference, ours, input_ids=ids, attention_mask=torch.ones_like(ids))


def test_attentions_match_eager_transformers(checkpoint, models):
    _, ours, tokenizer = models
    eager = transformers.BertModel.from_pretrained(checkpoint, attn_implementation="eager").eval()
    batch = tokenizer(["the bank of the river", "a bank account"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = eager(**batch, output_attentions=True).attentions
        *_, got = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], output_attentions=True)
    assert len(got) == len(expected) == ours.config.num_hidden_layers
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_too_long_input_is_refused(models):
    _, ours, _ = models
    with pytest.raises(ValueError, match="max_position_embeddings"):
        ours(torch.ones(1, 513, dtype=torch.long))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"input_ids": torch.ones(2, 3)}, "integer"),
        ({"input_ids": torch.ones(3, dtype=torch.long)}, r"\(batch, length\)"),
        ({"input_ids": torch.full((1, 3), 99, dtype=torch.long)}, r"\[0, 50\)"),
        ({"input_ids": torch.ones(1, 3, dtype=torch.long), "token_type_ids": torch.full((1, 3), 2)}, "token_type_ids"),
        ({"input_ids": torch.ones(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 4)}, "attention_mask"),
    ],
)
def test_bad_inputs(kwargs, match):
    model = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=8))
    with pytest.raises((ValueError, TypeError), match=match):
        model(**kwargs)


def test_bad_configs():
    with pytest.raises(ValueError, match="divisible"):
        BertConfig(hidden_size=10, num_attention_heads=3)
    with pytest.raises(ValueError, match="'gpt2' model"):
        BertConfig.from_dict({"model_type": "gpt2", "vocab_size": 5})
    with pytest.raises(ValueError, match="lacks BERT fields"):
        BertConfig.from_dict({"model_type": "bert"})


def _tiny_folder(tmp_path, state_dict, config):
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", **config}))
    save_file({k: v.clone().contiguous() for k, v in state_dict.items()}, str(tmp_path / "model.safetensors"))
    return tmp_path


TINY = {"vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 32, "max_position_embeddings": 16}


def test_round_trip_from_a_transformers_checkpoint_with_heads(tmp_path):
    torch.manual_seed(0)
    reference = transformers.BertForPreTraining(transformers.BertConfig(**TINY)).eval()
    # names carry "bert." and "cls." prefixes; old TensorFlow-era files call LayerNorm's parameters gamma/beta
    state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in reference.state_dict().items()}
    folder = _tiny_folder(tmp_path, state, TINY)
    ours = BertModel.from_pretrained(folder)
    ids = torch.randint(0, 40, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids)[0], reference.bert(ids).last_hidden_state, atol=1e-5, rtol=0)


def test_missing_and_unexpected_weights_are_listed(tmp_path):
    reference = transformers.BertModel(transformers.BertConfig(**TINY))
    state = reference.state_dict()
    del state["encoder.layer.1.output.dense.weight"]
    state["encoder.layer.7.output.dense.weight"] = torch.zeros(16, 32)
    folder = _tiny_folder(tmp_path, state, TINY)
    with pytest.raises(ValueError, match=r"layer\.7\.output\.dense\.weight"):
        BertModel.from_pretrained(folder)
    del state["encoder.layer.7.output.dense.weight"]
    folder = _tiny_folder(tmp_path, state, TINY)
    with pytest.raises(ValueError, match=r"missing weights: \['layers\.1\.ffn_out\.weight'\]"):
        BertModel.from_pretrained(folder)


def test_not_a_bert_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 10, "n_embd": 8}))
    with pytest.raises(ValueError, match="not a BERT"):
        BertModel.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        BertModel.from_pretrained(tmp_path / "nowhere")


SPECIAL = [0, 101, 102]  # [PAD], [CLS], [SEP]
MASK = 103


def _sample_ids(n=400, length=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30522, (n, length), generator=g)
    ids[:, 0], ids[:, -1], ids[:, 60] = 101, 102, 102
    ids[: n // 2, 100:] = 0  # padding
    return ids


def test_mask_tokens_statistics():
    ids = _sample_ids()
    masked, labels = mask_tokens(ids, mask_token_id=MASK, vocab_size=30522, special_ids=SPECIAL,
                                 generator=torch.Generator().manual_seed(1))
    special = torch.isin(ids, torch.tensor(SPECIAL))
    chosen = labels != IGNORE_INDEX
    assert not (chosen & special).any(), "a special token was chosen"
    assert torch.equal(masked[special], ids[special])
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(masked[~chosen], ids[~chosen]), "an unchosen token was changed"
    n = int(chosen.sum())
    assert abs(n / int((~special).sum()) - 0.15) < 0.005
    share_mask = float((masked[chosen] == MASK).float().mean())
    share_same = float((masked[chosen] == ids[chosen]).float().mean())
    share_random = 1 - share_mask - share_same
    assert abs(share_mask - 0.8) < 0.01 and abs(share_same - 0.1) < 0.01 and abs(share_random - 0.1) < 0.01
    replaced = masked[chosen & (masked != MASK) & (masked != ids)]
    assert not torch.isin(replaced, torch.tensor(SPECIAL + [MASK])).any()


def test_mask_tokens_is_seeded_and_respects_special_tokens_mask():
    ids = _sample_ids(n=20)
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    a = mask_tokens(ids, mask_token_id=MASK, vocab_size=30522, generator=g())
    b = mask_tokens(ids, mask_token_id=MASK, vocab_size=30522, generator=g())
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[:, :64] = True
    _, labels = mask_tokens(ids, mask_token_id=MASK, vocab_size=30522, special_tokens_mask=keep, mlm_probability=1.0)
    assert (labels[:, :64] == IGNORE_INDEX).all() and (labels[20 // 2 :, 64:] != IGNORE_INDEX).sum() > 0


def test_mask_tokens_errors():
    ids = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(TypeError, match="integer"):
        mask_tokens(ids.float(), mask_token_id=MASK, vocab_size=30522)
    with pytest.raises(ValueError, match="mlm_probability"):
        mask_tokens(ids, mask_token_id=MASK, vocab_size=30522, mlm_probability=0)
    with pytest.raises(ValueError, match="vocabulary"):
        mask_tokens(ids, mask_token_id=99, vocab_size=50)
    with pytest.raises(ValueError, match="special_tokens_mask"):
        mask_tokens(ids, mask_token_id=3, vocab_size=50, special_tokens_mask=torch.zeros(2, 5, dtype=torch.bool))


def test_pretraining_model_ties_weights_and_trains():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=8, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    model = BertForPreTraining(config)
    assert model.mlm.word_embeddings.weight is model.bert.embeddings.word_embeddings.weight
    n_params = sum(p.numel() for p in model.parameters())
    untied = n_params + 30 * 16
    assert n_params < untied
    ids = torch.randint(5, 30, (8, 8))
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, 3] = ids[:, 3]
    inputs = ids.clone()
    inputs[:, 3] = 4
    nsp = torch.randint(0, 2, (8,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        out = model(inputs, labels=labels, next_sentence_label=nsp)
        first = first if first is not None else out.loss.item()
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    with torch.no_grad():
        out = model(inputs, labels=labels, next_sentence_label=nsp)
    assert out.mlm_logits.shape == (8, 30) and out.nsp_logits.shape == (8, 2)
    assert out.loss.item() < 0.5 * first
    assert bert.mlm_accuracy(out.mlm_logits, out.mlm_labels) > 0.5


def test_make_nsp_pairs():
    docs = [[f"d{d}s{i}" for i in range(5)] for d in range(50)]
    pairs = bert.make_nsp_pairs(docs, seed=0)
    assert len(pairs) == 50 * 4 and pairs == bert.make_nsp_pairs(docs, seed=0)
    share = sum(label for *_, label in pairs) / len(pairs)
    assert 0.4 < share < 0.6
    for a, b, label in pairs:
        same_doc = a.split("s")[0] == b.split("s")[0]
        if label == 0:
            assert same_doc and int(b.split("s")[1]) == int(a.split("s")[1]) + 1
        else:
            assert not same_doc
    with pytest.raises(ValueError, match="two documents"):
        bert.make_nsp_pairs([["a", "b"]])
    with pytest.raises(TypeError):
        bert.make_nsp_pairs("not documents")
