"""The data sets the book ships, verified and split the same way for every reader.

Taught in the getting-started chapter; every chapter that trains or evaluates loads its data here.

Small, real, openly licensed data sets travel inside the package (``llmbook/datasets``,
xz-compressed, about 10 MB), so a fresh clone runs with no network. Every file is checked against
the SHA-256 of the original upstream file before it is parsed, so a truncated or altered copy is
caught with a message that names the file, instead of producing silently wrong numbers.

    >>> from llmbook.data import load_dataset, list_datasets
    >>> train = load_dataset("banking77", "train")        # pandas DataFrame
    >>> text = load_dataset("tiny_shakespeare", "train")  # one str

:func:`list_datasets` shows what exists; :func:`dataset_info` gives the columns, splits, licence
and citation of one data set. Splits that the source does not provide (a validation set carved
out of a training set, or all three splits of Tatoeba) are made with a fixed seed, so they are the
same on every machine.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import hashlib
import io
import json
import lzma
import os
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

SPLIT_SEED = 0
"""Seed of every split this module makes itself. Changing it changes the book's numbers."""

_REINSTALL_HINT = (
    "Restore it with `git checkout -- llmbook/datasets` in a clone of the book, "
    "or reinstall llmbook (`pip install --force-reinstall llmbook`)."
)


class DataChecksumError(ValueError):
    """A shipped data file is truncated, altered or unreadable."""


@dataclass(frozen=True)
class DatasetInfo:
    """What the book knows about one shipped data set."""

    name: str
    description: str
    task: str
    splits: tuple[str, ...]
    columns: dict[str, str]
    license: str
    citation: str
    source: str
    files: dict[str, str] = field(repr=False)  # shipped file name -> sha256 of the original file
    notes: str = ""
    folder: str = ""  # folder of the files, in llmbook/datasets and in the source data; "" = the name

    def data_folder(self) -> str:
        """The folder that holds this data set's files (two data sets may share one upstream folder)."""
        return self.folder or self.name


# sha256 values are those of the upstream files (see data-credits in the book); the shipped copies
# are xz-compressed, and the checksum is taken after decompression so it stays comparable upstream.
DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo(
            name="banking77",
            description="Online-banking customer queries labelled with 77 intents.",
            task="intent classification",
            splits=("train", "validation", "test"),
            columns={
                "text": "the customer's message (str)",
                "label": "intent id, 0-76 (int), the index into categories.json",
                "label_name": "intent name, e.g. 'card_arrival' (str)",
            },
            license="CC BY 4.0",
            citation=(
                "Casanueva, Temčinas, Gerz, Henderson and Vulić (2020). Efficient Intent Detection with "
                "Dual Sentence Encoders. NLP4ConvAI workshop, ACL 2020. arXiv:2003.04807"
            ),
            source="https://github.com/PolyAI-LDN/task-specific-datasets (banking_data/)",
            files={
                "train.csv.xz": "b06e26ac675513959a63135f11b94ea7786ed02da65db93a5650d8838cbc664b",
                "test.csv.xz": "d12d6e3bc4c3103966ae786dc435913c0c563dfa328f5a3646d0e62cfeeb474d",
                "categories.json.xz": "53261da888122daf2d120d925458631d9619e15d82e56052e7a42e535ce32b63",
                "LICENSE": "7e7170e3cebf88a9f60c7b8421418323c09304da1af4d5e90f4da1dc1c8a2661",
            },
            notes="validation is a stratified 10% of the original train split (seed 0); test is the original test split.",
        ),
        DatasetInfo(
            name="twitter_financial_news_sentiment",
            description="English finance-news tweets labelled Bearish, Bullish or Neutral.",
            task="sentiment classification",
            splits=("train", "validation", "test"),
            columns={
                "text": "the tweet, with its t.co links and $TICKER cashtags (str)",
                "label": "0 = Bearish, 1 = Bullish, 2 = Neutral (int)",
                "label_name": "'Bearish', 'Bullish' or 'Neutral' (str)",
            },
            license="MIT (per the dataset author)",
            citation=(
                "Ricky Costa / zeroshot (2022). Twitter Financial News Sentiment, v1.0.0. "
                "huggingface.co/datasets/zeroshot/twitter-financial-news-sentiment"
            ),
            source="https://huggingface.co/datasets/zeroshot/twitter-financial-news-sentiment",
            files={
                "sent_train.csv.xz": "184e6322b7f0e84c3103a83d198f1be8203de8b63a857f67a2964321b71c4e8d",
                "sent_valid.csv.xz": "393572beac5064ed60c9f608a57dc66af2b41a91b89c149932d5c57f827e25da",
            },
            notes=(
                "validation is a stratified 10% of the original train split (seed 0); "
                "test is the original 'valid' split, which the book never tunes on."
            ),
        ),
        DatasetInfo(
            name="goemotions",
            description="Reddit comments labelled with 27 emotions plus neutral (multi-label).",
            task="multi-label emotion / sentiment classification",
            splits=("train", "validation", "test"),
            columns={
                "text": "the comment; names are masked as [NAME] (str)",
                "labels": "emotion ids, 0-27 (list of int)",
                "label_names": "emotion names, e.g. ['joy', 'love'] (list of str)",
                "sentiment": "'positive', 'negative', 'ambiguous', 'neutral', or 'mixed' when the labels "
                "fall in more than one group (str), from the official sentiment mapping",
                "id": "Reddit comment id (str)",
            },
            license="Apache-2.0",
            citation=(
                "Demszky, Movshovitz-Attias, Ko, Cowen, Nemade and Ravi (2020). GoEmotions: A Dataset of "
                "Fine-Grained Emotions. ACL 2020. arXiv:2005.00547"
            ),
            source="https://github.com/google-research/google-research (goemotions/data/)",
            files={
                "train.tsv.xz": "1c254a142be5c00e80d819b9ae1bbd36d94b2eeb8f4b1271846508d57e57d9c5",
                "dev.tsv.xz": "575489c079c9de1097062a01738f998590d6b7ead66dd1c9fd1d2ba01fd8bc62",
                "test.tsv.xz": "0587b2dd8b27b97352adbfc3fb083d46005c8946657fdc2b1ca8b1cc7f1f8be4",
                "emotions.txt.xz": "45c3ef86782d2a4d7fedcd6d8c111aa0d0e94720689bd164fac94fefb4495a89",
                "sentiment_dict.json.xz": "801f6f028082141bd38541a4b14d65b33bdc55d29c7b2aaa029fefecf206f76b",
                "LICENSE": "c71d239df91726fc519c6eb72d318ec65820627232b2f796219e87dcf35d0ab4",
            },
            notes="Some comments are offensive or profane. validation is the original dev split.",
        ),
        DatasetInfo(
            name="tiny_shakespeare",
            description="About 40,000 lines of Shakespeare's plays in one text (1,115,394 characters).",
            task="character-level language modelling",
            splits=("train", "validation", "all"),
            columns={},
            license="public domain (text); char-rnn repository MIT",
            citation="Karpathy, A. (2015). char-rnn. github.com/karpathy/char-rnn",
            source="https://github.com/karpathy/char-rnn (data/tinyshakespeare/input.txt)",
            files={"input.txt.xz": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"},
            notes=(
                "Returns a str, not a DataFrame. train is the first 90% of the characters and validation "
                "the last 10% (contiguous, not shuffled: shuffling characters would destroy the text)."
            ),
        ),
        DatasetInfo(
            name="tatoeba_fra_eng",
            description="20,000 English-French sentence pairs from Tatoeba (ManyThings.org Anki format).",
            task="machine translation",
            splits=("train", "validation", "test"),
            columns={
                "english": "the English sentence (str)",
                "french": "its French translation; may contain U+202F / U+00A0 before !?:; (str)",
            },
            license="CC BY 2.0 FR",
            citation="Tatoeba Project (tatoeba.org), sentence pairs compiled by ManyThings.org (manythings.org/anki)",
            source="http://www.manythings.org/anki/ (fra-eng.zip, 2017-09-29), a seeded 20,000-line sample",
            files={
                "fra_eng_20k.txt.xz": "187d8015dcc4287c30d49cbe28984f2d0920ed2014c67b4bddd76974d895d774",
                "_about.txt": "359011f5738272138286287b44db215d184823911eb049da2160a6ac6933d6c9",
            },
            notes=(
                "The file is sorted by sentence length, so it is shuffled (seed 0) before the "
                "90/5/5 train/validation/test split; taking the first lines would give only short sentences."
            ),
        ),
        DatasetInfo(
            name="scitldr",
            description="Abstracts of computer-science papers with one-sentence TLDR summaries (SciTLDR-A).",
            task="summarization (multi-reference)",
            splits=("train", "validation", "test"),
            columns={
                "paper_id": "OpenReview paper id (str)",
                "title": "paper title (str)",
                "source": "the abstract, sentences joined with spaces (str)",
                "source_sentences": "the abstract, one sentence per item (list of str)",
                "targets": "reference TLDRs: 1 in train, 1-4 in validation, 2-4 in test (list of str)",
            },
            license="Apache-2.0",
            citation=(
                "Cachola, Lo, Cohan and Weld (2020). TLDR: Extreme Summarization of Scientific "
                "Documents. Findings of EMNLP 2020. arXiv:2004.15011"
            ),
            source="https://github.com/allenai/scitldr (SciTLDR-Data/SciTLDR-A/)",
            files={
                "train.jsonl.xz": "b222771d387be585cfdf5ae957b36757138415a352e0a3e3b23f73f87c3b1119",
                "dev.jsonl.xz": "3191fa98ccc09521332b7a1cd63b1930be4e8df125a235ccd31e40329709525e",
                "test.jsonl.xz": "fb42dd6cd4f4a1928ae8a01a189456fbfe994a07e938bd49f68653933f6503c9",
                "LICENSE": "c71d239df91726fc519c6eb72d318ec65820627232b2f796219e87dcf35d0ab4",
            },
            notes="validation is the original dev split.",
        ),
        DatasetInfo(
            name="goodbooks_10k",
            description=(
                "Metadata of the 10,000 most-rated Goodreads books and 298,176 1-5 star ratings "
                "by a random 5% of users (2,672 users)."
            ),
            task="recommendation",
            splits=("books", "ratings", "train", "validation", "test", "tags", "book_tags"),
            columns={
                "books: book_id": "1-10000, the key ratings refer to (int)",
                "books: title, original_title, authors, original_publication_year, language_code, ...": (
                    "the 23 columns of goodbooks-10k books.csv; image URLs must not be fetched offline"
                ),
                "ratings/train/validation/test: user_id, book_id, rating": "rating is 1-5 stars (int)",
                "tags: tag_id, tag_name": "the 34,252 Goodreads shelf names users gave books (raw, e.g. 'to-read')",
                "book_tags: book_id, goodreads_book_id, tag_id, tag_name, count": (
                    "each book's 25 most-used shelves, most used first (count: users who shelved it so)"
                ),
            },
            license="CC BY-SA 4.0 (share-alike: derived data must keep this licence)",
            citation=(
                "Zając, Z. (2017). Goodbooks-10k: a new dataset for book recommendations. "
                "github.com/zygmuntz/goodbooks-10k"
            ),
            source=(
                "https://github.com/zygmuntz/goodbooks-10k (books.csv); ratings sample from "
                "https://github.com/fant0md/minor-goodbooks-recommender (data/ratings_random.csv)"
            ),
            files={
                "books.csv.xz": "4d21d0e0433128657c752e3a3d0405ac0ec11675d6c70c64cb0abf4ab1acb76a",
                "ratings_sample_5pct_users.csv.xz": "43cadb63be762b025fda90a6bcd5fd1e03858ca7b1e3b9b90056f7569db3f4d8",
                "LICENSE": "1a459ea0f6e7f28d4eba7df0ddace58e0874e53dad4f787e0d206fdbf602147d",
                # User tags (recommendation chapter): tags.csv unchanged; book_tags_top25.csv = the first
                # 25 rows per book of upstream book_tags.csv (sorted by count); see PROVENANCE_tags.md.
                "tags.csv.xz": "87f316957564fa21c316a4f50afc87f07906f478f990eec027aaca00c536c449",
                "book_tags_top25.csv.xz": "0292c96b97c7d691ddc713376616c1f6070fd8646dec0cb34764334a3986583a",
                "PROVENANCE_tags.md": "d774aa7518c1594c7bf28715753f93448b4c2a91ce608fb418e9abdaf18fac9a",
            },
            notes=(
                "split='books' gives the books table, 'ratings' all ratings, and train/validation/test "
                "a random 80/10/10 split of the ratings (seed 0). 'tags' and 'book_tags' are the users' "
                "shelf names and each book's 25 most-used ones (raw: generic shelves such as to-read, "
                "owned or favorites included)."
            ),
        ),
        DatasetInfo(
            name="bitext_customer_support",
            description=(
                "4,514 customer-support questions (e-commerce: orders, refunds, accounts) with their intent "
                "and a full agent response: question -> best answer pairs."
            ),
            task="retrieval of answers to customer questions; intent classification (27 intents)",
            splits=("all", "train", "test"),
            columns={
                "text": "the customer's question (str)",
                "intent": "one of 27 intents, e.g. 'cancel_order' (str)",
                "category": "one of 11 categories, e.g. 'ORDER' (str)",
                "response": "the agent's answer; contains {{placeholders}} such as {{Website Name}} (str)",
                "group": "near-duplicate group id (int): questions whose word TF-IDF cosine is >= 0.8, "
                "joined transitively; train and test never share a group",
            },
            license="CDLA-Sharing-1.0 (share-alike: published data derived from it must keep this licence)",
            citation=(
                "Bitext Innovations (2023). Bitext Customer Support LLM Chatbot Training Dataset (4,514-row "
                "training sample). github.com/bitext/customer-support-llm-chatbot-training-dataset"
            ),
            source=(
                "https://github.com/bitext/customer-support-llm-chatbot-training-dataset "
                "(data/train/Bitext_Sample_Customer_Support_Training_Dataset.csv at commit 8b6ca3d9)"
            ),
            files={
                "Bitext_Sample_Customer_Support_Training_Dataset.csv.xz": (
                    "079b0cec48d34c319c9877b6d178390bf7187a7f7a604958e0ed5a096bba5af6"
                ),
                "LICENSE.txt": "f6054388eae4947a769ca2020c54e6d394eb01c41d58db55bb6cfd24ce71cdd8",
                "PROVENANCE.md": "8a63e2d1fd80718c5a6f65feedfe5134f6c1acfbcf666e4592a7a9b9788b0e48",
            },
            notes=(
                "The texts are template-expanded (hybrid synthetic), so many questions are near-copies of "
                "each other. train/test is a split by near-duplicate group: a seeded 20% of the groups "
                "(seed 0) goes to test, so no test question has a near-copy in train."
            ),
        ),
    ]
}


def list_datasets() -> pd.DataFrame:
    """One row per shipped data set: name, task, splits, licence and description."""
    return pd.DataFrame(
        [
            {
                "name": d.name,
                "task": d.task,
                "splits": ", ".join(d.splits),
                "license": d.license,
                "description": d.description,
            }
            for d in DATASETS.values()
        ]
    )


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a data set name (str) such as 'banking77', got {name!r} ({type(name).__name__})")
    try:
        return DATASETS[name]
    except KeyError:
        close = difflib.get_close_matches(name.strip().lower(), DATASETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown data set {name!r}.{hint} The book ships: {', '.join(DATASETS)}."
        ) from None


def _package_file(name: str, filename: str) -> Path:
    # a registered data set may share its folder with another; data written for the book (BOOK_DATA) has its own
    folder = DATASETS[name].data_folder() if name in DATASETS else name
    return Path(str(resources.files("llmbook") / "datasets" / folder / filename))


def read_verified_bytes(name: str, filename: str) -> bytes:
    """The bytes of a shipped file, decompressed, after checking them against the upstream SHA-256.

    Raises ``FileNotFoundError`` for a missing file and :class:`DataChecksumError` for a truncated,
    altered or undecodable one; both messages name the file and how to restore it.
    """
    info = dataset_info(name)
    if not isinstance(filename, str) or filename not in info.files:
        raise ValueError(f"{name} has no file {filename!r}; its files are {', '.join(info.files)}.")
    path = _package_file(name, filename)
    shown = f"llmbook/datasets/{info.data_folder()}/{filename}"
    if not path.is_file():
        raise FileNotFoundError(f"Data file {shown} is missing. {_REINSTALL_HINT}")
    raw = path.read_bytes()
    if filename.endswith(".xz"):
        try:
            raw = lzma.decompress(raw)
        except lzma.LZMAError as exc:
            raise DataChecksumError(
                f"Data file {shown} is corrupted or truncated (xz: {exc}). {_REINSTALL_HINT}"
            ) from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != info.files[filename]:
        raise DataChecksumError(
            f"Data file {shown} does not match its checksum (sha256 {digest[:12]}..., expected "
            f"{info.files[filename][:12]}...): it was altered or truncated. {_REINSTALL_HINT}"
        )
    return raw


def _read_text(name: str, filename: str) -> str:
    return read_verified_bytes(name, filename).decode("utf-8")


def _read_csv(name: str, filename: str, **kwargs) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(read_verified_bytes(name, filename)), encoding="utf-8", **kwargs)


def _stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask selecting ``fraction`` of the rows of each label (at least one), reproducibly."""
    rng = np.random.default_rng(seed)
    holdout = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        take = max(1, round(fraction * len(rows)))
        holdout[rng.choice(rows, size=take, replace=False)] = True
    return holdout


def _carve_validation(frame: pd.DataFrame, split: str) -> pd.DataFrame:
    """train/validation from one labelled source frame: a stratified 10% goes to validation."""
    holdout = _stratified_holdout(frame["label"].to_numpy(), 0.1, SPLIT_SEED)
    chosen = frame[holdout] if split == "validation" else frame[~holdout]
    return chosen.reset_index(drop=True)


def _load_banking77(split: str) -> pd.DataFrame:
    categories = json.loads(_read_text("banking77", "categories.json.xz"))
    index = {c: i for i, c in enumerate(categories)}
    source = "test.csv.xz" if split == "test" else "train.csv.xz"
    frame = _read_csv("banking77", source, dtype=str, keep_default_na=False)
    frame = frame.rename(columns={"category": "label_name"})
    frame["label"] = frame["label_name"].map(index).astype(int)
    frame = frame[["text", "label", "label_name"]]
    return frame if split == "test" else _carve_validation(frame, split)


_TWITTER_LABELS = ("Bearish", "Bullish", "Neutral")


def _load_twitter(split: str) -> pd.DataFrame:
    source = "sent_valid.csv.xz" if split == "test" else "sent_train.csv.xz"
    frame = _read_csv("twitter_financial_news_sentiment", source, keep_default_na=False)
    frame["label"] = frame["label"].astype(int)
    frame["label_name"] = frame["label"].map(dict(enumerate(_TWITTER_LABELS)))
    frame = frame[["text", "label", "label_name"]]
    return frame if split == "test" else _carve_validation(frame, split)


def goemotions_label_names() -> list[str]:
    """The 28 GoEmotions label names in id order (27 emotions, then 'neutral')."""
    return _read_text("goemotions", "emotions.txt.xz").split()


def _load_goemotions(split: str) -> pd.DataFrame:
    source = {"train": "train.tsv.xz", "validation": "dev.tsv.xz", "test": "test.tsv.xz"}[split]
    names = goemotions_label_names()
    groups = json.loads(_read_text("goemotions", "sentiment_dict.json.xz"))
    group_of = {emotion: group for group, emotions in groups.items() for emotion in emotions}
    group_of["neutral"] = "neutral"
    # TSV with CSV-style quoting ("" escapes a quote), no header.
    rows = list(csv.reader(io.StringIO(_read_text("goemotions", source), newline=""), delimiter="\t"))
    records = []
    for text, label_field, comment_id in rows:
        labels = [int(x) for x in label_field.split(",")]
        label_names = [names[i] for i in labels]
        sentiments = {group_of[n] for n in label_names}
        records.append(
            {
                "text": text,
                "labels": labels,
                "label_names": label_names,
                "sentiment": sentiments.pop() if len(sentiments) == 1 else "mixed",
                "id": comment_id,
            }
        )
    return pd.DataFrame.from_records(records, columns=["text", "labels", "label_names", "sentiment", "id"])


def _load_tiny_shakespeare(split: str) -> str:
    text = _read_text("tiny_shakespeare", "input.txt.xz")
    cut = int(0.9 * len(text))
    return {"all": text, "train": text[:cut], "validation": text[cut:]}[split]


def _load_tatoeba(split: str) -> pd.DataFrame:
    lines = _read_text("tatoeba_fra_eng", "fra_eng_20k.txt.xz").splitlines()
    # Split on tabs ourselves: 29 lines contain '"', which CSV quoting would mangle.
    pairs = [line.split("\t") for line in lines]
    bad = [i for i, p in enumerate(pairs) if len(p) != 2]
    if bad:
        raise DataChecksumError(f"tatoeba_fra_eng: lines {bad[:5]} do not have exactly one tab.")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(pairs))
    n_train, n_valid = int(0.9 * len(pairs)), int(0.05 * len(pairs))
    chosen = {
        "train": order[:n_train],
        "validation": order[n_train : n_train + n_valid],
        "test": order[n_train + n_valid :],
    }[split]
    return pd.DataFrame([pairs[i] for i in chosen], columns=["english", "french"])


def _load_scitldr(split: str) -> pd.DataFrame:
    source = {"train": "train.jsonl.xz", "validation": "dev.jsonl.xz", "test": "test.jsonl.xz"}[split]
    docs = [json.loads(line) for line in _read_text("scitldr", source).splitlines() if line.strip()]
    return pd.DataFrame(
        {
            "paper_id": [d["paper_id"] for d in docs],
            "title": [d["title"] for d in docs],
            "source": [" ".join(d["source"]) for d in docs],
            "source_sentences": [d["source"] for d in docs],
            "targets": [d["target"] for d in docs],
        }
    )


def _load_goodbooks(split: str) -> pd.DataFrame:
    if split == "books":
        return _read_csv("goodbooks_10k", "books.csv.xz")
    if split in ("tags", "book_tags"):
        tags = _read_csv("goodbooks_10k", "tags.csv.xz", keep_default_na=False)  # a tag may be named "null"
        if split == "tags":
            return tags
        book_tags = _read_csv("goodbooks_10k", "book_tags_top25.csv.xz")
        # Tags are keyed by Goodreads' book id; ratings by book_id 1-10000: join through books.csv.
        ids = _read_csv("goodbooks_10k", "books.csv.xz", usecols=["book_id", "goodreads_book_id"])
        joined = book_tags.merge(ids, on="goodreads_book_id", how="left", validate="many_to_one")
        joined = joined.merge(tags, on="tag_id", how="left", validate="many_to_one")
        return joined[["book_id", "goodreads_book_id", "tag_id", "tag_name", "count"]]
    ratings = _read_csv("goodbooks_10k", "ratings_sample_5pct_users.csv.xz")
    if split == "ratings":
        return ratings
    order = np.random.default_rng(SPLIT_SEED).permutation(len(ratings))
    n_train, n_valid = int(0.8 * len(ratings)), int(0.1 * len(ratings))
    chosen = {
        "train": order[:n_train],
        "validation": order[n_train : n_train + n_valid],
        "test": order[n_train + n_valid :],
    }[split]
    return ratings.iloc[np.sort(chosen)].reset_index(drop=True)


BITEXT_NEAR_DUPLICATE_THRESHOLD = 0.8
"""Word TF-IDF cosine at or above which two Bitext questions count as near-duplicates (same group)."""


def _load_bitext(split: str) -> pd.DataFrame:
    from llmbook.retrieval import near_duplicate_groups

    frame = _read_csv(
        "bitext_customer_support", "Bitext_Sample_Customer_Support_Training_Dataset.csv.xz",
        dtype=str, keep_default_na=False,
    )
    frame = frame.rename(columns={"instruction": "text"})
    frame["group"] = near_duplicate_groups(frame["text"].tolist(), BITEXT_NEAR_DUPLICATE_THRESHOLD)
    frame = frame[["text", "intent", "category", "response", "group"]]
    if split == "all":
        return frame
    # Whole groups go to test, so that no test question has a near-copy among the training questions.
    test_groups = np.random.default_rng(SPLIT_SEED).random(int(frame["group"].max()) + 1) < 0.2
    in_test = test_groups[frame["group"].to_numpy()]
    return frame[in_test if split == "test" else ~in_test].reset_index(drop=True)


_LOADERS: dict[str, Callable[[str], pd.DataFrame | str]] = {
    "banking77": _load_banking77,
    "twitter_financial_news_sentiment": _load_twitter,
    "goemotions": _load_goemotions,
    "tiny_shakespeare": _load_tiny_shakespeare,
    "tatoeba_fra_eng": _load_tatoeba,
    "scitldr": _load_scitldr,
    "goodbooks_10k": _load_goodbooks,
    "bitext_customer_support": _load_bitext,
}


def load_dataset(name: str, split: str = "train") -> pd.DataFrame | str:
    """Load one split of a shipped data set, verified against its checksums.

    Returns a DataFrame whose columns are listed in ``dataset_info(name).columns`` (for
    ``tiny_shakespeare``, a str). Unknown names or splits raise ``ValueError`` listing the valid
    ones; a missing or corrupted file raises ``FileNotFoundError`` / :class:`DataChecksumError`.
    """
    info = dataset_info(name)
    if not isinstance(split, str) or split not in info.splits:
        raise ValueError(f"{name} has no split {split!r}; choose one of {', '.join(info.splits)}.")
    return _LOADERS[name](split)


# Data written for this book (the customer-service chapter's reply templates, help articles and
# questions). It has no upstream copy, so pack_shared_data never touches it; it ships uncompressed, as
# the book's source, and is checked against these checksums like every other file.
BOOK_DATA: dict[str, dict[str, str]] = {
    "customer_service": {
        "reply_templates.json": "bc5ec483fa578103d09b4399b43c6e645a71d3109bd9ed98afb4b8225bfd03c3",
        "help_articles.json": "871743f4b2194a8e93fe27925614deb9d7b044b0b1e7c1d1d96f093855a8e546",
        "article_questions.csv": "4ae746f5c3b4004f259d57d8d89fab0e3c8023cfa51efee19b7474021795ddb5",
        "README.md": "f86d8fd4d492d8491884310444363f628e1566865085e80c31ebb095763738af",
    },
}
"""Folders of ``llmbook/datasets`` written for this book: file name -> SHA-256 of the shipped file."""

CUSTOMER_SERVICE_PARTS = ("templates", "placeholders", "articles", "questions")


def read_book_data(folder: str, filename: str) -> bytes:
    """The bytes of a file written for this book (see :data:`BOOK_DATA`), after checking its SHA-256.

    Raises ``FileNotFoundError`` for a missing file and :class:`DataChecksumError` for an altered one;
    the message names the file. After editing such a file on purpose, update its checksum in
    :data:`BOOK_DATA`.
    """
    if folder not in BOOK_DATA:
        raise ValueError(f"no data written for this book is called {folder!r}; there is {', '.join(BOOK_DATA)}")
    if not isinstance(filename, str) or filename not in BOOK_DATA[folder]:
        raise ValueError(f"{folder} has no file {filename!r}; its files are {', '.join(BOOK_DATA[folder])}.")
    path = _package_file(folder, filename)
    shown = f"llmbook/datasets/{folder}/{filename}"
    if not path.is_file():
        raise FileNotFoundError(f"Data file {shown} is missing. {_REINSTALL_HINT}")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != BOOK_DATA[folder][filename]:
        raise DataChecksumError(
            f"Data file {shown} does not match its checksum (sha256 {digest[:12]}..., expected "
            f"{BOOK_DATA[folder][filename][:12]}...): it was altered or truncated. If you edited it on "
            f"purpose, put the new checksum in llmbook.data.BOOK_DATA; otherwise {_REINSTALL_HINT}"
        )
    return raw


def load_customer_service(part: str) -> dict[str, str] | pd.DataFrame:
    """The customer-service data written for this book (taught in ``notebooks/09_customer_service.ipynb``).

    - ``"templates"``: a dict intent -> reply template, one per Banking77 intent, in label order;
      ``{placeholders}`` mark the details a real bank fills in.
    - ``"placeholders"``: a DataFrame ``name, meaning, example`` of those placeholders.
    - ``"articles"``: a DataFrame ``id, title, intents, body`` of help articles (``intents``: the
      Banking77 intents an article answers, a list of str; each intent has exactly one article).
    - ``"questions"``: a DataFrame ``question, article_id, split`` of customer questions labelled with
      the article that answers them; ``split`` is ``validation`` or ``test``.
    """
    if part not in CUSTOMER_SERVICE_PARTS:
        raise ValueError(f"part must be one of {', '.join(CUSTOMER_SERVICE_PARTS)}; got {part!r}")
    if part in ("templates", "placeholders"):
        data = json.loads(read_book_data("customer_service", "reply_templates.json").decode("utf-8"))
        if part == "templates":
            return dict(data["replies"])
        return pd.DataFrame(
            [{"name": name, "meaning": d["meaning"], "example": d["example"]} for name, d in data["placeholders"].items()]
        )
    if part == "articles":
        data = json.loads(read_book_data("customer_service", "help_articles.json").decode("utf-8"))
        return pd.DataFrame(data["articles"], columns=["id", "title", "intents", "body"])
    raw = read_book_data("customer_service", "article_questions.csv")
    return pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False)


def _write_bytes_atomically(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` through a temporary file in the same folder, fsync and ``os.replace``."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it private; shipped data is world-readable
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def pack_shared_data(source_dir: str | Path, target_dir: str | Path | None = None) -> list[Path]:
    """Rebuild ``llmbook/datasets`` from an uncompressed copy of the data (e.g. ``../shared/data``).

    Every source file is checked against the registry's checksum before anything is written, so the
    package can only ever ship the exact upstream bytes, and a bad source leaves the target as it
    was. Each file is written atomically (temporary file, fsync, ``os.replace``). Returns the files
    written.
    """
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise FileNotFoundError(f"{source_dir} is not a folder: pass the folder with one subfolder per data set.")
    target_dir = Path(target_dir) if target_dir is not None else Path(__file__).parent / "datasets"
    verified = []
    for info in DATASETS.values():
        for filename, expected in info.files.items():
            src = source_dir / info.data_folder() / filename.removesuffix(".xz")
            if not src.is_file():
                raise FileNotFoundError(f"{src} is missing: cannot pack {info.name}.")
            raw = src.read_bytes()
            if hashlib.sha256(raw).hexdigest() != expected:
                raise DataChecksumError(f"{src} does not match the registry's sha256 {expected[:12]}...")
            verified.append((target_dir / info.data_folder() / filename, raw))  # the whole data is ~50 MB
    written = []
    for out, raw in verified:
        out.parent.mkdir(parents=True, exist_ok=True)
        _write_bytes_atomically(out, lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME) if out.suffix == ".xz" else raw)
        written.append(out)
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m llmbook.data SOURCE_DIR``: rebuild ``llmbook/datasets``; problems are one line on stderr."""
    import argparse

    parser = argparse.ArgumentParser(description="Rebuild llmbook/datasets from an uncompressed data folder.")
    parser.add_argument("source_dir", help="folder with one subfolder per data set, e.g. ../shared/data")
    args = parser.parse_args(argv)
    try:
        files = pack_shared_data(args.source_dir)
    except (FileNotFoundError, DataChecksumError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"packed {len(files)} files into llmbook/datasets")
    return 0


# The finance-monitoring chapter's topic set (notebooks/10_finance_monitoring.ipynb).
DATASETS["twitter_financial_news_topic"] = DatasetInfo(
    name="twitter_financial_news_topic",
    description="English finance-news tweets labelled with one of 20 topics (e.g. Earnings, Fed, IPO).",
    task="topic classification",
    splits=("train", "validation", "test"),
    columns={
        "text": "the tweet, with its t.co links and HTML entities such as &amp; (str)",
        "label": "topic id, 0-19 (int), the line number in classes.txt",
        "label_name": "topic name, e.g. 'Gold | Metals | Materials' (str)",
    },
    license="MIT (per the dataset card)",
    citation=(
        "zeroshot (2022). Twitter Financial News Topic, v1.0.0. "
        "huggingface.co/datasets/zeroshot/twitter-financial-news-topic"
    ),
    source="https://huggingface.co/datasets/zeroshot/twitter-financial-news-topic",
    files={
        "topic_train.csv.xz": "63b9ea8183728dd5ddc6a57289341556509ddc0a8d037616519319a316b54490",
        "topic_valid.csv.xz": "67396d6cd4a21c3755de783f20fb5842f12ae8edb9367eed5d2644dd85ca9243",
        "classes.txt": "f1e634f8417de536a807d4c6dc77fd13c35dbe96124d990cd0e8bf46a9172821",
        "LICENSE.txt": "f906882dc33b9fe57846a1a1610f5b610de83bb5a8decb6ae3a77c7b6641a1f7",
        "PROVENANCE.md": "1fc785109e10e717fc556ae1cd0517873b2660f5830bde8277bf1ce6500f19c6",
    },
    notes=(
        "validation is a stratified 10% of the original train split (seed 0); test is the original "
        "'validation' split (4,117 tweets), which the book never tunes on. Rare topics: IPO has 44 "
        "original training tweets, Gold | Metals | Materials 69."
    ),
)


def finance_topic_names() -> list[str]:
    """The 20 topic names of ``twitter_financial_news_topic`` in label order (from ``classes.txt``)."""
    return [line for line in _read_text("twitter_financial_news_topic", "classes.txt").splitlines() if line.strip()]


def _load_finance_topic(split: str) -> pd.DataFrame:
    source = "topic_valid.csv.xz" if split == "test" else "topic_train.csv.xz"
    frame = _read_csv("twitter_financial_news_topic", source, keep_default_na=False)
    names = finance_topic_names()
    frame["label"] = frame["label"].astype(int)
    frame["label_name"] = frame["label"].map(dict(enumerate(names)))
    frame = frame[["text", "label", "label_name"]]
    return frame if split == "test" else _carve_validation(frame, split)


_LOADERS["twitter_financial_news_topic"] = _load_finance_topic


# The Transformer chapter's translation set (notebooks/03_transformer.ipynb): every pair of the
# ManyThings file, in the same folder as the 20,000-pair sample, split so that no English sentence
# is in two splits (one English sentence often has several French translations).
DATASETS["tatoeba_fra_eng_full"] = DatasetInfo(
    name="tatoeba_fra_eng_full",
    folder="tatoeba_fra_eng",
    description="All 142,787 English-French sentence pairs of the ManyThings.org Tatoeba file (98,659 English sentences).",
    task="machine translation",
    splits=("train", "validation", "test"),
    columns={
        "english": "the English sentence (str)",
        "french": "one French translation; may contain U+202F / U+00A0 before !?:; (str)",
    },
    license="CC BY 2.0 FR",
    citation="Tatoeba Project (tatoeba.org), sentence pairs compiled by ManyThings.org (manythings.org/anki)",
    source="http://www.manythings.org/anki/ (fra-eng.zip, 2017-09-29), the whole file",
    files={
        "fra_eng_full.txt.xz": "2546838ae46e0eac4c02ab7032ea0a02a006074a5340077a36a9444f41e02888",
        "_about.txt": "359011f5738272138286287b44db215d184823911eb049da2160a6ac6933d6c9",
    },
    notes=(
        "Split by English sentence: the distinct English sentences (compared after Unicode NFKC, straight "
        "apostrophes and single spaces, see tatoeba_english_key) are shuffled (seed 0) and cut 90/5/5, and every "
        "pair goes to the split of its English sentence, so all translations of one sentence stay together "
        "and no English sentence is in two splits. Pairs of one English sentence are adjacent in a split."
    ),
)


def tatoeba_english_key(text: str) -> str:
    """The key that decides when two English sentences of Tatoeba are the same sentence.

    Unicode NFKC (no-break and thin spaces become spaces), curly apostrophes made straight, runs of
    whitespace made one space, ends stripped: two lines that differ only in those invisible ways
    must not land in different splits.
    """
    import unicodedata

    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'").replace("\u2018", "'")
    return " ".join(text.split())


def _load_tatoeba_full(split: str) -> pd.DataFrame:
    lines = _read_text("tatoeba_fra_eng_full", "fra_eng_full.txt.xz").splitlines()
    pairs = [line.split("\t") for line in lines]  # not CSV: some lines contain '"'
    bad = [i for i, p in enumerate(pairs) if len(p) != 2]
    if bad:
        raise DataChecksumError(f"tatoeba_fra_eng_full: lines {bad[:5]} do not have exactly one tab.")
    keys = [tatoeba_english_key(english) for english, _ in pairs]
    distinct = list(dict.fromkeys(keys))  # first-appearance order, the same on every machine
    order = np.random.default_rng(SPLIT_SEED).permutation(len(distinct))
    n_train, n_valid = int(0.9 * len(distinct)), int(0.05 * len(distinct))
    chosen = {
        "train": order[:n_train],
        "validation": order[n_train : n_train + n_valid],
        "test": order[n_train + n_valid :],
    }[split]
    rows_of: dict[str, list[int]] = {}
    for row, key in enumerate(keys):
        rows_of.setdefault(key, []).append(row)
    rows = [row for group in chosen for row in rows_of[distinct[group]]]
    return pd.DataFrame([pairs[i] for i in rows], columns=["english", "french"])


_LOADERS["tatoeba_fra_eng_full"] = _load_tatoeba_full


if __name__ == "__main__":
    sys.exit(main())
