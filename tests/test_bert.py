"""Tests of llmbook.bert: equality with transformers.BertModel, masking statistics, NSP pairs, errors."""

from __future__ import annotations

import json
import re

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


# --- hostile input (issue 22) ----------------------------------------------------------------------


def test_make_nsp_pairs_refuses_documents_given_as_strings():
    # Each document a plain string: iterating it would give characters, and "pairs" of single letters.
    with pytest.raises(TypeError, match=r"documents\[0\] is a str, not a list of sentences"):
        bert.make_nsp_pairs(["First document. Two sentences.", "Second document here."])
    with pytest.raises(TypeError, match=r"documents\[1\] is a bytes"):
        bert.make_nsp_pairs([["a", "b"], b"raw bytes"])
    with pytest.raises(TypeError, match=r"documents\[0\]\[1\] must be a sentence \(str\), got int"):
        bert.make_nsp_pairs([["a", 7], ["c", "d"]])
    # tuples of sentences are fine
    assert bert.make_nsp_pairs([("a", "b"), ("c", "d")], random_fraction=0.0) == [("a", "b", 0), ("c", "d", 0)]


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_make_nsp_pairs_refuses_bad_random_fraction(fraction):
    with pytest.raises(ValueError, match="random_fraction"):
        bert.make_nsp_pairs([["a", "b"], ["c", "d"]], random_fraction=fraction)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"special_ids": [0, -1]}, ValueError, r"special_ids holds -1, outside the vocabulary \[0, 50\)"),
        ({"special_ids": [0, 50]}, ValueError, r"special_ids holds 50, outside the vocabulary"),
        ({"special_ids": [0, 2.0]}, TypeError, r"special_ids\[1\] must be an integer"),
        ({"special_ids": None}, TypeError, "special_ids must be a list of token ids"),
        ({"mask_token_id": -1}, ValueError, "outside the vocabulary"),
        ({"mask_token_id": 3.5}, TypeError, "mask_token_id must be an integer"),
        ({"mask_token_id": True}, TypeError, "mask_token_id must be an integer"),
        ({"vocab_size": 0}, ValueError, "vocab_size must be at least 1"),
        ({"vocab_size": 50.0}, TypeError, "vocab_size must be an integer"),
        ({"mlm_probability": -0.1}, ValueError, "mlm_probability"),
        ({"mlm_probability": 1.5}, ValueError, "mlm_probability"),
        ({"mlm_probability": float("nan")}, ValueError, "mlm_probability"),
        ({"mlm_probability": True}, ValueError, "mlm_probability"),
        ({"special_tokens_mask": [[True] * 4] * 2}, TypeError, "special_tokens_mask must be a boolean tensor"),
    ],
)
def test_mask_tokens_refuses_ids_outside_the_vocabulary(kwargs, error, match):
    ids = torch.full((2, 4), 5)
    arguments = {"mask_token_id": 3, "vocab_size": 50, "mlm_probability": 1.0,
                 "generator": torch.Generator().manual_seed(0), **kwargs}
    with pytest.raises(error, match=match):
        mask_tokens(ids, **arguments)


def test_mask_tokens_takes_special_ids_as_a_tensor():
    ids = _sample_ids(n=8)
    as_list = mask_tokens(ids, mask_token_id=MASK, vocab_size=30522, special_ids=SPECIAL,
                          generator=torch.Generator().manual_seed(2))
    as_tensor = mask_tokens(ids, mask_token_id=torch.tensor(MASK), vocab_size=30522,
                            special_ids=torch.tensor(SPECIAL), generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(a, b) for a, b in zip(as_list, as_tensor))


TINY_CONFIG = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"input_ids": torch.ones(2, 0, dtype=torch.long)}, r"shape \(2, 0\) holds no tokens"),
        ({"input_ids": torch.full((1, 3), -1)}, r"\[0, 50\)"),
        ({"input_ids": torch.ones(1, 9, dtype=torch.long)}, "max_position_embeddings=8"),
        ({"input_ids": torch.ones(1, 3, dtype=torch.long), "token_type_ids": torch.full((1, 3), -1)},
         r"token_type_ids must lie in \[0, 2\)"),
        ({"input_ids": torch.ones(1, 3, dtype=torch.long), "attention_mask": torch.full((1, 3), 2)}, "only 0"),
        ({"input_ids": torch.ones(1, 3, dtype=torch.long), "output_attentions": "false"}, "output_attentions"),
    ],
)
def test_more_bad_inputs(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        BertModel(TINY_CONFIG)(**kwargs)


def test_pretraining_model_checks_flags_and_labels():
    with pytest.raises(TypeError, match="nsp must be True or False"):
        BertForPreTraining(TINY_CONFIG, nsp="false")
    model = BertForPreTraining(TINY_CONFIG)
    ids = torch.ones(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"labels must be token ids in \[0, 50\) or IGNORE_INDEX"):
        model(ids, labels=torch.full((2, 3), 50))
    with pytest.raises(ValueError, match="next_sentence_label must be a"):
        model(ids, next_sentence_label=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="next_sentence_label must be a"):
        model(ids, next_sentence_label=torch.tensor([0, 1, 1]))


# --- checkpoint folders: malformed configs, damaged files, shards ---


def _hf_state(seed=0):
    torch.manual_seed(seed)
    reference = transformers.BertModel(transformers.BertConfig(**TINY)).eval()
    return reference, {k: v.clone().contiguous() for k, v in reference.state_dict().items()}


@pytest.mark.parametrize(
    "change, key",
    [
        ({"hidden_dropout_prob": "0.1"}, "hidden_dropout_prob"),
        ({"hidden_act": ["gelu"]}, "hidden_act"),
        ({"layer_norm_eps": "1e-12"}, "layer_norm_eps"),
        ({"pad_token_id": 40}, "pad_token_id"),
        ({"hidden_size": "16"}, "hidden_size"),
        ({"hidden_size": None}, "hidden_size"),
    ],
)
def test_malformed_config_names_the_file_and_the_key(tmp_path, change, key):
    _, state = _hf_state()
    folder = _tiny_folder(tmp_path, state, {**TINY, **change})
    with pytest.raises(ValueError, match=re.escape(f"{folder / 'config.json'}: BertConfig.{key} must be")):
        BertModel.from_pretrained(folder)


def test_config_that_is_not_json_or_not_an_object(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"vocab_size": 40, "hidden_size": 16,')  # truncated
    with pytest.raises(ValueError, match=re.escape(str(path)) + " is not valid JSON .*download the checkpoint again"):
        BertConfig.from_json(path)
    path.write_text("[1, 2]")
    with pytest.raises(TypeError, match=re.escape(f"{path}: a BERT config must be a dict")):
        BertConfig.from_json(path)
    with pytest.raises(TypeError, match="must be a dict"):
        BertConfig.from_dict("config.json")


def test_config_without_pad_token_id_loads():
    config = BertConfig.from_dict({**TINY, "pad_token_id": None})
    assert BertModel(config).embeddings.word_embeddings.padding_idx is None


@pytest.mark.parametrize("filename", ["model.safetensors", "pytorch_model.bin"])
@pytest.mark.parametrize("keep", [0.0, 0.5, 0.98])
def test_truncated_weights_file_is_named(tmp_path, filename, keep):
    _, state = _hf_state()
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", **TINY}))
    path = tmp_path / filename
    if filename.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    damaged = re.escape(str(path)) + " is corrupt or truncated .*download the checkpoint again"
    with pytest.raises(ValueError, match=damaged):
        BertModel.from_pretrained(tmp_path)


def test_bin_file_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save(torch.nn.Linear(2, 2), path)  # a pickled module, not its state dict
    with pytest.raises(ValueError, match=re.escape(str(path)) + " holds Python objects besides tensors"):
        bert.load_hf_state_dict(tmp_path)
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ValueError, match=re.escape(str(path)) + " does not hold a state dict"):
        bert.load_hf_state_dict(tmp_path)
    path.write_text("<html>Rate limit exceeded</html>")  # what a failed download can leave behind
    with pytest.raises(ValueError, match=re.escape(str(path)) + " is corrupt or truncated"):
        bert.load_hf_state_dict(tmp_path)


def _write_shards(folder, state, fmt):
    """Split ``state`` into two shards plus the index file, as ``save_pretrained(max_shard_size=...)`` does."""
    from safetensors.torch import save_file

    names = sorted(state)
    halves = [names[: len(names) // 2], names[len(names) // 2 :]]
    stem, suffix = ("model", ".safetensors") if fmt == "safetensors" else ("pytorch_model", ".bin")
    weight_map = {}
    for i, half in enumerate(halves, 1):
        shard = f"{stem}-0000{i}-of-00002{suffix}"
        part = {k: state[k] for k in half}
        save_file(part, str(folder / shard)) if fmt == "safetensors" else torch.save(part, folder / shard)
        weight_map.update(dict.fromkeys(half, shard))
    index = folder / f"{stem}{suffix}.index.json"
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return index


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_sharded_checkpoint_loads_equal(tmp_path, fmt):
    reference, state = _hf_state(seed=3)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", **TINY}))
    _write_shards(tmp_path, state, fmt)
    loaded = bert.load_hf_state_dict(tmp_path)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    ours = BertModel.from_pretrained(tmp_path)
    ids = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids)[0], reference(ids).last_hidden_state, atol=1e-5, rtol=0)


def test_damaged_sharded_checkpoints(tmp_path):
    _, state = _hf_state()
    index = _write_shards(tmp_path, state, "safetensors")
    good = json.loads(index.read_text())

    index.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(ValueError, match=re.escape(str(index)) + " has no valid 'weight_map'"):
        bert.load_hf_state_dict(tmp_path)

    absent_shard = "model-00003-of-00003.safetensors"
    index.write_text(json.dumps({"weight_map": {**good["weight_map"], "pooler.extra": absent_shard}}))
    with pytest.raises(FileNotFoundError, match="lists the shard model-00003-of-00003.safetensors .* incomplete"):
        bert.load_hf_state_dict(tmp_path)

    first_shard = "model-00001-of-00002.safetensors"
    index.write_text(json.dumps({"weight_map": {**good["weight_map"], "pooler.extra": first_shard}}))
    with pytest.raises(ValueError, match=r"lists weights that no shard holds: \['pooler.extra'\]"):
        bert.load_hf_state_dict(tmp_path)

    index.write_text(json.dumps({"weight_map": {"pooler.dense.bias": "../elsewhere.safetensors"}}))
    with pytest.raises(ValueError, match="not a file name in its folder"):
        bert.load_hf_state_dict(tmp_path)

    index.write_text(json.dumps(good))
    shard = tmp_path / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ValueError, match=re.escape(str(shard)) + " is corrupt or truncated"):
        bert.load_hf_state_dict(tmp_path)


def test_folder_without_weights_says_what_was_looked_for(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", **TINY}))
    with pytest.raises(FileNotFoundError, match="looked for model.safetensors, model.safetensors.index.json, "
                                                "pytorch_model.bin, pytorch_model.bin.index.json"):
        BertModel.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BertModel.from_pretrained(tmp_path / "bert-base-uncased")
    with pytest.raises(TypeError, match="folder must be a path"):
        bert.load_hf_state_dict(None)


# ----------------------------------------------------------------------------------------------
# The bigram baseline of the pretraining section
# ----------------------------------------------------------------------------------------------

from llmbook.bert import BigramMLMBaseline  # noqa: E402


def toy_bigram():
    ids = torch.tensor([[0, 5, 6, 7, 1], [0, 5, 6, 8, 1], [0, 7, 5, 6, 1], [0, 9, 9, 9, 1]])
    return BigramMLMBaseline(ids, vocab_size=10, special_ids=[0, 1, 2])


def test_bigram_baseline_distributions_sum_to_one_and_back_off_to_the_unigram():
    baseline = toy_bigram()
    for left in range(10):
        assert float(baseline.distribution(left).sum()) == pytest.approx(1.0, abs=1e-12)
    # [MASK] (id 2) never precedes anything in unmasked text: the unigram distribution, exactly.
    torch.testing.assert_close(baseline.distribution(2), baseline.unigram)
    # Witten-Bell: after 5 (seen 3 times, always followed by 6) lambda = 3 / (3 + 1).
    assert float(baseline.prob(torch.tensor([5]), torch.tensor([6]))) == pytest.approx(
        0.75 * 1.0 + 0.25 * float(baseline.unigram[6]))


def test_bigram_baseline_uses_the_visible_left_neighbour():
    baseline = toy_bigram()
    labels = torch.tensor([[-100, -100, 6, -100, -100]])
    seen = baseline.evaluate(torch.tensor([[0, 5, 2, 7, 1]]), labels)
    hidden = baseline.evaluate(torch.tensor([[0, 2, 2, 7, 1]]), labels)  # left neighbour masked as well
    assert seen["bigram accuracy"] == 1.0
    assert seen["bigram cross-entropy"] < hidden["bigram cross-entropy"]
    assert hidden["bigram cross-entropy"] == pytest.approx(-float(baseline.unigram[6].log()))


def test_bigram_baseline_rejects_bad_input():
    with pytest.raises(ValueError, match="vocabulary"):
        BigramMLMBaseline(torch.tensor([[0, 12]]), vocab_size=10, special_ids=[0])
    with pytest.raises(ValueError, match="no left neighbour"):
        toy_bigram().evaluate(torch.tensor([[5, 6]]), torch.tensor([[5, -100]]))
    with pytest.raises(ValueError, match="no position"):
        toy_bigram().evaluate(torch.tensor([[0, 6]]), torch.tensor([[-100, -100]]))
