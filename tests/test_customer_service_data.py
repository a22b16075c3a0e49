"""Tests of the customer-service data: the Bitext question -> answer set and the data written for this book."""

import hashlib
import re
import shutil
import string
from pathlib import Path

import numpy as np
import pytest

from llmbook import data
from llmbook.data import (
    BOOK_DATA,
    CUSTOMER_SERVICE_PARTS,
    DATASETS,
    DataChecksumError,
    load_customer_service,
    load_dataset,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BANKING77_INTENTS = load_dataset("banking77", "test").drop_duplicates("label").sort_values("label").label_name.tolist()


# ------------------------------------------------------------------------------------- Bitext


def test_bitext_counts_columns_and_licence_files():
    info = DATASETS["bitext_customer_support"]
    everything = load_dataset("bitext_customer_support", "all")
    assert len(everything) == 4_514 and list(everything.columns) == list(info.columns)
    assert everything.intent.nunique() == 27 and everything.category.nunique() == 11
    assert everything.text.str.strip().astype(bool).all() and everything.response.str.len().min() >= 100
    licence = data.read_verified_bytes("bitext_customer_support", "LICENSE.txt").decode()
    assert licence.startswith("Community Data License Agreement") and "Sharing" in licence
    assert info.license.startswith("CDLA-Sharing-1.0")


def test_bitext_split_keeps_near_duplicate_groups_apart():
    train = load_dataset("bitext_customer_support", "train")
    test = load_dataset("bitext_customer_support", "test")
    assert len(train) + len(test) == 4_514
    assert 0.15 < len(test) / 4_514 < 0.3
    assert not set(train.group) & set(test.group)
    assert set(test.intent) == set(train.intent)  # every test intent can be answered from train
    again = load_dataset("bitext_customer_support", "test")
    assert again.text.tolist() == test.text.tolist()  # seeded: the same split everywhere


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not beside this checkout")
def test_bitext_files_are_the_shared_data_byte_for_byte():
    for filename in DATASETS["bitext_customer_support"].files:
        raw = data.read_verified_bytes("bitext_customer_support", filename)
        assert raw == (SHARED_DATA / "bitext_customer_support" / filename.removesuffix(".xz")).read_bytes()


# ------------------------------------------------------------------------------------- written for the book


def test_one_template_per_intent_with_documented_placeholders():
    templates = load_customer_service("templates")
    placeholders = load_customer_service("placeholders")
    assert list(templates) == BANKING77_INTENTS  # label order
    documented = set(placeholders.name)
    used = {field for text in templates.values() for _, field, _, _ in string.Formatter().parse(text) if field}
    assert used == documented
    examples = dict(zip(placeholders.name, placeholders.example))
    for intent, text in templates.items():
        filled = text.format_map(examples)
        assert "{" not in filled and 40 <= len(filled) <= 400, intent
    assert len(set(templates.values())) == 77


def test_articles_cover_every_intent_exactly_once():
    articles = load_customer_service("articles")
    assert 40 <= len(articles) <= 80 and articles.id.is_unique
    covered = [intent for intents in articles.intents for intent in intents]
    assert sorted(covered) == sorted(BANKING77_INTENTS)
    examples = dict(zip(*load_customer_service("placeholders")[["name", "example"]].T.values))
    for body in articles.body:
        assert "{" not in body.format_map(examples)


def test_questions_point_to_articles_and_are_not_copied_from_banking77():
    from sklearn.feature_extraction.text import TfidfVectorizer

    questions = load_customer_service("questions")
    articles = load_customer_service("articles")
    assert len(questions) >= 150 and questions.question.is_unique
    assert set(questions.article_id) == set(articles.id)
    assert set(questions.split) == {"validation", "test"}
    banking = [load_dataset("banking77", s).text for s in ("train", "validation", "test")]
    banking = [t for part in banking for t in part]

    def norm(text):
        return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())

    assert not {norm(q) for q in questions.question} & {norm(t) for t in banking}
    vectoriser = TfidfVectorizer().fit(banking + questions.question.tolist())
    similarity = vectoriser.transform(questions.question) @ vectoriser.transform(banking).T
    assert similarity.max() < 0.8  # not even a near-copy


def test_book_data_checksums_and_errors(tmp_path, monkeypatch):
    for filename, expected in BOOK_DATA["customer_service"].items():
        assert hashlib.sha256(data.read_book_data("customer_service", filename)).hexdigest() == expected
    with pytest.raises(ValueError, match="part must be one of templates, placeholders, articles, questions"):
        load_customer_service("faq")
    with pytest.raises(ValueError, match="has no file 'x.json'"):
        data.read_book_data("customer_service", "x.json")
    copy = tmp_path / "customer_service"
    shutil.copytree(Path(data.__file__).parent / "datasets" / "customer_service", copy)
    monkeypatch.setattr(data, "_package_file", lambda name, filename: tmp_path / name / filename)
    path = copy / "reply_templates.json"
    path.write_text(path.read_text().replace("Example Bank", "Other Bank"))
    with pytest.raises(DataChecksumError, match="customer_service/reply_templates.json does not match its checksum.*BOOK_DATA"):
        load_customer_service("templates")
    (copy / "help_articles.json").unlink()
    with pytest.raises(FileNotFoundError, match="help_articles.json is missing"):
        load_customer_service("articles")


def test_every_part_loads():
    for part in CUSTOMER_SERVICE_PARTS:
        loaded = load_customer_service(part)
        assert len(loaded) > 0
    assert np.all(load_customer_service("articles").intents.map(len) >= 1)
