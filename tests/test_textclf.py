"""Tests of llmbook.textclf, the text-classification data helpers (fine-tuning chapter)."""

import numpy as np
import pytest
import torch

from llmbook.textclf import (
    PadCollator,
    TextClassificationDataset,
    choose_max_length,
    make_loader,
    token_lengths,
)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from llmbook.pretrained import bundled_checkpoint_path

    return AutoTokenizer.from_pretrained(str(bundled_checkpoint_path()))


TEXTS = ["Stocks rally as $AAPL beats estimates", "Oil falls", "Fed holds rates steady, markets flat today"]


def test_dataset_tokenises_without_padding_and_truncates(tokenizer):
    ds = TextClassificationDataset(TEXTS, [1, 0, 2], tokenizer, max_length=6, num_labels=3)
    assert len(ds) == 3 and ds.num_labels == 3
    item = ds[1]
    assert item["labels"] == 0 and item["input_ids"][0] == tokenizer.cls_token_id
    assert len(item["input_ids"]) == len(tokenizer("Oil falls")["input_ids"])
    assert max(len(ds[i]["input_ids"]) for i in range(3)) == 6  # truncated
    assert ds[0]["input_ids"][-1] == tokenizer.sep_token_id


def test_collator_matches_transformers_dynamic_padding(tokenizer):
    from transformers import DataCollatorWithPadding

    ds = TextClassificationDataset(TEXTS, [1, 0, 2], tokenizer, max_length=32)
    features = [ds[i] for i in range(3)]
    ours = PadCollator(tokenizer.pad_token_id)(features)
    theirs = DataCollatorWithPadding(tokenizer, return_tensors="pt")([dict(f) for f in features])
    assert ours["input_ids"].shape[1] == max(len(f["input_ids"]) for f in features) < 32
    for key in ("input_ids", "attention_mask", "token_type_ids", "labels"):
        torch.testing.assert_close(ours[key], theirs[key])
    eight = PadCollator(tokenizer.pad_token_id, pad_to_multiple_of=8)(features)
    assert eight["input_ids"].shape[1] % 8 == 0


def test_loader_is_repeatable(tokenizer):
    ds = TextClassificationDataset(TEXTS * 4, [1, 0, 2] * 4, tokenizer)
    collate = PadCollator(tokenizer.pad_token_id)
    first = [b["labels"].tolist() for b in make_loader(ds, collate, batch_size=5, shuffle=True, seed=3)]
    second = [b["labels"].tolist() for b in make_loader(ds, collate, batch_size=5, shuffle=True, seed=3)]
    assert first == second and sum(map(len, first)) == 12


def test_lengths_and_max_length(tokenizer):
    lengths = token_lengths(TEXTS, tokenizer)
    assert lengths.tolist() == [len(tokenizer(t)["input_ids"]) for t in TEXTS]
    assert choose_max_length(np.arange(1, 101), quantile=0.99) == 104
    assert choose_max_length([3000], cap=512) == 512
    with pytest.raises(ValueError, match="quantile"):
        choose_max_length([1, 2], quantile=0)
    with pytest.raises(ValueError, match="non-empty"):
        choose_max_length([])


def test_error_paths(tokenizer):
    with pytest.raises(ValueError, match=r"labels\[1\] = 3 is out of range for num_labels=3"):
        TextClassificationDataset(TEXTS, [0, 3, 1], tokenizer, num_labels=3)
    with pytest.raises(ValueError, match="out of range"):
        TextClassificationDataset(TEXTS, [0, -1, 1], tokenizer)
    with pytest.raises(ValueError, match=r"texts\[2\] is empty"):
        TextClassificationDataset(["a", "b", "  "], [0, 1, 0], tokenizer)
    with pytest.raises(ValueError, match="texts is empty"):
        TextClassificationDataset([], [], tokenizer)
    with pytest.raises(TypeError, match="list of strings"):
        TextClassificationDataset("one text", [0], tokenizer)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        TextClassificationDataset(["a", 5], [0, 1], tokenizer)
    with pytest.raises(ValueError, match="labels of shape"):
        TextClassificationDataset(TEXTS, [0, 1], tokenizer)
    with pytest.raises(TypeError, match="integers"):
        TextClassificationDataset(TEXTS, [0.0, 1.0, 2.0], tokenizer)
    with pytest.raises(ValueError, match="empty list"):
        PadCollator(0)([])


def test_length_grouped_batches_cover_everything_with_less_padding(tokenizer):
    from llmbook.textclf import LengthGroupedBatches

    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, size=500)
    sampler = LengthGroupedBatches(lengths, 16, group_factor=10, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 32
    assert sorted(i for b in batches for i in b) == list(range(500))
    padded = sum(len(b) * lengths[b].max() for b in batches)
    plain = sum(16 * lengths[i:i + 16].max() for i in range(0, 500, 16))
    assert padded < 0.8 * plain
    assert batches != list(LengthGroupedBatches(lengths, 16, group_factor=10, seed=2))
    ds = TextClassificationDataset(TEXTS * 3, [1, 0, 2] * 3, tokenizer)
    loader = make_loader(ds, PadCollator(tokenizer.pad_token_id), batch_size=4, group_by_length=True)
    assert sum(len(b["labels"]) for b in loader) == 9
    with pytest.raises(TypeError, match="TextClassificationDataset"):
        make_loader(list(range(3)), None, group_by_length=True)


def test_mean_pooling_classifier_ignores_padding_and_returns_loss():
    from transformers import BertConfig, BertModel

    from llmbook.textclf import MeanPoolingClassifier

    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=32))
    model = MeanPoolingClassifier(encoder, num_labels=3).eval()
    ids = torch.randint(1, 50, (2, 5))
    mask = torch.ones_like(ids)
    labels = torch.tensor([0, 2])
    out = model(ids, mask, labels=labels)
    assert out.logits.shape == (2, 3)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    padded = model(torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1),
                   torch.cat([mask, torch.zeros(2, 3, dtype=torch.long)], 1))
    torch.testing.assert_close(padded.logits, out.logits, rtol=1e-4, atol=1e-5)
    assert model(ids, mask).loss is None
    with pytest.raises(ValueError, match="num_labels"):
        MeanPoolingClassifier(encoder, num_labels=1)



def test_make_loader_refuses_strings_as_flags(tokenizer):
    ds = TextClassificationDataset(TEXTS, [1, 0, 2], tokenizer)
    collate = PadCollator(tokenizer.pad_token_id)
    with pytest.raises(TypeError, match="shuffle must be True or False"):
        make_loader(ds, collate, shuffle="false")
    with pytest.raises(TypeError, match="group_by_length must be True or False"):
        make_loader(ds, collate, group_by_length="no")
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(ds, collate, batch_size=0)


def _tiny_encoder():
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=32))


@pytest.fixture
def recorded_loads(monkeypatch):
    """Replace transformers' loader by one that records the path it was given (no file is read)."""
    import transformers

    paths = []

    def fake_from_pretrained(path, **config):
        paths.append(str(path))
        return _tiny_encoder()

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", fake_from_pretrained)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as without a network, but the same on every machine
    return paths


def test_mean_pooling_from_pretrained_offline_uses_the_bundled_checkpoint(recorded_loads, capsys):
    from llmbook.pretrained import bundled_checkpoint_path
    from llmbook.textclf import MeanPoolingClassifier

    model = MeanPoolingClassifier.from_pretrained("bert-base-uncased", num_labels=3)
    # transformers never sees the hub name (which would retry downloads for ~50 s without a network)
    assert recorded_loads == [str(bundled_checkpoint_path())]
    assert model.classifier.out_features == 3
    printed = capsys.readouterr().out
    assert "bundled" in printed and "bert-base-uncased" in printed  # the substitution is announced
    with pytest.raises(ValueError, match="num_labels"):
        MeanPoolingClassifier.from_pretrained("bert-base-uncased", num_labels=1)
    assert len(recorded_loads) == 1  # checked before loading anything


def test_mean_pooling_from_pretrained_local_folder(tmp_path, monkeypatch, capsys):
    from llmbook.textclf import MeanPoolingClassifier

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _tiny_encoder().save_pretrained(tmp_path / "encoder")
    for path in (tmp_path / "encoder", str(tmp_path / "encoder")):
        model = MeanPoolingClassifier.from_pretrained(path, num_labels=2, hidden_dropout_prob=0.0)
        assert model.classifier.in_features == 16 and model.base_model.config.hidden_dropout_prob == 0.0
    assert capsys.readouterr().out == ""  # a folder needs no announcement
    with pytest.raises(ValueError, match="encodr"):  # a typo, never replaced by the bundled model
        MeanPoolingClassifier.from_pretrained(str(tmp_path / "encodr"), num_labels=2)


def test_mean_pooling_from_pretrained_loads_the_real_bundled_model(monkeypatch):
    from llmbook.textclf import MeanPoolingClassifier

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = MeanPoolingClassifier.from_pretrained("bert-base-uncased", num_labels=3)
    assert model.base_model.config.hidden_size == 384 and model.classifier.out_features == 3


# --- tfidf_baseline and the classifier checkpoint (issue 21) ---------------------------------------

BASE_TEXTS = [
    "shares fall sharply", "stock plunges on weak guidance", "profit warning hits shares", "losses widen",
    "shares jump on record profit", "stock rallies after upgrade", "strong earnings beat estimates", "gains extend",
    "company holds annual meeting", "board names new director", "quarterly report due today", "market opens",
] * 3
BASE_LABELS = [0] * 4 + [1] * 4 + [2] * 4
BASE_LABELS = BASE_LABELS * 3


def test_tfidf_baseline_chooses_c_on_validation_like_a_manual_grid():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.pipeline import make_pipeline

    from llmbook.textclf import tfidf_baseline

    train_x, train_y = BASE_TEXTS[:24], BASE_LABELS[:24]
    val_x, val_y = BASE_TEXTS[24:], BASE_LABELS[24:]
    result = tfidf_baseline(train_x, train_y, val_x, val_y, c_grid=[0.01, 1, 100], min_df=1)
    manual = {}
    for C in (0.01, 1.0, 100.0):
        pipe = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                             LogisticRegression(C=C, max_iter=2000)).fit(train_x, train_y)
        manual[C] = f1_score(val_y, pipe.predict(val_x), average="macro")
    assert result.val_macro_f1 == pytest.approx(manual)
    assert result.C == max(manual, key=manual.get)
    assert result.predict(val_x).tolist() == result.pipeline.predict(val_x).tolist()
    assert result.predict_proba(val_x).shape == (12, 3)


def test_tfidf_baseline_rejects_bad_input_with_one_clear_error():
    from llmbook.textclf import tfidf_baseline

    with pytest.raises(ValueError, match="c_grid"):
        tfidf_baseline(BASE_TEXTS, BASE_LABELS, BASE_TEXTS, BASE_LABELS, c_grid=[])
    with pytest.raises(ValueError, match="val_labels"):
        tfidf_baseline(BASE_TEXTS, BASE_LABELS, BASE_TEXTS, BASE_LABELS[:-1])
    with pytest.raises(ValueError, match="single class"):
        tfidf_baseline(BASE_TEXTS, [0] * len(BASE_TEXTS), BASE_TEXTS, BASE_LABELS)


def test_classifier_checkpoint_round_trip(tmp_path, tokenizer):
    from llmbook.pretrained import bundled_checkpoint_path, resolve_pretrained
    from llmbook.textclf import MeanPoolingClassifier, load_classifier_checkpoint, save_classifier_checkpoint

    choice = resolve_pretrained(str(bundled_checkpoint_path()), verbose=False)
    torch.manual_seed(0)
    model = MeanPoolingClassifier.from_pretrained(choice.path, num_labels=3).eval()
    path = save_classifier_checkpoint(tmp_path / "classifier_smoke.pt", model, choice,
                                      labels=["Bearish", "Bullish", "Neutral"], max_length=64, scale="smoke",
                                      val_macro_f1=0.5)
    loaded, loaded_tokenizer, meta = load_classifier_checkpoint(path)
    batch = loaded_tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
    assert meta["labels"] == ["Bearish", "Bullish", "Neutral"] and meta["max_length"] == 64
    assert meta["scale"] == "smoke" and meta["val_macro_f1"] == 0.5 and not loaded.training


def test_classifier_checkpoint_errors_name_the_fix(tmp_path, monkeypatch):
    from llmbook.textclf import classifier_checkpoint_path, load_classifier_checkpoint, save_classifier_checkpoint

    with pytest.raises(FileNotFoundError, match="06_finetuning"):
        load_classifier_checkpoint(tmp_path / "missing.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a classifier checkpoint"):
        load_classifier_checkpoint(tmp_path / "other.pt")
    with pytest.raises(TypeError, match="MeanPoolingClassifier"):
        save_classifier_checkpoint(tmp_path / "x.pt", torch.nn.Linear(2, 2), None, labels=["a", "b"],
                                   max_length=8, scale="cpu")
    monkeypatch.setenv("LLMBOOK_RUN_DIR", str(tmp_path / "runs"))
    assert classifier_checkpoint_path("cpu") == tmp_path / "runs" / "06_finetuning" / "classifier_cpu.pt"
    with pytest.raises(ValueError, match="scale"):
        classifier_checkpoint_path("../x")
