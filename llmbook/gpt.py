"""A small decoder-only Transformer (GPT), its training data windows, sampling and a KV cache.

Taught in the GPT chapter (``notebooks/04_gpt.ipynb``): causal language modelling on characters,
greedy / temperature / top-k / top-p sampling, and a key-value cache that makes generation fast.

    >>> cfg = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
    >>> model = GPT(cfg)
    >>> logits, loss = model(idx, targets)          # idx, targets: (batch, length) token ids
    >>> out = generate(model, idx[:, :1], max_new_tokens=100, temperature=0.8, top_k=40)

The attention inside each block is ``llmbook.attention.scaled_dot_product_attention`` (the formula
written out, ``attn_impl="naive"``) or PyTorch's fused ``torch.nn.functional.scaled_dot_product_attention``
(``attn_impl="sdpa"``); the two compute the same function, and the chapter compares their speed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from llmbook.attention import MultiHeadAttention, scaled_dot_product_attention
from llmbook.checks import defines_no_distribution, require_bool, require_int
from llmbook.runtime import read_torch_file, write_atomic

ATTN_IMPLS = ("naive", "sdpa")
GELU_APPROXIMATIONS = ("none", "tanh")


@dataclass
class GPTConfig:
    """Sizes of a GPT. ``block_size`` is the longest context the model accepts (learned positions)."""

    vocab_size: int = 65
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    attn_impl: str = "sdpa"
    gelu_approximate: str = "none"  # "tanh": the approximation GPT-2 was trained with ("gelu_new")

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        self.bias = require_bool("GPTConfig.bias", self.bias)
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {self.attn_impl!r}")
        if self.gelu_approximate not in GELU_APPROXIMATIONS:
            raise ValueError(
                f"gelu_approximate must be one of {GELU_APPROXIMATIONS} (as in torch.nn.functional.gelu), "
                f"got {self.gelu_approximate!r}"
            )


def _check_token_ids(name: str, ids: torch.Tensor, vocab_size: int) -> None:
    """Token ids must index the embedding: name the first offending id and the vocabulary size.

    (On a GPU an out-of-range id is a device-side assert that breaks the whole CUDA context.)
    """
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids (torch.long), got dtype {ids.dtype}")
    outside = (ids < 0) | (ids >= vocab_size)
    if ids.numel() and bool(outside.any()):
        bad = int(ids[outside][0])
        raise ValueError(
            f"{name} holds token id {bad}, outside the vocabulary [0, {vocab_size}) of this model "
            f"(vocab_size={vocab_size}); encode the text with the tokenizer the model was built for"
        )


class KVCache:
    """Keys and values of every layer for the positions seen so far, preallocated to ``max_len``.

    ``k`` and ``v`` have shape ``(n_layer, batch, n_head, max_len, head_dim)``; ``length`` is how
    many positions are filled. :meth:`GPT.forward` writes the new positions and advances ``length``.
    """

    def __init__(self, config: GPTConfig, batch: int, device: torch.device | str, dtype: torch.dtype,
                 max_len: int | None = None) -> None:
        batch = require_int("batch", batch, minimum=1)
        max_len = config.block_size if max_len is None else require_int("max_len", max_len)
        if not 1 <= max_len <= config.block_size:
            raise ValueError(f"max_len must be in [1, block_size={config.block_size}], got {max_len}")
        shape = (config.n_layer, batch, config.n_head, max_len, config.n_embd // config.n_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v`` (batch, heads, T, head_dim) after the filled positions; return all keys/values so far."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {start} + {k.shape[2]} positions exceed max_len={self.max_len}")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class CausalSelfAttention(nn.Module):
    """Masked multi-head self-attention: position i attends to positions j ≤ i only.

    The projections are those of :class:`llmbook.attention.MultiHeadAttention`; the attention itself is
    the naive formula or PyTorch's fused kernel, chosen by ``config.attn_impl``.
    """

    def __init__(self, config: GPTConfig, layer: int = 0) -> None:
        super().__init__()
        self.mha = MultiHeadAttention(config.n_embd, config.n_head, dropout=config.dropout, bias=config.bias)
        self.n_head, self.head_dim = config.n_head, config.n_embd // config.n_head
        self.attn_impl = config.attn_impl
        self.layer = layer
        self.resid_dropout = nn.Dropout(config.dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.n_head, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        b, t, c = x.shape
        q = self._heads(self.mha.q_proj(x))
        k = self._heads(self.mha.k_proj(x))
        v = self._heads(self.mha.v_proj(x))
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(self.layer, k, v)
        dropout_p = self.mha.dropout if self.training else 0.0
        # Query i sits at absolute position past + i and may see keys 0 .. past + i.
        if self.attn_impl == "sdpa":
            if t == 1:  # one new query sees every cached key: no mask needed
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
            elif past == 0:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
            else:  # is_causal aligns the mask top-left when L_q != L_k, which is wrong here
                mask = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(diagonal=past)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        else:
            mask = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y, _ = scaled_dot_product_attention(q, k, v, mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(b, t, c)
        return self.resid_dropout(self.mha.out_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward network: Linear(d, 4d) → GELU → Linear(4d, d).

    The GELU is exact unless ``config.gelu_approximate == "tanh"`` (GPT-2's approximation).
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.gelu_approximate = config.gelu_approximate
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate=self.gelu_approximate)))


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, config: GPTConfig, layer: int = 0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Decoder-only Transformer language model with learned positions and tied input/output embeddings.

    ``forward(idx, targets=None, cache=None)`` takes ``(batch, T)`` token ids and returns
    ``(logits (batch, T, vocab), loss)``; ``loss`` is the mean cross-entropy in nats per token when
    ``targets`` is given (positions with target -100 are left out), else ``None``. With a
    :class:`KVCache`, ``idx`` holds only the new tokens, which sit after the ``cache.length``
    positions already cached. Token ids outside ``[0, vocab_size)``, and a cache of another batch
    size or without room for the new tokens, raise ``ValueError`` before anything is computed.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying: one matrix embeds and un-embeds
        self.apply(self._init_weights)
        # GPT-2's scaled init of the projections that write into the residual stream.
        for name, p in self.named_parameters():
            if name.endswith("out_proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters (the tied matrix counted once); ``non_embedding`` leaves out the position table."""
        non_embedding = require_bool("non_embedding", non_embedding)
        n = sum(p.numel() for p in self.parameters())
        return n - self.pos_emb.weight.numel() if non_embedding else n

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
            shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
            dtype = idx.dtype if isinstance(idx, torch.Tensor) else None
            raise ValueError(f"idx must be a (batch, length) tensor of integer token ids, got {shape} {dtype or ''}")
        b, t = idx.shape
        if t == 0:
            raise ValueError("idx has no tokens (length 0)")
        if not torch.compiler.is_compiling():
            # the range check reads tensor values (.item()), which would break a torch.compile graph
            _check_token_ids("idx", idx, self.config.vocab_size)
        past = 0 if cache is None else cache.length
        if past + t > self.config.block_size:
            raise ValueError(
                f"context of {past + t} tokens is longer than the model's block_size={self.config.block_size}"
            )
        if cache is not None:
            self._check_cache(cache, b, t)
        if targets is not None:
            if not isinstance(targets, torch.Tensor) or targets.shape != idx.shape:
                shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
                raise ValueError(f"targets {shape} must have the shape of idx {tuple(idx.shape)}")
            # -100 is cross_entropy's ignore_index: positions that take no part in the loss.
            if not torch.compiler.is_compiling():  # (a value check: see idx above)
                _check_token_ids("targets", targets.masked_fill(targets == -100, 0), self.config.vocab_size)
        pos = torch.arange(past, past + t, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))
        for block in self.blocks:
            x = block(x, cache)
        if cache is not None:
            cache.length += t
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def _check_cache(self, cache: KVCache, batch: int, new: int) -> None:
        """The cache must fit this model's shape, hold ``batch`` sequences and have room for ``new`` positions."""
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a KVCache from model.new_cache(batch), got {type(cache).__name__}")
        cfg = self.config
        n_layer, cache_batch, n_head, _, head_dim = cache.k.shape
        if (n_layer, n_head, head_dim) != (cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head):
            raise ValueError(
                f"the KV cache was made for another model ({n_layer} layers, {n_head} heads of size {head_dim}); "
                "create it with this model's new_cache(batch)"
            )
        if cache_batch != batch:
            raise ValueError(
                f"the KV cache holds {cache_batch} sequences but idx has a batch of {batch}; "
                f"create it with model.new_cache(batch={batch})"
            )
        if cache.k.device != self.tok_emb.weight.device:
            raise ValueError(
                f"the KV cache is on {cache.k.device} but the model on {self.tok_emb.weight.device}; "
                "create the cache after moving the model"
            )
        if cache.length + new > cache.max_len:
            raise ValueError(
                f"the KV cache is full: {cache.length} cached + {new} new positions exceed its "
                f"max_len={cache.max_len}; "
                f"create a larger one with model.new_cache(batch, max_len=...) (at most block_size={cfg.block_size})"
            )

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        """An empty :class:`KVCache` for ``batch`` sequences on this model's device and dtype."""
        p = self.tok_emb.weight
        return KVCache(self.config, batch, p.device, p.dtype, max_len)


def get_batch(
    data: torch.Tensor, batch_size: int, block_size: int, generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random training windows: ``x = data[i : i+block_size]`` and ``y = data[i+1 : i+1+block_size]``.

    ``data`` is a 1-D tensor of token ids; ``y`` is ``x`` shifted left by one, so every position of a
    window is a next-token prediction example. Returns two ``(batch_size, block_size)`` int64 tensors.
    """
    if not isinstance(data, torch.Tensor) or data.dim() != 1:
        raise ValueError(f"data must be a 1-D tensor of token ids, got {getattr(data, 'shape', type(data))}")
    if batch_size < 1 or block_size < 1:
        raise ValueError(f"batch_size and block_size must be positive, got {batch_size} and {block_size}")
    if len(data) < block_size + 1:
        raise ValueError(
            f"data has {len(data)} tokens; windows of block_size={block_size} need at least {block_size + 1}"
        )
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    offsets = torch.arange(block_size)
    x = data[starts[:, None] + offsets].long()
    y = data[starts[:, None] + offsets + 1].long()
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x, y


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the nucleus (smallest set with mass ≥ top_p).

    ``logits`` is ``(..., vocab)``. The most likely token always survives. Ties at the k-th value
    are all kept. Entries that are already -inf stay out (so filters can be chained); NaN, +inf, or
    a row with no finite logit raise ``ValueError``.
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() < 1:
        got = logits.dtype if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise TypeError(f"logits must be a floating-point tensor (..., vocab), got {got}")
    if logits.numel() and defines_no_distribution(logits):
        raise ValueError(
            "logits contain NaN or +inf, or a row with no finite value: they define no distribution to filter. "
            "Check the model that produced them (diverged training, float16 overflow)."
        )
    if top_k is not None:
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
        k = min(top_k, logits.size(-1))
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each one
        drop_sorted = mass_before >= top_p  # already enough mass without this token
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _check_generate_args(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float,
                         top_k: int | None, top_p: float | None, greedy: bool) -> None:
    if not isinstance(model, GPT):
        raise TypeError(f"model must be an llmbook.gpt.GPT, got {type(model).__name__}")
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype != torch.long:
        raise ValueError(f"idx must be a (batch, length) int64 tensor of token ids, got {getattr(idx, 'shape', idx)!r}")
    if idx.shape[1] < 1:
        raise ValueError("idx must hold at least one token (the prompt)")
    if idx.shape[1] > model.config.block_size:
        raise ValueError(
            f"prompt of {idx.shape[1]} tokens is longer than the model's block_size={model.config.block_size}"
        )
    _check_token_ids("idx", idx, model.config.vocab_size)
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or math.isnan(temperature):
        raise ValueError(f"temperature must be a number, got {temperature!r}")
    if temperature <= 0 and not greedy:
        raise ValueError(
            f"temperature must be > 0 for sampling, got {temperature!r}; pass greedy=True for arg-max decoding"
        )
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")


@torch.no_grad()
def generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Extend ``idx`` (batch, T) by ``max_new_tokens`` tokens, one at a time; returns (batch, T + new).

    ``greedy=True`` takes the arg-max (temperature and filters are then ignored); otherwise the next
    token is sampled from softmax(logits / temperature) restricted to the ``top_k`` most likely tokens and to the nucleus of
    mass ``top_p``. ``use_cache`` keeps past keys and values in a :class:`KVCache` so each step feeds
    only the newest token. Past ``block_size`` tokens the context slides (the oldest token drops out);
    with learned absolute positions every cached key then changes position, so the cached path
    recomputes the window, exactly like the uncached one. Pass a seeded ``generator`` to repeat a sample.
    Logits with NaN or +inf (a broken model) raise ``ValueError`` instead of yielding token 0.
    """
    use_cache = require_bool("use_cache", use_cache)
    greedy = require_bool("greedy", greedy)
    _check_generate_args(model, idx, max_new_tokens, temperature, top_k, top_p, greedy)
    block = model.config.block_size
    was_training = model.training
    model.eval()
    try:
        cache = None
        out = idx
        for step in range(max_new_tokens):
            if use_cache and out.shape[1] <= block:
                if cache is None:
                    cache = model.new_cache(out.shape[0])
                    logits, _ = model(out, cache=cache)
                else:
                    logits, _ = model(out[:, -1:], cache=cache)
            else:
                cache = None  # sliding window: positions shift, so nothing cached stays valid
                logits, _ = model(out[:, -block:])
            logits = logits[:, -1, :].float()
            if defines_no_distribution(logits):
                raise ValueError(
                    f"the model's next-token logits at generation step {step + 1} contain NaN or infinite values, "
                    "so there is no next token to choose. The model is broken (diverged training, or float16 "
                    "overflow): check its weights and run it in float32."
                )
            if greedy:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if defines_no_distribution(logits):
                    raise ValueError(
                        f"temperature={temperature!r} is so small that logits / temperature overflow to infinity; "
                        "use a larger temperature, or greedy=True for arg-max decoding"
                    )
                logits = filter_logits(logits, top_k, top_p)
                probs = torch.softmax(logits, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            out = torch.cat([out, nxt], dim=1)
        return out
    finally:
        model.train(was_training)


def lr_at(step: int, max_lr: float, warmup: int, total: int, min_lr: float = 0.0) -> float:
    """Learning rate at ``step``: linear warmup to ``max_lr`` over ``warmup`` steps, then cosine decay
    to ``min_lr`` at ``total`` (and ``min_lr`` after it)."""
    if step < warmup:
        return max_lr * (step + 1) / warmup
    if step >= total:
        return min_lr
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


def configure_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.1,
                        betas: tuple[float, float] = (0.9, 0.99)) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (weights, embeddings) only, not on biases or LayerNorm gains."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


@torch.no_grad()
def evaluate_loss(model: GPT, data: torch.Tensor, block_size: int | None = None, batch_size: int = 64,
                  max_windows: int | None = None) -> float:
    """Mean next-token cross-entropy (nats/token) over consecutive, non-overlapping windows of ``data``.

    Deterministic: every token of ``data`` (up to ``max_windows`` windows) is predicted once, from the
    context of its own window. ``block_size`` (default: the model's) may not exceed the model's
    context, and ``data`` must hold at least ``block_size + 1`` tokens.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"model must be an llmbook.gpt.GPT, got {type(model).__name__}")
    if not isinstance(data, torch.Tensor) or data.dim() != 1:
        raise ValueError(f"data must be a 1-D tensor of token ids, got {getattr(data, 'shape', type(data).__name__)}")
    _check_token_ids("data", data, model.config.vocab_size)
    context = model.config.block_size
    if block_size is None:
        block_size = context
    block_size = require_int("block_size", block_size, minimum=1)
    if block_size > context:
        raise ValueError(f"block_size={block_size} is longer than the model's context (block_size={context})")
    batch_size = require_int("batch_size", batch_size, minimum=1)
    if max_windows is not None:
        max_windows = require_int("max_windows", max_windows, minimum=1)
    n = (len(data) - 1) // block_size
    if max_windows is not None:
        n = min(n, max_windows)
    if n < 1:
        raise ValueError(
            f"data has {len(data)} tokens, too few for one window of {block_size}: it needs at least {block_size + 1}"
        )
    device = next(model.parameters()).device
    x_all = data[: n * block_size].view(n, block_size).long()
    y_all = data[1: n * block_size + 1].view(n, block_size).long()
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        for i in range(0, n, batch_size):
            x, y = x_all[i:i + batch_size].to(device), y_all[i:i + batch_size].to(device)
            _, loss = model(x, y)
            total += loss.item() * x.shape[0]
    finally:
        model.train(was_training)
    return total / n


# ----------------------------------------------------------------------------------------------
# Checkpoints: the chapter saves its trained model; the evaluation chapter loads it
# ----------------------------------------------------------------------------------------------

CHECKPOINT_FORMAT = "llmbook.gpt/1"


class GPTCheckpoint(NamedTuple):
    """What :func:`load_gpt_checkpoint` returns: the model (in eval mode), its character vocabulary
    (``chars[i]`` is the character of token ``i``) and the metadata saved with it (``dataset``,
    ``validation_split``, ``scale`` and whatever else the caller stored)."""

    model: GPT
    chars: list[str]
    metadata: dict[str, Any]

    def encode(self, text: str) -> torch.Tensor:
        """``text`` as a 1-D int64 tensor of this vocabulary's token ids; an unknown character raises ``ValueError``."""
        stoi = {ch: i for i, ch in enumerate(self.chars)}
        unknown = sorted(set(text) - stoi.keys())
        if unknown:
            raise ValueError(
                f"text holds {len(unknown)} character(s) outside the model's vocabulary, e.g. {unknown[0]!r}; "
                "a character-level model can only read the characters it was trained on"
            )
        return torch.tensor([stoi[ch] for ch in text], dtype=torch.long)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Token ids back to text."""
        return "".join(self.chars[int(i)] for i in ids)


def save_gpt_checkpoint(
    path: str | Path,
    model: GPT,
    chars: Sequence[str],
    *,
    dataset: str = "tiny_shakespeare",
    validation_split: str = "validation",
    scale: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Save a trained character-level :class:`GPT` to ``path`` (one file, written atomically).

    The file holds the model's :class:`GPTConfig`, its weights (on the CPU), the character vocabulary
    ``chars`` (token ``i`` is ``chars[i]``; ``len(chars)`` must equal the model's ``vocab_size``) and
    how to rebuild the validation text: ``llmbook.data.load_dataset(dataset, validation_split)``.
    ``scale`` (``llmbook.runtime.get_scale()`` by default) and ``metadata`` (plain values: numbers,
    strings, lists, dicts) are stored beside them. Returns the path. Read it back with
    :func:`load_gpt_checkpoint`.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"model must be an llmbook.gpt.GPT, got {type(model).__name__}")
    if isinstance(chars, str):
        chars = list(chars)
    if not isinstance(chars, Sequence) or not all(isinstance(ch, str) and len(ch) == 1 for ch in chars):
        raise TypeError("chars must be the vocabulary as a list of single characters (token i is chars[i])")
    if len(set(chars)) != len(chars):
        raise ValueError("chars holds a character twice: each token must be a distinct character")
    if len(chars) != model.config.vocab_size:
        raise ValueError(
            f"chars has {len(chars)} characters but the model's vocab_size is {model.config.vocab_size}: "
            "pass the vocabulary the model was trained with"
        )
    for name, value in (("dataset", dataset), ("validation_split", validation_split)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if scale is None:
        from llmbook.runtime import get_scale

        scale = get_scale()
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(model.config),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "chars": list(chars),
        "metadata": {**dict(metadata or {}), "dataset": dataset, "validation_split": validation_split,
                     "scale": scale},
    }
    return write_atomic(path, lambda handle: torch.save(payload, handle))


def load_gpt_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> GPTCheckpoint:
    """Rebuild the model saved by :func:`save_gpt_checkpoint`: ``(model, chars, metadata)``, the model on
    ``device`` in eval mode. A missing file or a file that is not such a checkpoint raises one clear error."""
    payload = read_torch_file(path, what="GPT checkpoint",
                              remedy="run the GPT chapter (notebooks/04_gpt.ipynb) at this scale first")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a GPT checkpoint written by llmbook.gpt.save_gpt_checkpoint")
    model = GPT(GPTConfig(**payload["config"]))
    model.load_state_dict(payload["state_dict"])
    return GPTCheckpoint(model.to(device).eval(), list(payload["chars"]), dict(payload["metadata"]))


# ----------------------------------------------------------------------------------------------
# GPT-2's weights in our GPT
# ----------------------------------------------------------------------------------------------

_GPT2_GELUS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "none"}


def config_from_gpt2(hf_config: Any, attn_impl: str = "sdpa") -> GPTConfig:
    """The :class:`GPTConfig` of a Hugging Face ``GPT2Config`` (sizes, GELU variant; no dropout).

    Settings our GPT does not have (another LayerNorm epsilon, an MLP width other than 4d, attention
    scaled other than by 1/sqrt(head_dim)) raise ``ValueError`` instead of giving a model that differs.
    """
    get = lambda name, default=None: getattr(hf_config, name, default)  # noqa: E731
    activation = get("activation_function", "gelu_new")
    if activation not in _GPT2_GELUS:
        raise ValueError(f"GPT-2 activation {activation!r} is not supported: use one of {sorted(_GPT2_GELUS)}")
    n_embd = get("n_embd")
    unsupported = {
        "layer_norm_epsilon": (get("layer_norm_epsilon", 1e-5), 1e-5),
        "n_inner": (get("n_inner") or 4 * n_embd, 4 * n_embd),
        "scale_attn_weights": (get("scale_attn_weights", True), True),
        "scale_attn_by_inverse_layer_idx": (get("scale_attn_by_inverse_layer_idx", False), False),
    }
    for name, (value, ours) in unsupported.items():
        if value != ours:
            raise ValueError(f"GPT-2 config has {name}={value!r}; llmbook.gpt.GPT supports only {ours!r}")
    return GPTConfig(vocab_size=get("vocab_size"), block_size=get("n_positions"), n_layer=get("n_layer"),
                     n_head=get("n_head"), n_embd=n_embd, dropout=0.0, bias=True, attn_impl=attn_impl,
                     gelu_approximate=_GPT2_GELUS[activation])


def convert_gpt2_state_dict(state_dict: Mapping[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Map a Hugging Face GPT-2 state dict (``GPT2LMHeadModel`` or ``GPT2Model``) onto :class:`GPT`'s names.

    Two differences besides the names: GPT-2 stores its linear layers as ``Conv1D`` with the weight
    transposed (``in × out``), and it computes queries, keys and values with one fused ``c_attn``
    matrix, which we split into ``q_proj``, ``k_proj`` and ``v_proj``. A missing weight raises
    ``KeyError`` naming it; unexpected names raise ``ValueError``.
    """
    prefix = "transformer." if any(k.startswith("transformer.") for k in state_dict) else ""
    d = config.n_embd
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        key = prefix + name
        if key not in state_dict:
            raise KeyError(f"GPT-2 state dict has no {key!r}: is it a GPT-2 checkpoint with {config.n_layer} layers?")
        used.add(key)
        return state_dict[key]

    out = {"tok_emb.weight": take("wte.weight"), "pos_emb.weight": take("wpe.weight")}
    for i in range(config.n_layer):
        ours, theirs = f"blocks.{i}.", f"h.{i}."
        for ln in ("ln_1", "ln_2"):
            out[ours + f"{ln}.weight"] = take(theirs + f"{ln}.weight")
            out[ours + f"{ln}.bias"] = take(theirs + f"{ln}.bias")
        qkv_w, qkv_b = take(theirs + "attn.c_attn.weight"), take(theirs + "attn.c_attn.bias")
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            out[ours + f"attn.mha.{name}.weight"] = qkv_w[:, j * d:(j + 1) * d].t()
            out[ours + f"attn.mha.{name}.bias"] = qkv_b[j * d:(j + 1) * d]
        pairs = (("attn.c_proj", "attn.mha.out_proj"), ("mlp.c_fc", "mlp.fc"), ("mlp.c_proj", "mlp.proj"))
        for src, dst in pairs:
            out[ours + f"{dst}.weight"] = take(theirs + f"{src}.weight").t()
            out[ours + f"{dst}.bias"] = take(theirs + f"{src}.bias")
    out["ln_f.weight"], out["ln_f.bias"] = take("ln_f.weight"), take("ln_f.bias")
    out["lm_head.weight"] = out["tok_emb.weight"]  # tied, as in GPT-2
    # lm_head.weight is GPT-2's tied copy; attention-mask buffers of older versions are not weights.
    ignorable = ("lm_head.weight", ".attn.bias", ".attn.masked_bias")
    extra = [k for k in state_dict if k not in used and not k.endswith(ignorable)]
    if extra:
        raise ValueError(f"GPT-2 state dict has weights our GPT has no place for, e.g. {extra[0]!r}")
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def gpt_from_gpt2(hf_model: nn.Module, attn_impl: str = "sdpa") -> GPT:
    """Our :class:`GPT` holding the weights of a ``transformers`` GPT-2 model (``GPT2LMHeadModel``).

    It computes the same logits (the tests check to 1e-4 against a randomly initialised model;
    on the hub's ``gpt2`` the chapter checks the same).
    """
    config = config_from_gpt2(hf_model.config, attn_impl=attn_impl)
    model = GPT(config)
    model.load_state_dict(convert_gpt2_state_dict(hf_model.state_dict(), config))
    return model.eval()

