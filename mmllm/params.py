"""Optimizer parameter groups: frozen weights excluded, per-module learning-rate multipliers.

METER trains its fusion layers and heads with a higher LR than the encoders; the
frozen-LLM paper uses a larger LR for the adapters. Both are a mapping from a
parameter-name prefix to an LR multiplier, the longest matching prefix winning.
Layer-wise LR decay (BEiT / VideoMAE fine-tuning, ``run.layer_decay``) multiplies in: the model
tells each parameter's layer, the groups stay built here, in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import cast

from torch import nn

from .errors import ConfigError


def trainable_named_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    for name, param in model.named_parameters():
        if param.requires_grad:
            yield name, param


def _no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norms and 1-d embeddings-like tensors get no weight decay (standard AdamW practice)."""
    return param.ndim < 2 or name.endswith(".bias") or "norm" in name.lower()


def layer_decay_scale(model: nn.Module, layer_decay: float | None) -> Callable[[str], float]:
    """Parameter name -> ``layer_decay ** (L + 1 - layer_id(name))`` with ``L = model.get_num_layers()``
    (VideoMAE's ``LayerDecayValueAssigner``: id 0 = embeddings, i + 1 = block i, L + 1 = head at the full LR);
    the model names the layers (``get_num_layers()``, ``layer_id(name)``). ``None``: 1 for every name."""
    if layer_decay is None:
        return lambda name: 1.0
    num_layers, layer_id = getattr(model, "get_num_layers", None), getattr(model, "layer_id", None)
    if not callable(num_layers) or not callable(layer_id):
        raise ConfigError(
            f"run.layer_decay={layer_decay} needs a model that tells each parameter's layer (get_num_layers() and "
            f"layer_id(name), as VideoMAE's); {type(model).__name__} does not: unset run.layer_decay"
        )
    top = int(cast(Callable[[], int], num_layers)()) + 1
    ids = cast(Callable[[str], int], layer_id)
    return lambda name: layer_decay ** (top - ids(name))


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    lr_multipliers: Mapping[str, float] | None = None,
    layer_decay: float | None = None,
) -> list[dict]:
    """AdamW-ready groups of the trainable parameters only.

    ``lr_multipliers`` maps a name prefix (e.g. ``"fusion."``, ``"llm_block.adapter_"``)
    to a factor of ``lr``; ``layer_decay`` (see :func:`layer_decay_scale`) multiplies it, so both compose.
    Each group records its ``lr_scale`` so schedulers can keep the ratio.
    Besides biases and norms, the names a model lists in ``no_weight_decay()`` (timm's convention, e.g. a
    ViT's ``pos_embed`` and ``cls_token``) take no weight decay.
    """
    lr_multipliers = dict(lr_multipliers or {})
    listing = getattr(model, "no_weight_decay", None)
    skip = set(cast(Iterable[str], listing())) if callable(listing) else set()
    depth_scale = layer_decay_scale(model, layer_decay)
    groups: dict[tuple[float, bool], dict] = {}
    for name, param in trainable_named_parameters(model):
        prefix = max((p for p in lr_multipliers if name.startswith(p)), key=len, default=None)
        scale = (lr_multipliers[prefix] if prefix is not None else 1.0) * depth_scale(name)
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
