"""Optimizer parameter groups: frozen weights excluded, per-module learning-rate multipliers.

METER trains its fusion layers and heads with a higher LR than the encoders; the
frozen-LLM paper uses a larger LR for the adapters. Both are a mapping from a
parameter-name prefix to an LR multiplier, the longest matching prefix winning.
Layer-wise LR decay (BEiT / VideoMAE fine-tuning, ``run.layer_decay``) multiplies in: the model
tells each parameter's layer, the groups stay built here, in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import cast

from torch import nn

from .errors import ConfigError

log = logging.getLogger(__name__)


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


def _warn_unmatched(model: nn.Module, lr_multipliers: Mapping[str, float]) -> None:
    """A prefix that names no parameter changes nothing, silently. When none of them names anything the config
    was written for another model (the SQA3D 3D-VQA config carried METER's ``backbone.`` prefixes, and all its
    weights trained at ``init_lr``): a warning. One dead prefix among live ones is usual (one config serves arms
    that lack a part: no block, no text-side block): logged at info."""
    names = [name for name, _ in model.named_parameters()]
    dead = [prefix for prefix in lr_multipliers if not any(name.startswith(prefix) for name in names)]
    if not dead:
        return
    tops = sorted({name.split(".", 1)[0] + "." for name in names})
    starts = ", ".join(tops[:12]) + (", ..." if len(tops) > 12 else "")
    level = logging.WARNING if len(dead) == len(lr_multipliers) else logging.INFO
    log.log(
        level,
        "run.lr_multipliers prefix(es) %s match no parameter of %s, so they change nothing "
        "(the parameter names start with %s)",
        ", ".join(repr(p) for p in dead),
        type(model).__name__,
        starts,
    )


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
    _warn_unmatched(model, lr_multipliers)
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
