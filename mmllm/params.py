"""Optimizer parameter groups: frozen weights excluded, per-module learning-rate multipliers.

METER trains its fusion layers and heads with a higher LR than the encoders; the
frozen-LLM paper uses a larger LR for the adapters. Both are a mapping from a
parameter-name prefix to an LR multiplier, the longest matching prefix winning.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import cast

from torch import nn


def trainable_named_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    for name, param in model.named_parameters():
        if param.requires_grad:
            yield name, param


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norms and 1-d embeddings-like tensors get no weight decay (standard AdamW practice)."""
    return param.ndim < 2 or name.endswith(".bias") or "norm" in name.lower()


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    lr_multipliers: Mapping[str, float] | None = None,
) -> list[dict]:
    """AdamW-ready groups of the trainable parameters only.

    ``lr_multipliers`` maps a name prefix (e.g. ``"fusion."``, ``"llm_block.adapter_"``)
    to a factor of ``lr``. Each group records its ``lr_scale`` so schedulers can keep the ratio.
    Besides biases and norms, the names a model lists in ``no_weight_decay()`` (timm's convention, e.g. a
    ViT's ``pos_embed`` and ``cls_token``) take no weight decay.
    """
    lr_multipliers = dict(lr_multipliers or {})
    listing = getattr(model, "no_weight_decay", None)
    skip = set(cast(Iterable[str], listing())) if callable(listing) else set()
    groups: dict[tuple[float, bool], dict] = {}
    for name, param in trainable_named_parameters(model):
        prefix = max((p for p in lr_multipliers if name.startswith(p)), key=len, default=None)
        scale = lr_multipliers[prefix] if prefix is not None else 1.0
        no_decay = name in skip or _no_decay(name, param)
        key = (scale, no_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "names": [],
                "lr": lr * scale,
                "lr_scale": scale,
                "weight_decay": 0.0 if no_decay else weight_decay,
            }
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return list(groups.values())
