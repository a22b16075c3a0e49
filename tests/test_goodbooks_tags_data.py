"""The goodbooks-10k user tags shipped for the recommendation chapter (tags.csv, book_tags_top25.csv)."""

import lzma
import shutil
from pathlib import Path

import pytest

from llmbook import data
from llmbook.data import DataChecksumError, dataset_info, load_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "goodbooks_10k"
NEW_FILES = ("tags.csv.xz", "book_tags_top25.csv.xz", "PROVENANCE_tags.md")


def test_tag_files_are_registered_with_their_splits():
    info = dataset_info("goodbooks_10k")
    assert set(NEW_FILES) <= set(info.files)
    assert {"tags", "book_tags"} <= set(info.splits)
    assert "CC BY-SA" in info.license


def test_tags_table():
    tags = load_dataset("goodbooks_10k", "tags")
    assert list(tags.columns) == ["tag_id", "tag_name"]
    assert len(tags) == 34_252 and tags.tag_id.is_unique
    assert tags.tag_name.map(lambda t: isinstance(t, str)).all()  # no tag read as NaN


def test_book_tags_join_every_book_to_named_tags():
    book_tags = load_dataset("goodbooks_10k", "book_tags")
    assert list(book_tags.columns) == ["book_id", "goodreads_book_id", "tag_id", "tag_name", "count"]
    assert len(book_tags) == 250_000
    assert book_tags.book_id.nunique() == 10_000 and book_tags.book_id.between(1, 10_000).all()
    assert book_tags.tag_name.notna().all() and (book_tags.groupby("book_id").size() == 25).all()
    books = load_dataset("goodbooks_10k", "books").set_index("book_id")
    assert (books.loc[book_tags.book_id, "goodreads_book_id"].to_numpy() == book_tags.goodreads_book_id.to_numpy()).all()
    first = book_tags[book_tags.book_id == 1]  # The Hunger Games
    assert {"to-read", "favorites", "young-adult", "dystopian"} <= set(first.tag_name)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not beside this checkout")
@pytest.mark.parametrize("filename", NEW_FILES)
def test_shipped_tag_files_are_the_shared_data_byte_for_byte(filename):
    assert data.read_verified_bytes("goodbooks_10k", filename) == (SHARED / filename.removesuffix(".xz")).read_bytes()


def test_an_altered_tag_file_fails_its_checksum(tmp_path, monkeypatch):
    source = Path(data.__file__).parent / "datasets" / "goodbooks_10k"
    target = tmp_path / "goodbooks_10k"
    shutil.copytree(source, target)
    monkeypatch.setattr(data, "_package_file", lambda name, filename: tmp_path / name / filename)
    path = target / "tags.csv.xz"
    path.write_bytes(lzma.compress(lzma.decompress(path.read_bytes()).replace(b"fantasy", b"fantasie", 1)))
    with pytest.raises(DataChecksumError, match="tags.csv.xz does not match its checksum"):
        load_dataset("goodbooks_10k", "tags")
