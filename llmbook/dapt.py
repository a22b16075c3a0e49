"""Domain-adaptive pretraining (DAPT): continue masked-language-model training on in-domain text.

Taught in the finance-monitoring chapter (``notebooks/10_finance_monitoring.ipynb``), which follows
the source's advice (§9 Q1) to keep pretraining a model on unlabelled text of a specialised domain
before fine-tuning it.

The pieces reuse the book's own: :func:`llmbook.bert.mask_tokens` (BERT's 15% / 80-10-10 rule),
:class:`llmbook.textclf.PadCollator` (dynamic padding) and :func:`llmbook.train.fit` (the book's
training loop). ``fit`` trains classifiers whose logits are ``(batch, classes)``; masked-language
modelling predicts a token at each masked position. :class:`MaskedLMCollator` and
:class:`MaskedPositionsModel` bridge the two: the collator lists the masked positions of a batch
and gives their original tokens as a flat ``labels`` vector, and the model returns the vocabulary
logits at exactly those positions, ``(n_masked, vocab)``. The mean cross-entropy ``fit`` computes
is then the MLM loss, and the 30,522-way output layer runs only on the ~15% masked positions.

- :func:`load_masked_lm`: a Hugging Face ``BertForMaskedLM`` and the names of the weights the
  checkpoint did *not* have (sentence-embedding checkpoints such as the bundled MiniLM ship without
  an MLM head);
- :func:`masked_lm_loss`: the mean MLM loss on held-out texts with a fixed masking seed, so two
  models are compared on exactly the same masked tokens;
- :func:`overlap_key` / :func:`drop_overlap`: remove exact and near-duplicate texts (same words after
  removing links, case and punctuation) of a protected set, e.g. a test set, from a corpus.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from llmbook.bert import IGNORE_INDEX, mask_tokens
from llmbook.checks import require_int
from llmbook.textclf import PadCollator

__all__ = [
    "MaskedLMCollator",
    "MaskedPositionsModel",
    "drop_overlap",
    "load_masked_lm",
    "masked_lm_loss",
    "overlap_key",
]

_LINK = re.compile(r"https?://\S+")
_NON_WORD = re.compile(r"[^a-z0-9$]+")


def overlap_key(text: str) -> str:
    """The text reduced to what makes it the same tweet: lower case, no links, words joined by one space.

    Two tweets with equal keys are near-duplicates (e.g. the same headline posted with another
    t.co link, or with different punctuation).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return _NON_WORD.sub(" ", _LINK.sub(" ", text.lower())).strip()


def drop_overlap(corpus: Sequence[str], protected: Iterable[str]) -> tuple[list[str], int]:
    """``corpus`` without the texts whose :func:`overlap_key` equals that of a ``protected`` text.

    Returns ``(kept texts, number dropped)``. Use it to keep test texts out of a pretraining corpus.
    """
    if isinstance(corpus, str) or isinstance(protected, str):
        raise TypeError("corpus and protected must be lists of texts, not one str")
    keys = {overlap_key(t) for t in protected}
    kept = [t for t in corpus if overlap_key(t) not in keys]
    return kept, len(corpus) - len(kept)


class MaskedLMCollator:
    """Pad a list of tokenised examples and mask them for MLM, in the layout :func:`llmbook.train.fit` takes.

    Returns ``input_ids`` (masked), ``attention_mask`` (and ``token_type_ids`` if present),
    ``mlm_positions`` (bool, ``(batch, seq)``: the positions to predict) and ``labels`` (the original
    ids at those positions, 1-D, in row-major order). The masking draws from the collator's own
    generator seeded with ``seed``: a fresh collator with the same seed masks the same batches the
    same way. Examples may carry a ``labels`` key (a classification dataset); it is ignored.
    """

    def __init__(self, tokenizer: Any, *, mlm_probability: float = 0.15, seed: int = 0) -> None:
        if getattr(tokenizer, "mask_token_id", None) is None or getattr(tokenizer, "pad_token_id", None) is None:
            raise ValueError("the tokenizer needs a [MASK] and a [PAD] token (a BERT WordPiece tokenizer has both)")
        self.tokenizer = tokenizer
        self.mlm_probability = mlm_probability
        self.seed = require_int("seed", seed, minimum=0)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.pad = PadCollator(int(tokenizer.pad_token_id))

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        features = [{k: v for k, v in f.items() if k != "labels"} for f in features]
        batch = self.pad(features)
        masked, labels = mask_tokens(
            batch["input_ids"],
            mask_token_id=int(self.tokenizer.mask_token_id),
            vocab_size=len(self.tokenizer),
            special_ids=self.tokenizer.all_special_ids,
            mlm_probability=self.mlm_probability,
            generator=self.generator,
        )
        positions = labels != IGNORE_INDEX
        batch["input_ids"] = masked
        batch["mlm_positions"] = positions
        batch["labels"] = labels[positions]
        return batch


class MaskedPositionsModel(nn.Module):
    """A ``BertForMaskedLM`` that returns the vocabulary logits of the masked positions only.

    ``forward(input_ids, attention_mask, mlm_positions, token_type_ids=None)`` runs the encoder on
    the whole batch and the MLM head on ``hidden[mlm_positions]``: logits ``(n_masked, vocab)``,
    matching the flat ``labels`` of :class:`MaskedLMCollator`. ``self.mlm`` is the wrapped model.
    """

    def __init__(self, mlm: nn.Module) -> None:
        super().__init__()
        if not hasattr(mlm, "bert") or not hasattr(mlm, "cls"):
            raise TypeError(f"expected a transformers BertForMaskedLM (with .bert and .cls), got {type(mlm).__name__}")
        self.mlm = mlm

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        mlm_positions: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = self.mlm.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        return self.mlm.cls(hidden[mlm_positions.bool()])


def load_masked_lm(path: str | os.PathLike, *, seed: int = 0) -> tuple[nn.Module, list[str]]:
    """``(BertForMaskedLM, names of weights the checkpoint lacked)`` from a checkpoint folder or hub name.

    Pass what :func:`llmbook.pretrained.resolve_pretrained` returned as ``.path`` (a hub name only
    when the hub answered); a path to a folder that does not exist is refused.

    The output matrix of the MLM head is tied to the word embeddings, so it is pretrained whenever
    the encoder is; the head's transform (dense + LayerNorm) and its output bias are new (randomly
    initialised) when the checkpoint was saved without them — as the bundled MiniLM sentence encoder
    was. The list says which, so the caller can train them before measuring anything. The new
    weights are drawn with ``seed`` (the caller's random state is left as it was), so a rerun starts
    from the same head and reproduces the numbers measured with it.
    """
    from transformers import BertForMaskedLM
    from transformers.utils import logging as hf_logging

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a checkpoint folder or a hub name, got {type(path).__name__}")
    seed = require_int("seed", seed, minimum=0)
    name = os.fspath(path)
    looks_like_a_path = os.sep in name.replace("/", os.sep) and name.count("/") != 1 or name.startswith((".", "~"))
    if not os.path.isdir(name) and (looks_like_a_path or os.path.exists(name)):
        raise ValueError(
            f"{name!r} is not a checkpoint folder: pass resolve_pretrained(...).path (a local folder or a hub name)"
        )
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the loading report would print a table; the caller gets the list
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, info = BertForMaskedLM.from_pretrained(name, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    return model, sorted(info["missing_keys"])


@torch.no_grad()
def masked_lm_loss(
    model: nn.Module,
    texts: Sequence[str],
    tokenizer: Any,
    *,
    max_length: int = 64,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Mean MLM loss (nats per masked token), its perplexity and MLM accuracy on ``texts``.

    ``model`` is a :class:`MaskedPositionsModel` (or a ``BertForMaskedLM``, which is wrapped). The
    masking uses a fresh generator seeded with ``seed``, so two models evaluated with the same
    texts, batch size and seed are scored on exactly the same masked tokens (a paired comparison).
    ``perplexity`` is ``exp(loss)``: how many tokens, in effect, the model hesitates between at a
    masked position.
    """
    if isinstance(texts, str) or not len(texts):
        raise ValueError("texts must be a non-empty list of strings")
    max_length = require_int("max_length", max_length, minimum=2)
    batch_size = require_int("batch_size", batch_size, minimum=1)
    if not isinstance(model, MaskedPositionsModel):
        model = MaskedPositionsModel(model)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    collate = MaskedLMCollator(tokenizer, seed=seed)
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    rows = [{k: encoded[k][i] for k in encoded} for i in range(len(texts))]
    was_training = model.training
    model.eval()
    total, correct, count = 0.0, 0, 0
    try:
        for start in range(0, len(rows), batch_size):
            batch = collate(rows[start:start + batch_size])
            labels = batch.pop("labels").to(device)
            if labels.numel() == 0:
                continue
            logits = model(**{k: v.to(device) for k, v in batch.items()}).float()
            total += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(-1) == labels).sum())
            count += int(labels.numel())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no token was masked: the texts are too short (only special tokens?)")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(loss), "accuracy": correct / count, "masked_tokens": float(count)}

