"""BERT from scratch: the encoder, checkpoint loading, and the two pretraining tasks (MLM and NSP).

Taught in the BERT chapter (``notebooks/05_bert.ipynb``); the fine-tuning and application chapters
reuse :class:`BertModel` and the pooling it enables.

The encoder is built from the book's own :class:`llmbook.attention.MultiHeadAttention`::

    h₀ = LayerNorm(E_token[x] + E_position[t] + E_segment[s])          (embeddings)
    a  = LayerNorm(h + MHA(h, h, h, padding mask))                     (post-LN, as in BERT)
    h' = LayerNorm(a + W₂ GELU(W₁ a))
    pooled = tanh(W_p h_L[CLS])                                        (the pooler)

:meth:`BertModel.from_pretrained` reads a Hugging Face BERT checkpoint folder (``config.json`` +
``model.safetensors`` or ``pytorch_model.bin``, or shards listed in a ``*.index.json``) and maps its
weight names onto ours; the tests check
that the result equals ``transformers.BertModel`` to 1e-4. :func:`mask_tokens` builds masked-language-
model examples with BERT's 15% / 80-10-10 rule and :func:`make_nsp_pairs` next-sentence-prediction pairs;
:class:`BertForPreTraining` adds an MLM head whose output matrix is *tied* to the token embeddings and an
NSP head on the pooled output.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from llmbook.attention import MultiHeadAttention, padding_mask
from llmbook.checks import require_bool, require_int

__all__ = [
    "BertConfig",
    "BertModel",
    "BertLayer",
    "BertEmbeddings",
    "BertMLMHead",
    "BertForPreTraining",
    "PreTrainingOutput",
    "convert_hf_state_dict",
    "load_hf_state_dict",
    "mask_tokens",
    "make_nsp_pairs",
    "mlm_accuracy",
    "IGNORE_INDEX",
]

IGNORE_INDEX = -100
"""Label of positions that do not count in the MLM loss (PyTorch's ``cross_entropy`` default)."""

_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),  # BERT's GELU is the exact, erf-based one
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


@dataclass
class BertConfig:
    """The sizes of a BERT; field names and defaults are those of ``bert-base-uncased``'s ``config.json``."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"BertConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}"
            )
        if not isinstance(self.hidden_act, str) or self.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"BertConfig.hidden_act must be one of {sorted(_ACTIVATIONS)}, got {self.hidden_act!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not _is_real(value) or not 0.0 <= value < 1.0:
                raise ValueError(f"BertConfig.{name} must be a number in [0, 1), got {value!r}")
        if not _is_real(self.layer_norm_eps) or not (0.0 < self.layer_norm_eps < math.inf):
            raise ValueError(f"BertConfig.layer_norm_eps must be a small positive number, got {self.layer_norm_eps!r}")
        # None is allowed, as in Hugging Face's configs: then no embedding row is reserved for padding.
        pad = self.pad_token_id
        if pad is not None and (isinstance(pad, bool) or not isinstance(pad, numbers.Integral)
                                or not 0 <= pad < self.vocab_size):
            raise ValueError(
                f"BertConfig.pad_token_id must be None or an int in [0, vocab_size={self.vocab_size}), got {pad!r}"
            )

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "BertConfig":
        """Build from a ``config.json`` dict; refuses models that are not BERT, ignores unrelated keys."""
        if not isinstance(config, Mapping):
            raise TypeError(f"a BERT config must be a dict (the contents of config.json), got {type(config).__name__}")
        model_type = config.get("model_type")
        if model_type is not None and model_type != "bert":
            raise ValueError(f"config.json describes a {model_type!r} model, not a BERT (model_type 'bert')")
        position = config.get("position_embedding_type", "absolute")
        if position != "absolute":
            raise ValueError(f"position_embedding_type {position!r} is not supported (only 'absolute')")
        if config.get("is_decoder") or config.get("add_cross_attention"):
            raise ValueError("decoder / cross-attention BERT configurations are not supported")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
                         if n not in config)
        if missing:
            raise ValueError(f"config.json lacks BERT fields {missing}: is it a BERT checkpoint?")
        return cls(**{k: v for k, v in config.items() if k in names})

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        """Read a ``config.json`` file; every error about its contents starts with the file's path."""
        path = Path(path)
        config = _read_json(path)
        try:
            return cls.from_dict(config)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{path}: {exc}") from None


def _is_real(value: Any) -> bool:
    """A real number that is not a bool (``True`` is a number to Python, never a probability to a reader)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _read_json(path: Path) -> Any:
    """Parse a JSON file of a checkpoint; a damaged file gives one line naming it and the fix."""
    text = path.read_bytes()
    try:
        return json.loads(text)
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 JSON text: the file is corrupt; download the checkpoint again") from None
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}): "
            "the file is corrupt or truncated; download the checkpoint again"
        ) from None


class BertEmbeddings(nn.Module):
    """Token + learned absolute position + segment (token type) embeddings, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
             + self.token_type_embeddings(token_type_ids))
        return self.dropout(self.norm(x))


class BertLayer(nn.Module):
    """One post-LN encoder layer: LayerNorm(x + MHA(x)), then LayerNorm(a + FFN(a)).

    ``forward(x, mask)`` returns ``(output, attention weights (batch, heads, L, L))``.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.attention = MultiHeadAttention(d, config.num_attention_heads, dropout=config.attention_probs_dropout_prob)
        self.attention_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(d, config.intermediate_size)
        self.ffn_out = nn.Linear(config.intermediate_size, d)
        self.ffn_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.act = _ACTIVATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        attended, weights = self.attention(x, x, x, mask=mask)
        a = self.attention_norm(x + self.dropout(attended))
        h = self.ffn_norm(a + self.dropout(self.ffn_out(self.act(self.ffn_in(a)))))
        return h, weights


def _check_ids(name: str, ids: torch.Tensor, upper: int, shape: torch.Size | None = None) -> None:
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(ids).__name__}")
    if ids.dim() != 2:
        raise ValueError(f"{name} must be (batch, length), got shape {tuple(ids.shape)}")
    if shape is not None and ids.shape != shape:
        raise ValueError(f"{name} has shape {tuple(ids.shape)} but input_ids has {tuple(shape)}")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer ids (torch.long), got dtype {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= upper):
        raise ValueError(f"{name} must lie in [0, {upper}); got values in [{int(ids.min())}, {int(ids.max())}]")


class BertModel(nn.Module):
    """The BERT encoder with its pooler.

    ``model(input_ids, attention_mask=None, token_type_ids=None)`` takes ``(batch, L)`` integer tensors
    (``attention_mask``: 1 = real token, 0 = padding; ``token_type_ids``: segment 0 or 1) and returns
    ``(last_hidden_state (batch, L, hidden), pooled_output (batch, hidden))``. With
    ``output_attentions=True`` a third element is added: a tuple of per-layer attention weights
    ``(batch, heads, L, L)``.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if not isinstance(config, BertConfig):
            raise TypeError(f"config must be a BertConfig, got {type(config).__name__}")
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation: N(0, 0.02) for weights, zero biases, LayerNorm at identity."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        cfg = self.config
        output_attentions = require_bool("output_attentions", output_attentions)
        _check_ids("input_ids", input_ids, cfg.vocab_size)
        if input_ids.shape[1] == 0:
            raise ValueError(
                f"input_ids of shape {tuple(input_ids.shape)} holds no tokens: every sequence needs at least one "
                "(a tokenizer gives at least [CLS] [SEP])"
            )
        if input_ids.shape[1] > cfg.max_position_embeddings:
            raise ValueError(
                f"input of length {input_ids.shape[1]} exceeds max_position_embeddings={cfg.max_position_embeddings}"
            )
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        _check_ids("token_type_ids", token_type_ids, cfg.type_vocab_size, input_ids.shape)
        mask = None
        if attention_mask is not None:
            if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"attention_mask must be a tensor of shape {tuple(input_ids.shape)} (1 = token, 0 = padding), "
                    f"got {tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else attention_mask!r}"
                )
            mask = padding_mask(attention_mask.to(input_ids.device))  # (batch, 1, 1, L): True = may attend
        h = self.embeddings(input_ids, token_type_ids)
        attentions = []
        for layer in self.layers:
            h, weights = layer(h, mask)
            attentions.append(weights)
        pooled = torch.tanh(self.pooler(h[:, 0]))
        if output_attentions:
            return h, pooled, tuple(attentions)
        return h, pooled

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "BertModel":
        """Load a Hugging Face BERT checkpoint folder (``config.json`` + ``model.safetensors`` or
        ``pytorch_model.bin``, or a sharded checkpoint: see :func:`load_hf_state_dict`). Pretraining heads
        (``cls.*``) in the file are skipped; any other unexpected or missing weight raises ``ValueError``
        listing them. A malformed ``config.json`` or a damaged weights file raises an error naming the file.
        Returns the model in eval mode.
        """
        folder = _checkpoint_folder(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no config.json in {folder.name!r}: not a Hugging Face checkpoint folder")
        config = BertConfig.from_json(folder / "config.json")
        model = cls(config)
        ours, _ = convert_hf_state_dict(load_hf_state_dict(folder), config.num_hidden_layers)
        model.load_weights(ours)
        return model.eval()

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """``load_state_dict`` with a readable error listing missing, unexpected and mis-shaped weights."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict of tensors, got {type(state_dict).__name__}")
        not_tensors = sorted(str(k) for k, v in state_dict.items() if not isinstance(v, torch.Tensor))
        if not_tensors:
            raise TypeError(f"state_dict values must be tensors; these are not: {not_tensors[:10]}")
        own = self.state_dict()
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        shapes = sorted(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                        for k, v in state_dict.items() if k in own and v.shape != own[k].shape)
        if missing or unexpected or shapes:
            raise ValueError(
                "the checkpoint does not fit this BERT:"
                + (f"\n  missing weights: {missing}" if missing else "")
                + (f"\n  unexpected weights: {unexpected}" if unexpected else "")
                + (f"\n  shape mismatches: {shapes}" if shapes else "")
            )
        self.load_state_dict(state_dict)


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
"""The weight files :func:`load_hf_state_dict` looks for, in order of preference (as ``transformers`` does)."""


def _checkpoint_folder(folder: str | Path) -> Path:
    if not isinstance(folder, (str, Path)):
        raise TypeError(f"folder must be a path (str or pathlib.Path), got {type(folder).__name__}")
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"checkpoint folder {str(folder)!r} does not exist: pass a local folder holding config.json and the "
            "weights (for a hub name, download it first, e.g. with huggingface_hub.snapshot_download)"
        )
    return folder


def load_hf_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """Read the weights of a checkpoint folder: the first of :data:`WEIGHT_FILES` that exists.

    A sharded checkpoint (``model.safetensors.index.json`` or ``pytorch_model.bin.index.json``, whose
    ``weight_map`` says which shard file holds each weight) is read shard by shard into one dict.
    A truncated or corrupt file raises ``ValueError`` naming it.
    """
    folder = _checkpoint_folder(folder)
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            return _load_sharded(path) if name.endswith(".index.json") else _load_weight_file(path)
    raise FileNotFoundError(f"no weights in {str(folder)!r}: looked for {', '.join(WEIGHT_FILES)}")


def _load_weight_file(path: Path) -> dict[str, torch.Tensor]:
    """One ``.safetensors`` or ``torch.save``d file as a dict of tensors, with one-line errors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    damaged = f"{path} is corrupt or truncated ({{}}): delete it and download the checkpoint again"
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except SafetensorError as exc:
            raise ValueError(damaged.format(_gist(exc))) from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (FileNotFoundError, PermissionError, MemoryError):
            raise
        except Exception as exc:  # a damaged file fails in many ways: EOFError, KeyError, OSError (EINVAL), ...
            if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in str(exc):
                raise ValueError(
                    f"{path} holds Python objects besides tensors, which are not loaded for safety: save the "
                    "weights alone with torch.save(model.state_dict(), path)"
                ) from None
            raise ValueError(damaged.format(_gist(exc))) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{path} does not hold a state dict (names -> tensors) but a {type(state).__name__}: save the "
            "weights with torch.save(model.state_dict(), path)"
        )
    return dict(state)


def _gist(exc: BaseException) -> str:
    """Type and first sentence of a library's error: PyTorch's can run to a page of advice about other cases."""
    text = str(exc)
    # torch.load(weights_only=True) wraps the actual problem in paragraphs about weights_only
    text = text.split("WeightsUnpickler error:", 1)[-1]
    lines = [line for line in (raw.strip() for raw in text.splitlines()) if line]
    first = lines[0].split(". ")[0][:160] if lines else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _load_sharded(index_path: Path) -> dict[str, torch.Tensor]:
    """Read every shard named in a Hugging Face ``*.index.json`` into one state dict."""
    index = _read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if (not isinstance(weight_map, dict) or not weight_map
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())):
        raise ValueError(
            f"{index_path} has no valid 'weight_map' (a JSON object from weight name to shard file name): "
            "the file is corrupt; download the checkpoint again"
        )
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        # Hugging Face writes shards next to their index; a path elsewhere is not a checkpoint of this folder.
        if Path(shard).name != shard or shard in ("", ".", ".."):
            raise ValueError(f"{index_path} names the shard {shard!r}, which is not a file name in its folder")
        path = index_path.parent / shard
        if not path.is_file():
            raise FileNotFoundError(
                f"{index_path} lists the shard {shard} but {path} does not exist: the download is incomplete; "
                "download the checkpoint again"
            )
        part = _load_weight_file(path)
        repeated = sorted(set(part) & set(state))
        if repeated:
            raise ValueError(f"weights {repeated[:10]} appear in {path} and in another shard of {index_path}")
        state.update(part)
    missing = sorted(set(weight_map) - set(state))
    if missing:
        raise ValueError(
            f"{index_path} lists weights that no shard holds: {missing[:10]}"
            + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            + ": a shard is out of date; download the checkpoint again"
        )
    return state


# Hugging Face name (inside encoder.layer.{i}.) -> our name (inside layers.{i}.)
_LAYER_MAP = {
    "attention.self.query": "attention.q_proj",
    "attention.self.key": "attention.k_proj",
    "attention.self.value": "attention.v_proj",
    "attention.output.dense": "attention.out_proj",
    "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
    "output.LayerNorm": "ffn_norm",
}
_TOP_MAP = {
    "embeddings.word_embeddings": "embeddings.word_embeddings",
    "embeddings.position_embeddings": "embeddings.position_embeddings",
    "embeddings.token_type_embeddings": "embeddings.token_type_embeddings",
    "embeddings.LayerNorm": "embeddings.norm",
    "pooler.dense": "pooler",
}
_IGNORED_BUFFERS = ("embeddings.position_ids",)


def convert_hf_state_dict(
    state_dict: Mapping[str, torch.Tensor], num_layers: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Rename a Hugging Face BERT state dict to :class:`BertModel`'s names.

    Accepts the bare encoder's names (``embeddings.*``, ``encoder.layer.N.*``, ``pooler.*``) and those of
    ``BertForPreTraining``/``BertForMaskedLM`` (``bert.`` prefix), and old TensorFlow-era ``gamma``/``beta``
    LayerNorm names. Returns ``(ours, heads)``: ``heads`` holds the ``cls.*`` pretraining-head tensors
    (empty for encoder-only checkpoints). Anything else raises ``ValueError`` listing the names.
    """
    ours: dict[str, torch.Tensor] = {}
    heads: dict[str, torch.Tensor] = {}
    unknown = []
    for name, tensor in state_dict.items():
        key = name[len("bert."):] if name.startswith("bert.") else name
        key = key.replace(".gamma", ".weight").replace(".beta", ".bias")
        if key.startswith("cls."):
            heads[key] = tensor
            continue
        if key in _IGNORED_BUFFERS:
            continue
        module, _, param = key.rpartition(".")
        if module in _TOP_MAP:
            ours[f"{_TOP_MAP[module]}.{param}"] = tensor
            continue
        parts = module.split(".", 3)
        if len(parts) == 4 and parts[:2] == ["encoder", "layer"] and parts[2].isdigit() and parts[3] in _LAYER_MAP:
            index = int(parts[2])
            if index < num_layers:
                ours[f"layers.{index}.{_LAYER_MAP[parts[3]]}.{param}"] = tensor
                continue
        unknown.append(name)
    if unknown:
        raise ValueError(f"unexpected weights that are not part of a {num_layers}-layer BERT: {sorted(unknown)}")
    return ours, heads


class BertMLMHead(nn.Module):
    """Masked-language-model head: dense + GELU + LayerNorm, then a vocabulary projection whose weight
    matrix *is* the token embedding matrix (weight tying) plus its own bias."""

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.act = _ACTIVATIONS[config.hidden_act]
        self.word_embeddings = word_embeddings  # shared, not copied
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.act(self.dense(hidden)))
        return F.linear(h, self.word_embeddings.weight, self.bias)


@dataclass
class PreTrainingOutput:
    """What :class:`BertForPreTraining` returns; losses are ``None`` without labels."""

    loss: torch.Tensor | None
    mlm_loss: torch.Tensor | None
    nsp_loss: torch.Tensor | None
    mlm_logits: torch.Tensor  # (n_masked, vocab) if labels were given, else (batch, L, vocab)
    nsp_logits: torch.Tensor | None  # (batch, 2)
    mlm_labels: torch.Tensor | None  # the labels matching the rows of mlm_logits


class BertForPreTraining(nn.Module):
    """BERT with the two pretraining heads: MLM (tied to the embeddings) and, if ``nsp``, NSP.

    ``forward(input_ids, attention_mask, token_type_ids, labels=None, next_sentence_label=None)``.
    With ``labels`` (``IGNORE_INDEX`` at unmasked positions) the vocabulary projection runs only on the
    masked positions, which saves most of its cost; the loss is MLM cross-entropy plus, with
    ``next_sentence_label`` (0 = B follows A, 1 = B is random, as in Hugging Face), NSP cross-entropy.
    """

    def __init__(self, config: BertConfig, nsp: bool = True) -> None:
        super().__init__()
        nsp = require_bool("nsp", nsp)
        self.bert = BertModel(config)
        self.mlm = BertMLMHead(config, self.bert.embeddings.word_embeddings)
        self.nsp = nn.Linear(config.hidden_size, 2) if nsp else None
        for module in [self.mlm.dense, self.mlm.norm] + ([self.nsp] if nsp else []):
            module.apply(self.bert._init_weights)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        next_sentence_label: torch.Tensor | None = None,
    ) -> PreTrainingOutput:
        hidden, pooled = self.bert(input_ids, attention_mask, token_type_ids)
        vocab_size = self.bert.config.vocab_size
        mlm_loss = nsp_loss = nsp_logits = None
        if labels is not None:
            if not isinstance(labels, torch.Tensor) or labels.shape != input_ids.shape:
                shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
                raise ValueError(f"labels {shape} must be a tensor matching input_ids {tuple(input_ids.shape)}")
            if labels.dtype.is_floating_point or labels.dtype == torch.bool:
                raise TypeError(f"labels must hold integer ids (torch.long), got dtype {labels.dtype}")
            # Checked here because cross_entropy on a GPU reports a bad label only as a device-side assert.
            bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= vocab_size))
            if bool(bad.any()):
                raise ValueError(
                    f"labels must be token ids in [0, {vocab_size}) or IGNORE_INDEX ({IGNORE_INDEX}), "
                    f"got {int(labels[bad][0])}"
                )
            chosen = labels != IGNORE_INDEX
            mlm_labels = labels[chosen]
            mlm_logits = self.mlm(hidden[chosen])
            mlm_loss = F.cross_entropy(mlm_logits.float(), mlm_labels) if mlm_labels.numel() else hidden.sum() * 0
        else:
            mlm_labels = None
            mlm_logits = self.mlm(hidden)
        if self.nsp is not None:
            nsp_logits = self.nsp(pooled)
            if next_sentence_label is not None:
                batch = input_ids.shape[0]
                if (not isinstance(next_sentence_label, torch.Tensor) or next_sentence_label.shape != (batch,)
                        or next_sentence_label.dtype.is_floating_point or next_sentence_label.dtype == torch.bool
                        or not bool(((next_sentence_label == 0) | (next_sentence_label == 1)).all())):
                    raise ValueError(
                        f"next_sentence_label must be a ({batch},) integer tensor of 0 (B follows A) and "
                        "1 (B is random)"
                    )
                nsp_loss = F.cross_entropy(nsp_logits.float(), next_sentence_label)
        elif next_sentence_label is not None:
            raise ValueError("next_sentence_label given but this model was built with nsp=False")
        losses = [x for x in (mlm_loss, nsp_loss) if x is not None]
        loss = sum(losses) if losses else None
        return PreTrainingOutput(loss, mlm_loss, nsp_loss, mlm_logits, nsp_logits, mlm_labels)


def _as_python_int(value: Any) -> Any:
    """A one-element integer tensor (as iterating over a tensor of ids gives) as an ``int``; else unchanged."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_floating_point \
            and value.dtype != torch.bool:
        return int(value.item())
    return value


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    mask_token_id: int,
    vocab_size: int,
    special_ids: Iterable[int] = (),
    special_tokens_mask: torch.Tensor | None = None,
    mlm_probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking rule: choose ``mlm_probability`` of the non-special tokens; of those, replace
    80% with ``[MASK]``, 10% with a random token and leave 10% unchanged.

    Returns ``(masked_input_ids, labels)``; ``labels`` holds the original id at chosen positions and
    ``IGNORE_INDEX`` (-100) elsewhere. Tokens whose id is in ``special_ids`` (e.g. [CLS], [SEP], [PAD])
    or where ``special_tokens_mask`` is True are never chosen. Random replacements are drawn from the
    non-special ids. The input is not modified. ``mask_token_id`` and every special id must lie in the
    vocabulary ``[0, vocab_size)``: ids of another tokenizer raise ``ValueError``.
    """
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must hold integer ids, got dtype {input_ids.dtype}")
    if not _is_real(mlm_probability) or not 0 < mlm_probability <= 1:
        raise ValueError(f"mlm_probability must be in (0, 1], got {mlm_probability!r}")
    vocab_size = require_int("vocab_size", vocab_size, minimum=1)
    mask_token_id = require_int("mask_token_id", _as_python_int(mask_token_id))
    if not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"mask_token_id={mask_token_id} is outside the vocabulary [0, {vocab_size})")
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size):
        raise ValueError(f"input_ids must lie in [0, {vocab_size})")
    if isinstance(special_ids, (str, bytes)) or not isinstance(special_ids, Iterable):
        raise TypeError(f"special_ids must be a list of token ids, e.g. tokenizer.all_special_ids; got {special_ids!r}")
    checked = set()
    for i, token_id in enumerate(special_ids):
        token_id = require_int(f"special_ids[{i}]", _as_python_int(token_id))
        # Out of range, a negative id would silently exclude a token counted from the end of the vocabulary.
        if not 0 <= token_id < vocab_size:
            raise ValueError(
                f"special_ids holds {token_id}, outside the vocabulary [0, {vocab_size}): pass the special ids "
                "of the tokenizer whose vocab_size you pass (tokenizer.all_special_ids)"
            )
        checked.add(token_id)
    special_ids = sorted(checked | {mask_token_id})
    special = torch.isin(input_ids, torch.tensor(special_ids, device=input_ids.device))
    if special_tokens_mask is not None:
        if not isinstance(special_tokens_mask, torch.Tensor):
            raise TypeError(f"special_tokens_mask must be a boolean tensor, got {type(special_tokens_mask).__name__}")
        if special_tokens_mask.shape != input_ids.shape:
            raise ValueError(
                f"special_tokens_mask {tuple(special_tokens_mask.shape)} must match input_ids {tuple(input_ids.shape)}"
            )
        special |= special_tokens_mask.to(input_ids.device).bool()
    device = input_ids.device

    def uniform(shape: torch.Size) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=generator.device if generator else device).to(device)

    chosen = (uniform(input_ids.shape) < mlm_probability) & ~special
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    split = uniform(input_ids.shape)
    to_mask = chosen & (split < 0.8)
    to_random = chosen & (split >= 0.8) & (split < 0.9)
    masked = input_ids.clone()
    masked[to_mask] = mask_token_id
    n_random = int(to_random.sum())
    if n_random:
        allowed = torch.ones(vocab_size, dtype=torch.bool)
        allowed[special_ids] = False
        pool = allowed.nonzero().squeeze(1)
        picks = torch.randint(len(pool), (n_random,), generator=generator,
                              device=generator.device if generator else "cpu").cpu()
        masked[to_random] = pool[picks].to(device, input_ids.dtype)
    return masked, labels


def make_nsp_pairs(
    documents: Sequence[Sequence[str]], *, seed: int = 0, random_fraction: float = 0.5
) -> list[tuple[str, str, int]]:
    """Next-sentence-prediction pairs ``(sentence_a, sentence_b, label)`` from multi-sentence documents.

    For every pair of consecutive sentences in a document, B is the true next sentence (label 0) or,
    with probability ``random_fraction``, a sentence from a *different* random document (label 1).
    Documents with fewer than two sentences contribute nothing. Deterministic for a given ``seed``.
    A document given as one string (rather than a list of its sentences) raises ``TypeError``: split
    it into sentences first.
    """
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise TypeError("documents must be a sequence of documents, each a list of sentences")
    docs = []
    for d, doc in enumerate(documents):
        # A string is a sequence too: left alone, it would become pairs of single characters.
        if isinstance(doc, (str, bytes)) or not isinstance(doc, Iterable):
            raise TypeError(
                f"documents[{d}] is a {type(doc).__name__}, not a list of sentences: pass a list of documents, "
                "each a list of sentence strings, e.g. [['First sentence.', 'Second one.'], [...]]"
            )
        doc = list(doc)
        for i, sentence in enumerate(doc):
            if not isinstance(sentence, str):
                raise TypeError(f"documents[{d}][{i}] must be a sentence (str), got {type(sentence).__name__}")
        docs.append(doc)
    if len(docs) < 2:
        raise ValueError("need at least two documents to draw random (not-next) sentences")
    if not _is_real(random_fraction) or not 0.0 <= random_fraction <= 1.0:
        raise ValueError(f"random_fraction must be in [0, 1], got {random_fraction!r}")
    rng = random.Random(seed)
    pairs = []
    for d, doc in enumerate(docs):
        for i in range(len(doc) - 1):
            if rng.random() < random_fraction:
                other = rng.randrange(len(docs) - 1)
                other += other >= d  # any document but this one
                if not docs[other]:
                    continue
                pairs.append((doc[i], rng.choice(docs[other]), 1))
            else:
                pairs.append((doc[i], doc[i + 1], 0))
    return pairs


def mlm_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of labelled positions (label != -100) whose arg-max prediction is the label.

    ``logits`` is ``(..., vocab)`` and ``labels`` has the leading shape of ``logits``; NaN if nothing is labelled.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} do not line up")
    chosen = labels != IGNORE_INDEX
    if not bool(chosen.any()):
        return float("nan")
    return float((logits.argmax(-1)[chosen] == labels[chosen]).float().mean())


class BigramMLMBaseline:
    """A context baseline for masked-language modelling: predict a masked token from its *left* neighbour.

    Fitted on unmasked training ids ``(n, L)``: counts of (left, token) pairs whose token is not special,
    smoothed towards the add-one unigram distribution with Witten–Bell interpolation
    ``P(w | l) = λ_l c(l, w) / c(l) + (1 − λ_l) P_unigram(w)``, ``λ_l = c(l) / (c(l) + T(l))``, where
    ``T(l)`` is the number of distinct tokens seen after ``l``. A left neighbour never seen in training
    (such as ``[MASK]``, which unmasked text never holds) has ``λ = 0``: the unigram distribution.
    No parameter is tuned, so no data beyond the training ids is consulted.
    """

    def __init__(self, train_ids: torch.Tensor, *, vocab_size: int, special_ids: Iterable[int]) -> None:
        if not isinstance(train_ids, torch.Tensor) or train_ids.dim() != 2 or train_ids.dtype.is_floating_point:
            raise TypeError("train_ids must be a (sequences, length) integer tensor of token ids")
        self.vocab_size = v = require_int("vocab_size", vocab_size, minimum=1)
        if train_ids.numel() and (int(train_ids.min()) < 0 or int(train_ids.max()) >= v):
            raise ValueError(f"train_ids must lie in the vocabulary [0, {v})")
        self.special_ids = sorted({require_int("special id", _as_python_int(i)) for i in special_ids})
        ids = train_ids.long().cpu()
        left, token = ids[:, :-1].reshape(-1), ids[:, 1:].reshape(-1)
        keep = ~torch.isin(token, torch.tensor(self.special_ids, dtype=torch.long))
        left, token = left[keep], token[keep]
        if not len(token):
            raise ValueError("train_ids hold no pair of tokens to count (every token is special)")
        self.pairs, self.pair_counts = torch.unique(left * v + token, return_counts=True)
        self.left_counts = torch.bincount(left, minlength=v).double()
        self.left_types = torch.bincount(self.pairs // v, minlength=v).double()
        # Add-one unigram over all ids, the specials' share included, as the notebook's unigram baseline.
        counts = torch.bincount(ids[~torch.isin(ids, torch.tensor(self.special_ids, dtype=torch.long))],
                                minlength=v).double()
        self.unigram = (counts + 1) / (counts + 1).sum()

    def _weight(self, left: torch.Tensor) -> torch.Tensor:
        c, t = self.left_counts[left], self.left_types[left]
        return torch.where(c > 0, c / (c + t).clamp(min=1), torch.zeros_like(c))

    def prob(self, left: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """``P(token | left)`` for 1-D tensors of equal length (float64)."""
        left, token = left.long().cpu(), token.long().cpu()
        key = left * self.vocab_size + token
        where = torch.searchsorted(self.pairs, key).clamp(max=len(self.pairs) - 1)
        pair = torch.where(self.pairs[where] == key, self.pair_counts[where], 0).double()
        lam = self._weight(left)
        return lam * pair / self.left_counts[left].clamp(min=1) + (1 - lam) * self.unigram[token]

    def distribution(self, left: int) -> torch.Tensor:
        """The whole distribution ``P(· | left)`` over the vocabulary (sums to 1)."""
        everything = torch.arange(self.vocab_size)
        return self.prob(torch.full_like(everything, int(left)), everything)

    def evaluate(self, inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Cross-entropy (nats) and accuracy at the labelled positions of masked ``inputs`` / ``labels``.

        The left neighbour is read from ``inputs`` as the model sees it (``[MASK]`` if it is masked too).
        Labelled positions in column 0 have no left neighbour and raise ``ValueError``.
        """
        if not isinstance(inputs, torch.Tensor) or not isinstance(labels, torch.Tensor) or inputs.shape != labels.shape \
                or inputs.dim() != 2:
            raise ValueError("inputs and labels must be (sequences, length) tensors of the same shape")
        chosen = labels.cpu() != IGNORE_INDEX
        if bool(chosen[:, 0].any()):
            raise ValueError("a labelled position in column 0 has no left neighbour: column 0 should be [CLS]")
        if not bool(chosen.any()):
            raise ValueError("labels mark no position (all are IGNORE_INDEX)")
        rows, cols = chosen.nonzero(as_tuple=True)
        left, target = inputs.cpu()[rows, cols - 1].long(), labels.cpu()[rows, cols].long()
        loss = float(-self.prob(left, target).log().mean())
        # The arg-max is the most frequent continuation of `left` or the most frequent token overall.
        best_pair = torch.full((self.vocab_size,), -1, dtype=torch.long)
        order = torch.argsort(self.pair_counts, stable=True)  # later writes win: the largest count
        best_pair[self.pairs[order] // self.vocab_size] = self.pairs[order] % self.vocab_size
        top = int(self.unigram.argmax())
        candidate = torch.where(best_pair[left] >= 0, best_pair[left], torch.full_like(left, top))
        better = self.prob(left, candidate) >= self.prob(left, torch.full_like(left, top))
        prediction = torch.where(better, candidate, torch.full_like(left, top))
        return {"bigram cross-entropy": loss, "bigram accuracy": float((prediction == target).double().mean())}


__all__ += ["BigramMLMBaseline"]
