import dataclasses
import lzma
import shutil
from pathlib import Path

import pandas as pd
import pytest

from llmbook import data
from llmbook.data import DATASETS, DataChecksumError, dataset_info, list_datasets, load_dataset

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_list_datasets_covers_the_registry():
    table = list_datasets()
    assert list(table.name) == list(DATASETS)
    assert {"name", "task", "splits", "license", "description"} <= set(table.columns)
    assert len(table) == len(DATASETS)


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_split_loads_with_documented_columns(name):
    info = dataset_info(name)
    for split in info.splits:
        loaded = load_dataset(name, split)
        if name == "tiny_shakespeare":
            assert isinstance(loaded, str) and len(loaded) > 100_000
            continue
        assert isinstance(loaded, pd.DataFrame) and len(loaded) > 0
        if name != "goodbooks_10k":
            assert list(loaded.columns) == list(info.columns), (name, split)


def test_banking77_counts_and_stratified_validation():
    train, valid, test = (load_dataset("banking77", s) for s in ("train", "validation", "test"))
    assert len(train) + len(valid) == 10_003 and len(test) == 3_080
    assert train.label.nunique() == valid.label.nunique() == test.label.nunique() == 77
    assert (test.label.value_counts() == 40).all()
    assert not set(train.text) & set(valid.text)
    assert (train.label_name == train.label.map(dict(zip(test.label, test.label_name)))).all()


def test_twitter_counts_and_label_names():
    train, valid, test = (load_dataset("twitter_financial_news_sentiment", s) for s in ("train", "validation", "test"))
    assert len(train) + len(valid) == 9_543 and len(test) == 2_388
    assert test.label.value_counts().to_dict() == {2: 1566, 1: 475, 0: 347}
    assert dict(zip(test.label, test.label_name)) == {0: "Bearish", 1: "Bullish", 2: "Neutral"}
    # stratified: each class keeps its share (within one example) in validation
    full = pd.concat([train, valid])
    for label, count in full.label.value_counts().items():
        assert abs((valid.label == label).sum() - 0.1 * count) <= 1


def test_goemotions_counts_and_sentiment_mapping():
    train = load_dataset("goemotions", "train")
    assert len(train) == 43_410
    assert len(load_dataset("goemotions", "validation")) == 5_426
    assert len(load_dataset("goemotions", "test")) == 5_427
    assert train.sentiment.value_counts().to_dict() == {
        "positive": 15_216, "neutral": 12_823, "negative": 8_133, "ambiguous": 3_858, "mixed": 3_380,
    }
    names = data.goemotions_label_names()
    assert len(names) == 28 and names[27] == "neutral"
    row = train.iloc[0]
    assert row.label_names == [names[i] for i in row.labels]


def test_tiny_shakespeare_splits_are_contiguous():
    text = load_dataset("tiny_shakespeare", "all")
    assert len(text) == 1_115_394 and len(set(text)) == 65
    assert load_dataset("tiny_shakespeare", "train") + load_dataset("tiny_shakespeare", "validation") == text


def test_tatoeba_is_shuffled_before_splitting():
    splits = {s: load_dataset("tatoeba_fra_eng", s) for s in ("train", "validation", "test")}
    assert [len(f) for f in splits.values()] == [18_000, 1_000, 1_000]
    # the file is sorted by length: without shuffling, the test split would hold only long sentences
    lengths = {s: f.english.str.split().str.len().median() for s, f in splits.items()}
    assert max(lengths.values()) - min(lengths.values()) <= 1


def test_scitldr_references():
    test = load_dataset("scitldr", "test")
    assert len(test) == 618 and len(load_dataset("scitldr", "train")) == 1_992
    assert test.targets.map(len).between(2, 4).all()
    assert (test.source == test.source_sentences.map(" ".join)).all()


def test_goodbooks_tables_and_rating_split():
    books = load_dataset("goodbooks_10k", "books")
    assert len(books) == 10_000 and books.book_id.is_unique
    ratings = load_dataset("goodbooks_10k", "ratings")
    assert len(ratings) == 298_176 and ratings.rating.between(1, 5).all()
    parts = [load_dataset("goodbooks_10k", s) for s in ("train", "validation", "test")]
    assert sum(map(len, parts)) == len(ratings)
    keys = [set(zip(p.user_id, p.book_id)) for p in parts]
    assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])


def test_splits_are_deterministic():
    a = load_dataset("banking77", "validation")
    b = load_dataset("banking77", "validation")
    pd.testing.assert_frame_equal(a, b)


def test_unknown_name_and_split_are_clear_errors():
    with pytest.raises(ValueError, match=r"Unknown data set 'imdb'.*banking77"):
        load_dataset("imdb")
    with pytest.raises(ValueError, match=r"tiny_shakespeare has no split 'test'; choose one of train, validation, all"):
        load_dataset("tiny_shakespeare", "test")
    with pytest.raises(ValueError, match="has no file"):
        data.read_verified_bytes("banking77", "nope.csv")


@pytest.fixture
def copied_datasets(tmp_path, monkeypatch):
    """A writable copy of banking77's files that the loader reads instead of the package's."""
    source = Path(data.__file__).parent / "datasets" / "banking77"
    target = tmp_path / "banking77"
    shutil.copytree(source, target)
    monkeypatch.setattr(data, "_package_file", lambda name, filename: tmp_path / name / filename)
    return target


def test_missing_file_names_the_file(copied_datasets):
    (copied_datasets / "train.csv.xz").unlink()
    with pytest.raises(FileNotFoundError, match=r"llmbook/datasets/banking77/train.csv.xz is missing.*git checkout"):
        load_dataset("banking77", "train")


def test_truncated_file_is_detected(copied_datasets):
    path = copied_datasets / "train.csv.xz"
    path.write_bytes(path.read_bytes()[:5_000])
    with pytest.raises(DataChecksumError, match=r"banking77/train.csv.xz is corrupted or truncated"):
        load_dataset("banking77", "train")


def test_altered_file_fails_its_checksum(copied_datasets):
    path = copied_datasets / "test.csv.xz"
    altered = lzma.decompress(path.read_bytes()).replace(b"card_arrival", b"card_arrivals", 1)
    path.write_bytes(lzma.compress(altered))
    with pytest.raises(DataChecksumError, match=r"banking77/test.csv.xz does not match its checksum"):
        load_dataset("banking77", "test")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not beside this checkout")
def test_shipped_files_are_the_shared_data_byte_for_byte():
    shipped = Path(data.__file__).parent / "datasets"
    for info in DATASETS.values():
        for filename in info.files:
            raw = data.read_verified_bytes(info.name, filename)
            assert raw == (SHARED_DATA / info.data_folder() / filename.removesuffix(".xz")).read_bytes(), filename
    folders = {info.data_folder() for info in DATASETS.values()}
    assert sorted(p.name for p in shipped.iterdir()) == sorted([*folders, *data.BOOK_DATA])


def test_packing_compresses_and_verifies(tmp_path, monkeypatch):
    source = tmp_path / "src" / "banking77"
    source.mkdir(parents=True)
    for filename in ("categories.json.xz", "LICENSE"):
        (source / filename.removesuffix(".xz")).write_bytes(data.read_verified_bytes("banking77", filename))
    small = dataclasses.replace(
        DATASETS["banking77"], files={k: v for k, v in DATASETS["banking77"].files.items() if k in ("categories.json.xz", "LICENSE")}
    )
    monkeypatch.setattr(data, "DATASETS", {"banking77": small})
    written = data.pack_shared_data(tmp_path / "src", tmp_path / "out")
    assert sorted(p.name for p in written) == ["LICENSE", "categories.json.xz"]
    packed = tmp_path / "out" / "banking77" / "categories.json.xz"
    assert lzma.decompress(packed.read_bytes()) == (source / "categories.json").read_bytes()


def test_packing_refuses_a_file_that_differs_from_upstream(tmp_path):
    source = tmp_path / "src"
    for info in DATASETS.values():
        (source / info.data_folder()).mkdir(parents=True, exist_ok=True)
        for filename in info.files:
            (source / info.data_folder() / filename.removesuffix(".xz")).write_text("not the real file")
    with pytest.raises(DataChecksumError, match="does not match the registry's sha256"):
        data.pack_shared_data(source, tmp_path / "out")


@pytest.mark.parametrize("bad", [["banking77"], None, 77])
def test_data_set_names_must_be_strings(bad):
    with pytest.raises(TypeError, match="name must be a data set name"):
        load_dataset(bad)


def test_a_near_miss_name_gets_a_suggestion():
    with pytest.raises(ValueError, match=r"Unknown data set 'Banking77'\. Did you mean 'banking77'\?"):
        load_dataset("Banking77")


@pytest.mark.parametrize("bad", [["train"], None, 0])
def test_splits_and_file_names_of_the_wrong_type_are_clear_errors(bad):
    with pytest.raises(ValueError, match=r"banking77 has no split .*; choose one of train, validation, test"):
        load_dataset("banking77", bad)
    with pytest.raises(ValueError, match="banking77 has no file"):
        data.read_verified_bytes("banking77", bad)


def _small_registry(monkeypatch, tmp_path):
    """banking77's two small files as the whole registry, with their uncompressed sources under tmp_path/src."""
    keep = ("categories.json.xz", "LICENSE")
    source = tmp_path / "src" / "banking77"
    source.mkdir(parents=True)
    for filename in keep:
        (source / filename.removesuffix(".xz")).write_bytes(data.read_verified_bytes("banking77", filename))
    small = dataclasses.replace(DATASETS["banking77"], files={k: v for k, v in DATASETS["banking77"].files.items() if k in keep})
    monkeypatch.setattr(data, "DATASETS", {"banking77": small})
    return source


def test_packing_writes_nothing_unless_every_source_is_verified(tmp_path, monkeypatch):
    source = _small_registry(monkeypatch, tmp_path)
    (source / "LICENSE").write_text("not the real licence")  # the last file is bad
    with pytest.raises(DataChecksumError, match="LICENSE does not match"):
        data.pack_shared_data(tmp_path / "src", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # categories.json.xz was not written before the check failed


def test_packing_writes_each_file_atomically(tmp_path, monkeypatch):
    import os

    _small_registry(monkeypatch, tmp_path)
    data.pack_shared_data(tmp_path / "src", tmp_path / "out")
    packed = tmp_path / "out" / "banking77"
    before = {p.name: p.read_bytes() for p in packed.iterdir()}
    assert sorted(before) == ["LICENSE", "categories.json.xz"]

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space left"):
        data.pack_shared_data(tmp_path / "src", tmp_path / "out")
    assert {p.name: p.read_bytes() for p in packed.iterdir()} == before  # intact, no temporary files


def test_pack_command_reports_problems_in_one_line(tmp_path, capsys):
    assert data.main([str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a folder" in err and len(err.strip().splitlines()) == 1


def test_full_tatoeba_is_split_by_english_sentence():
    splits = {s: load_dataset("tatoeba_fra_eng_full", s) for s in ("train", "validation", "test")}
    assert sum(len(f) for f in splits.values()) == 142_787
    keys = {s: set(f.english.map(data.tatoeba_english_key)) for s, f in splits.items()}
    assert sum(len(k) for k in keys.values()) == len(set.union(*keys.values()))  # no English sentence in two splits
    assert (len(keys["validation"]), len(keys["test"])) == (4_932, 4_934)  # 5% each of the distinct sentences
    # Invisible differences do not make two sentences: U+00A0 and a curly apostrophe map to the same key.
    assert data.tatoeba_english_key("It\u2019s\u00a0here. ") == data.tatoeba_english_key("It's here.")
    # The split is shuffled (the file is sorted by length): the test split has short and long sentences.
    lengths = splits["test"].english.str.len()
    assert lengths.iloc[:100].mean() > 15 and lengths.max() > 100


def test_full_tatoeba_shares_its_folder_with_the_sample():
    assert dataset_info("tatoeba_fra_eng_full").data_folder() == dataset_info("tatoeba_fra_eng").data_folder()
    assert data.read_verified_bytes("tatoeba_fra_eng_full", "_about.txt") == data.read_verified_bytes(
        "tatoeba_fra_eng", "_about.txt"
    )
