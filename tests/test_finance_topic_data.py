"""The finance topic tweets shipped for the finance-monitoring chapter (twitter_financial_news_topic)."""

import pandas as pd
import pytest

from llmbook import data
from llmbook.data import DATASETS, load_dataset

NAME = "twitter_financial_news_topic"


def test_topic_set_is_registered_with_its_loader():
    assert NAME in DATASETS and NAME in data._LOADERS
    assert NAME in set(data.list_datasets().name)


def test_topic_counts_match_the_published_figures():
    train, valid, test = (load_dataset(NAME, s) for s in ("train", "validation", "test"))
    assert len(train) + len(valid) == 16_990 and len(test) == 4_117
    full = pd.concat([train, valid])
    # label counts from the data set's provenance note (train / original validation)
    assert full.label.value_counts()[11] == 44 and test.label.value_counts()[11] == 14  # IPO
    assert full.label.value_counts()[10] == 69 and test.label.value_counts()[10] == 13  # Gold | Metals
    assert train.label.nunique() == valid.label.nunique() == test.label.nunique() == 20
    for label, count in full.label.value_counts().items():  # stratified validation
        assert abs((valid.label == label).sum() - 0.1 * count) <= 1
    assert not set(train.text) & set(valid.text) and not set(full.text) & set(test.text)


def test_topic_names_follow_classes_txt():
    names = data.finance_topic_names()
    assert len(names) == 20 and names[11] == "IPO" and names[10] == "Gold | Metals | Materials"
    test = load_dataset(NAME, "test")
    assert (test.label_name == test.label.map(dict(enumerate(names)))).all()


def test_topic_splits_are_deterministic():
    pd.testing.assert_frame_equal(load_dataset(NAME, "validation"), load_dataset(NAME, "validation"))


def test_topic_split_names_are_checked():
    with pytest.raises(ValueError, match="has no split 'valid'"):
        load_dataset(NAME, "valid")
