"""Load the released Point-BERT checkpoint (``Point-BERT.pth``) into :class:`PointBERTClassifier`.

The official fine-tuning (Point-BERT ``tools/runner_BERT_finetune.py``, also LM4VisualEncoding's
``point_cloud_classification``) starts from the pre-trained ``Point-BERT.pth``: a ``torch.save`` dict whose
``base_model`` holds the pre-training model ``Point_BERT`` (``models/Point_BERT.py``): the query encoder
``transformer_q`` (a ``MaskTransformer``), the momentum encoder ``transformer_k``, the dVAE ``dvae`` and the
MoCo queue. ``PointTransformer.load_model_from_ckpt`` keeps ``transformer_q.*`` except its ``cls_head``;
the pre-training-only ``mask_token`` and ``lm_head`` are then left over. A fine-tuned ``PointTransformer``
checkpoint (``ckpt-best.pth``: the same names without ``transformer_q.``, plus ``cls_head_finetune``) is
read as well. Keys may carry DataParallel's ``module.`` prefix.

Names, official (``PointTransformer``) -> ours (``model.recipe: point_bert``):

==================================  =================================
``encoder.first_conv.{0,1,3}.*``     ``tokenizer.first.{0,1,3}.*``
``encoder.second_conv.{0,1,3}.*``    ``tokenizer.second.{0,1,3}.*``
``reduce_dim.*``                     ``reduce_dim.*``
``cls_token``, ``cls_pos``           the same
``pos_embed.{0,2}.*``                ``pos_embed.mlp.{0,2}.*``
``blocks.blocks.<i>.<rest>``         ``blocks.<i>.<rest>`` (timm ``Block``: norm1, attn.qkv, attn.proj, norm2, mlp.fc1/fc2)
``norm.*``                           ``norm.*``
``cls_head_finetune.{0,3}.*``        ``head.{0,3}.*`` (fine-tuned checkpoints only)
==================================  =================================

Every tensor is checked by name and shape before anything is copied; the first one that does not fit
is named in a :class:`~mmllm.errors.CheckpointError`. The file is read with ``weights_only=True``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmllm.errors import CheckpointError
from mmllm.loading.state_fit import require_finite
from mmllm.safeload import load_weights_only

__all__ = [
    "PRETRAINING_ONLY",
    "load_point_bert_checkpoint",
    "map_point_bert_state",
    "official_to_ours",
    "ours_to_official",
]

# transformer_q parameters with no counterpart in the classifier (MaskTransformer's pre-training heads)
PRETRAINING_ONLY = ("mask_token", "lm_head.", "cls_head.")
# parts of our model every checkpoint must fill (the head only comes with fine-tuned checkpoints)
REQUIRED = ("tokenizer.", "reduce_dim.", "cls_token", "cls_pos", "pos_embed.", "blocks.", "norm.")

_RULES = (
    (re.compile(r"^encoder\.first_conv\."), "tokenizer.first."),
    (re.compile(r"^encoder\.second_conv\."), "tokenizer.second."),
    (re.compile(r"^pos_embed\.(\d+)\."), r"pos_embed.mlp.\1."),
    (re.compile(r"^blocks\.blocks\."), "blocks."),
    (re.compile(r"^cls_head_finetune\."), "head."),
)


def _renamed(name: str, rules: tuple[tuple[re.Pattern[str], str], ...]) -> str:
    """``name`` under the first rule whose pattern matches its start (unchanged where none does)."""
    for pattern, repl in rules:
        if pattern.match(name):
            return pattern.sub(repl, name, count=1)
    return name


def official_to_ours(name: str) -> str:
    """Our parameter name for an official ``PointTransformer`` name (unchanged where both agree)."""
    return _renamed(name, _RULES)


_INVERSE = (
    (re.compile(r"^tokenizer\.first\."), "encoder.first_conv."),
    (re.compile(r"^tokenizer\.second\."), "encoder.second_conv."),
    (re.compile(r"^pos_embed\.mlp\.(\d+)\."), r"pos_embed.\1."),
    (re.compile(r"^blocks\."), "blocks.blocks."),
    (re.compile(r"^head\."), "cls_head_finetune."),
)


def ours_to_official(name: str) -> str:
    """The official ``PointTransformer`` name of one of our parameters (inverse of :func:`official_to_ours`)."""
    return _renamed(name, _INVERSE)


def _classifier_state(raw: dict[str, Any], where: str) -> dict[str, torch.Tensor]:
    """``PointTransformer``-named tensors of a checkpoint's state dict (pre-training or fine-tuned layout)."""
    state = {k.removeprefix("module."): v for k, v in raw.items()}
    pretraining = any(k.startswith("transformer_q.") for k in state)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if pretraining:
            if not key.startswith("transformer_q."):
                continue  # transformer_k (momentum encoder), dvae, queue, queue_ptr
            name = key.removeprefix("transformer_q.")
            if name.startswith(PRETRAINING_ONLY):
                continue
        else:
            name = key
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{where}: {key} is a {type(value).__name__}, not a tensor")
        out[name] = value
    return out


def map_point_bert_state(model: nn.Module, raw: dict[str, Any], where: str = "checkpoint") -> dict[str, str]:
    """Copy the checkpoint's tensors into ``model`` (a ``recipe: point_bert`` classifier) after checking all of
    them; returns ``{our name: checkpoint key}``. Raises :class:`CheckpointError` naming the first key that
    has no place in the model, has another shape, or the first of our encoder tensors the file lacks."""
    if getattr(model, "recipe", None) != "point_bert":
        raise CheckpointError(f"{where}: a Point-BERT checkpoint loads only into a model.recipe=point_bert classifier")
    state = _classifier_state(raw, where)
    prefix = "transformer_q." if any(k.removeprefix("module.").startswith("transformer_q.") for k in raw) else ""
    targets = dict(model.state_dict())
    plan: dict[str, tuple[str, torch.Tensor]] = {}
    for name, value in state.items():
        ours = official_to_ours(name)
        if ours not in targets:
            raise CheckpointError(
                f"{where}: {prefix}{name} has no place in the point-cloud classifier (mapped to {ours!r}, which "
                "it does not have); is this a Point-BERT (models/Point_BERT.py) checkpoint of the same depth?"
            )
        if tuple(value.shape) != tuple(targets[ours].shape):
            raise CheckpointError(
                f"{where}: {prefix}{name} has shape {list(value.shape)} but {ours} has {list(targets[ours].shape)} "
                "(model.dim / encoder_dims / depth / num_classes must match the checkpoint)"
            )
        plan[ours] = (prefix + name, value)
    for ours in targets:
        if ours.startswith(REQUIRED) and ours not in plan:
            raise CheckpointError(f"{where}: no tensor for {ours} (expected {prefix}{ours_to_official(ours)})")
    require_finite(dict(plan.values()), where)
    with torch.no_grad():
        for ours, (_, value) in plan.items():
            targets[ours].copy_(value.to(targets[ours].dtype))
    return {ours: key for ours, (key, _) in plan.items()}


def load_point_bert_checkpoint(model: nn.Module, path: str | Path) -> dict[str, str]:
    """Read ``path`` (``weights_only=True``) and :func:`map_point_bert_state` its ``base_model`` into ``model``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Point-BERT checkpoint {path} does not exist (model.init_checkpoint)")
    obj = load_weights_only(path)
    if isinstance(obj, dict) and isinstance(obj.get("base_model"), dict):
        raw = obj["base_model"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raw = obj
    else:
        found = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: expected a dict with 'base_model' (a state dict), found {found}")
    return map_point_bert_state(model, raw, str(path))
