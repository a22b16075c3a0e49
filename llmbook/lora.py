"""Parameter-efficient fine-tuning (PEFT) built by hand: LoRA and bottleneck adapters.

Taught in the parameter-efficient fine-tuning chapter (``notebooks/08_peft.ipynb``).

Full fine-tuning updates (and stores, per task) every weight of a pretrained model. PEFT methods
freeze the pretrained weights and train a small number of new ones:

- :class:`LoRALinear` — *low-rank adaptation* (低秩适配, Hu et al. 2022): a frozen ``nn.Linear``
  ``y = W x + b`` plus a trainable low-rank update, ``y = W x + b + (alpha / r) · B A x`` with
  ``A`` of shape ``(r, in_features)`` and ``B`` of shape ``(out_features, r)``. ``B`` starts at
  zero, so training starts from exactly the pretrained model. :func:`apply_lora` wraps named
  ``Linear`` layers of a model and freezes everything else; :func:`merge_lora` folds
  ``W + (alpha / r) · B A`` back into plain ``nn.Linear`` layers, so the merged model has the
  original architecture, parameter count and inference cost. The layout of ``A`` and ``B`` is
  that of the ``peft`` library's ``lora_A`` / ``lora_B`` weights (the tests check that both give
  the same outputs from the same weights).
- :class:`Adapter` — the bottleneck adapter of Houlsby et al. (2019): ``h + up(act(down(h)))``
  with a small hidden size; :func:`insert_adapters` puts one after the attention output
  projection and one after the feed-forward output projection of every layer of a transformers
  ``BertModel`` (the encoder of :class:`llmbook.textclf.MeanPoolingClassifier`). Adapters *add*
  parameters and inference work; unlike LoRA they cannot be merged away.
- :func:`peft_encoder` — applies any ``peft`` method (LoRA, IA³, AdaLoRA, prefix and prompt
  tuning, ...) to the encoder of a :class:`~llmbook.textclf.MeanPoolingClassifier`, keeping the
  classification head trainable, so every method of the chapter trains with
  :func:`llmbook.train.fit` unchanged.
- :func:`parameter_counts` — trainable and total parameters.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from llmbook.checks import require_int

__all__ = [
    "Adapter",
    "LoRALinear",
    "PeftEncoder",
    "apply_lora",
    "insert_adapters",
    "lora_layers",
    "merge_lora",
    "parameter_counts",
    "peft_encoder",
]


def _check_module(name: str, value: object) -> nn.Module:
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
    return value


def _check_alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a positive number (the LoRA scale is alpha / r), got {alpha!r}")
    return float(alpha)


def _check_dropout(dropout: object) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    return float(dropout)


def _names(argument: str, names: str | Iterable[str]) -> list[str]:
    """A list of module names from one name or an iterable of names (a bare string is one name)."""
    names = [names] if isinstance(names, str) else list(names)
    bad = [n for n in names if not isinstance(n, str) or not n]
    if bad:
        raise TypeError(f"{argument} must hold non-empty module names (strings), got {bad[0]!r}")
    return names


def _matches(module_name: str, target: str) -> bool:
    """``peft``'s rule: a target matches a module whose full name is it or ends with ``"." + target``."""
    return module_name == target or module_name.endswith("." + target)


def _replace_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _modules_named(model: nn.Module, names: Sequence[str], argument: str) -> list[nn.Module]:
    """The modules of ``model`` that ``names`` match (``peft``'s rule); a name that matches none is an error."""
    modules = dict(model.named_modules())
    found: list[nn.Module] = []
    for target in names:
        matched = [m for name, m in modules.items() if name and _matches(name, target)]
        if not matched:
            raise ValueError(
                f"{argument}: {target!r} matches no module of {type(model).__name__}; "
                f"top-level modules are {[n for n, _ in model.named_children()]}"
            )
        found += matched
    return found


def _freeze_all_but(model: nn.Module, keep: Sequence[nn.Module]) -> None:
    """Freeze every parameter of ``model``, then unfreeze the modules in ``keep``."""
    model.requires_grad_(False)
    for module in keep:
        module.requires_grad_(True)


def parameter_counts(model: nn.Module) -> dict[str, float]:
    """``{"trainable": n, "total": n, "percent": 100 * trainable / total}`` (shared tensors counted once)."""
    _check_module("model", model)
    params = list(model.parameters())  # deduplicated by nn.Module
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / total if total else 0.0}


# ----------------------------------------------------------------------------------------------
# LoRA
# ----------------------------------------------------------------------------------------------


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update: ``base(x) + (alpha / r) · B A dropout(x)``.

    ``lora_A`` has shape ``(r, in_features)`` and is initialised like ``peft``'s (Kaiming uniform);
    ``lora_B`` has shape ``(out_features, r)`` and starts at zero, so a fresh ``LoRALinear``
    computes exactly what ``base`` computes. Only ``lora_A`` and ``lora_B`` are trainable: the
    base layer's parameters are frozen here. ``dropout`` acts on the input of the low-rank
    branch only (as in ``peft``). :meth:`merged` returns the equivalent plain ``nn.Linear``.
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
        self.r = require_int("r (the LoRA rank)", r, minimum=1)
        if self.r > min(base.in_features, base.out_features):
            raise ValueError(
                f"r={self.r} exceeds min(in_features, out_features) = "
                f"{min(base.in_features, base.out_features)}: a larger rank adds parameters but no expressiveness"
            )
        self.alpha = _check_alpha(alpha)
        self.scaling = self.alpha / self.r
        self.base = base
        base.requires_grad_(False)
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(self.r, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, self.r, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # peft's default initialisation of A
        self.dropout = nn.Dropout(_check_dropout(dropout))

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The same operations, in the same order, as peft's lora.Linear: B(A(dropout(x))) * scaling.
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return self.base(x) + update * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The update of the weight matrix, ``(alpha / r) · B A``, of shape ``(out_features, in_features)``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with weight ``W + (alpha / r) · B A`` (and the base bias): same outputs in eval mode."""
        base = self.base
        linear = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                           device=base.weight.device, dtype=base.weight.dtype)
        linear.weight.copy_(base.weight + self.delta_weight())
        if base.bias is not None:
            linear.bias.copy_(base.bias)
        linear.requires_grad_(base.weight.requires_grad)
        return linear

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g}"


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every :class:`LoRALinear` of ``model`` by its module name."""
    _check_module("model", model)
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def apply_lora(
    model: nn.Module,
    target_modules: str | Iterable[str] = ("query", "value"),
    *,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    trainable_modules: str | Iterable[str] = (),
) -> nn.Module:
    """Wrap the ``nn.Linear`` layers named by ``target_modules`` in :class:`LoRALinear`; freeze the rest.

    A target matches every module whose full name is the target or ends with ``"." + target``
    (``peft``'s rule): ``"query"`` matches ``base_model.encoder.layer.0.attention.self.query`` and
    its siblings in every layer. Afterwards only the LoRA matrices and the parameters of the
    modules named in ``trainable_modules`` (e.g. ``"classifier"``, a new task head that must be
    trained) require gradients. ``model`` is modified in place and returned.

    Raises ``ValueError`` for ``r < 1``, a target that matches no module, or a model that already
    has LoRA on a target; ``TypeError`` for a target that is not an ``nn.Linear``.
    """
    _check_module("model", model)
    r = require_int("r (the LoRA rank)", r, minimum=1)
    alpha, dropout = _check_alpha(alpha), _check_dropout(dropout)
    targets = _names("target_modules", target_modules)
    if not targets:
        raise ValueError("target_modules is empty: name the Linear layers to adapt, e.g. ['query', 'value']")
    keep = _modules_named(model, _names("trainable_modules", trainable_modules), "trainable_modules")
    modules = dict(model.named_modules())
    chosen: dict[str, nn.Module] = {}
    for target in targets:
        found = {name: m for name, m in modules.items() if name and _matches(name, target)}
        if not found:
            linear = sorted({name.rpartition(".")[2] for name, m in modules.items() if isinstance(m, nn.Linear)})
            raise ValueError(
                f"target_modules: {target!r} matches no module of {type(model).__name__}; "
                f"its nn.Linear layers are named {linear}"
            )
        chosen.update(found)
    for name, module in chosen.items():
        if isinstance(module, LoRALinear):
            raise ValueError(f"{name} already has LoRA: call merge_lora first, or start from a fresh model")
        if not isinstance(module, nn.Linear):
            raise TypeError(
                f"target {name} is a {type(module).__name__}, not an nn.Linear: LoRALinear wraps Linear layers "
                "only; name the projections inside it (for BERT: 'query', 'key', 'value', 'dense')"
            )
    # Every check is done: only now is the model changed (a refused call leaves it as it was).
    _freeze_all_but(model, keep)
    for name, module in chosen.items():
        _replace_submodule(model, name, LoRALinear(module, r=r, alpha=alpha, dropout=dropout))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALinear` of ``model`` by its merged ``nn.Linear`` (in place; returns ``model``).

    The merged model has exactly the original architecture and parameter count; in eval mode it
    computes what the LoRA model computed (up to float rounding), with no extra inference work.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRALinear layers: nothing to merge (apply_lora first)")
    for name, layer in layers.items():
        _replace_submodule(model, name, layer.merged())
    return model


# ----------------------------------------------------------------------------------------------
# Bottleneck adapters
# ----------------------------------------------------------------------------------------------


class Adapter(nn.Module):
    """A bottleneck adapter (Houlsby et al., 2019): ``h + up(act(down(h)))``.

    ``down`` projects ``hidden_size`` to ``bottleneck_size`` (a few dozen), ``up`` projects back.
    ``up`` starts at zero, so a fresh adapter is exactly the identity and training starts from the
    pretrained model (Houlsby et al. initialise near zero for the same reason). Parameters:
    ``2 · hidden_size · bottleneck_size + bottleneck_size + hidden_size``.
    """

    def __init__(self, hidden_size: int, bottleneck_size: int = 32, activation: nn.Module | None = None) -> None:
        super().__init__()
        hidden_size = require_int("hidden_size", hidden_size, minimum=1)
        bottleneck_size = require_int("bottleneck_size", bottleneck_size, minimum=1)
        self.down = nn.Linear(hidden_size, bottleneck_size)
        self.activation = activation if activation is not None else nn.GELU()
        self.up = nn.Linear(bottleneck_size, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.activation(self.down(hidden)))


def insert_adapters(
    model: nn.Module,
    bottleneck_size: int = 32,
    *,
    trainable_modules: str | Iterable[str] = (),
    train_layer_norms: bool = True,
) -> nn.Module:
    """Insert an :class:`Adapter` after the attention and the feed-forward output projections of a BERT.

    Works on transformers' ``BertModel`` (alone or inside a model such as
    :class:`llmbook.textclf.MeanPoolingClassifier`): in each layer the ``dense`` projection of the
    attention output block (``BertSelfOutput``) and of the feed-forward output block
    (``BertOutput``) becomes ``nn.Sequential(dense, Adapter)``, so the adapter acts before the
    residual connection and LayerNorm, where Houlsby et al. put it. Everything else is frozen
    except the adapters, the LayerNorms (``train_layer_norms``; Houlsby et al. train them too)
    and the modules named in ``trainable_modules``. ``model`` is modified in place and returned.
    """
    from transformers.models.bert.modeling_bert import BertOutput, BertSelfOutput

    _check_module("model", model)
    bottleneck_size = require_int("bottleneck_size", bottleneck_size, minimum=1)
    if not isinstance(train_layer_norms, bool):
        raise TypeError(f"train_layer_norms must be True or False, got {train_layer_norms!r}")
    keep = _modules_named(model, _names("trainable_modules", trainable_modules), "trainable_modules")
    blocks = [m for m in model.modules() if isinstance(m, (BertSelfOutput, BertOutput))]
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} has no BERT attention/feed-forward output blocks (BertSelfOutput, BertOutput): "
            "insert_adapters supports transformers' BertModel and models that contain one"
        )
    if any(isinstance(b.dense, nn.Sequential) for b in blocks):
        raise ValueError("this model already has adapters: start from a fresh model")
    _freeze_all_but(model, keep)
    for block in blocks:
        dense = block.dense
        adapter = Adapter(dense.out_features, bottleneck_size).to(device=dense.weight.device, dtype=dense.weight.dtype)
        block.dense = nn.Sequential(dense, adapter)
    for module in model.modules():
        if isinstance(module, Adapter):
            module.requires_grad_(True)
        elif train_layer_norms and isinstance(module, nn.LayerNorm):
            module.requires_grad_(True)
    return model


# ----------------------------------------------------------------------------------------------
# The peft library on the book's classifier
# ----------------------------------------------------------------------------------------------


class PeftEncoder(nn.Module):
    """A ``peft``-wrapped encoder that returns one output vector per *input* token.

    Prompt tuning (and P-tuning) prepend ``num_virtual_tokens`` learned vectors to the input, so
    the encoder returns that many extra positions at the front; they are dropped here, so that a
    head that pools over the input's attention mask (mean pooling) sees the shape it expects.
    ``token_type_ids`` are left out for prompt-learning methods, which do not support them (BERT
    with one sentence per example uses only type 0, so nothing is lost).
    """

    def __init__(self, peft_model: nn.Module) -> None:
        super().__init__()
        self.peft_model = peft_model
        self.config = peft_model.get_base_model().config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, **kwargs: Any) -> Any:
        if not self.peft_model.active_peft_config.is_prompt_learning:
            kwargs["token_type_ids"] = token_type_ids
        output = self.peft_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        extra = output.last_hidden_state.shape[1] - input_ids.shape[1]
        if extra > 0:
            output.last_hidden_state = output.last_hidden_state[:, extra:]
        return output


def peft_encoder(model: nn.Module, config: Any, *, adapter_name: str = "default") -> nn.Module:
    """Apply a ``peft`` config to ``model.base_model`` (the encoder), keeping the head trainable.

    ``model`` is a classifier with its encoder in ``base_model`` and a head outside it, such as
    :class:`llmbook.textclf.MeanPoolingClassifier`. The encoder is replaced (in place) by a
    :class:`PeftEncoder` around ``peft.get_peft_model(encoder, config)``: ``peft`` freezes the
    encoder's pretrained weights; the head is not touched, so it stays trainable. A config
    without a ``task_type`` gets ``FEATURE_EXTRACTION`` (what an encoder without a head is).
    Returns ``model``.
    """
    from peft import PeftConfig, TaskType, get_peft_model

    _check_module("model", model)
    if not isinstance(config, PeftConfig):
        raise TypeError(f"config must be a peft config (e.g. peft.LoraConfig), got {type(config).__name__}")
    encoder = getattr(model, "base_model", None)
    if not isinstance(encoder, nn.Module) or encoder is model:
        raise TypeError(f"{type(model).__name__} has no separate encoder in .base_model (expected a MeanPoolingClassifier)")
    if isinstance(encoder, PeftEncoder):
        raise ValueError("the encoder already has peft applied: start from a fresh model")
    if config.task_type is None:
        config = copy.copy(config)  # leave the caller's config as it was
        config.task_type = TaskType.FEATURE_EXTRACTION
    model.base_model = PeftEncoder(get_peft_model(encoder, config, adapter_name=adapter_name))
    return model
