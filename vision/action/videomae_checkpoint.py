"""Load users' VideoMAE weights into the action classifier (:class:`~vision.action.model.VideoViTClassifier`).

Two layouts are read, tensor by tensor:

* the released code (github.com/MCG-NJU/VideoMAE, ``modeling_finetune.py`` ``VisionTransformer``): a
  ``torch.save`` dict whose state dict sits under ``model`` or ``module`` (``run_class_finetuning.py``'s
  ``--model_key model|module``) or at the top. Pre-training files (``modeling_pretrain.py``) hold the encoder
  under ``encoder.`` (``backbone.`` is stripped too, as ``run_class_finetuning.py`` does) beside a decoder,
  ``encoder_to_decoder`` and ``mask_token``, which are dropped;
* transformers' ``VideoMAEModel`` / ``VideoMAEForVideoClassification`` / ``VideoMAEForPreTraining``: a
  ``save_pretrained`` folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``, or their shards) or the
  weights file itself.

Names, released / transformers -> ours (timm ``Block``):

====================================  ===================================================  =====================
released                              transformers (``videomae.`` prefix optional)         ours
====================================  ===================================================  =====================
``patch_embed.proj.*``                ``embeddings.patch_embeddings.projection.*``         ``patch_embed.proj.*``
``pos_embed`` (learned tables only)   (a fixed sinusoid table, never stored)               ``pos_embed``
``blocks.i.norm1.*`` / ``norm2.*``    ``encoder.layer.i.layernorm_before.*`` / ``_after``  ``blocks.i.norm1/2.*``
``blocks.i.attn.qkv.weight``          ``...attention.attention.{query,key,value}.weight``  ``blocks.i.attn.qkv.weight``
``blocks.i.attn.q_bias`` / ``v_bias``  ``...attention.attention.q_bias`` / ``v_bias``       ``blocks.i.attn.qkv.bias``
                                      (``query.bias`` / ``value.bias`` in transformers 5)
``blocks.i.attn.proj.*``              ``encoder.layer.i.attention.output.dense.*``         ``blocks.i.attn.proj.*``
``blocks.i.mlp.fc1.*`` / ``fc2.*``    ``encoder.layer.i.intermediate.dense.*`` / ``output``  ``blocks.i.mlp.fc1/2.*``
``fc_norm.*``                         ``fc_norm.*``                                        ``fc_norm.*``
``head.*``                            ``classifier.*``                                     ``head.*``
====================================  ===================================================  =====================

Both layouts have no key bias (the released ``Attention`` concatenates a zero between ``q_bias`` and
``v_bias``): the key third of our fused ``qkv.bias`` is set to zero. It stays trainable in the timm block,
which changes nothing: a bias added to every key shifts each query's scores by one constant, which softmax
removes. A head of another class count is left at its fresh init, as ``run_class_finetuning.py`` does (logged).
The encoder's last norm (released ``norm``, transformers ``layernorm``) belongs to first-token pooling
(``use_mean_pooling=False``): dropped from a file without a head (the official fine-tuning's mean-pooling model
has ``norm = Identity`` and ignores it), an error beside a head that pools that way, which this model cannot run.

Every tensor is checked by name and shape before anything is copied; the first key that does not fit is named
in a :class:`~mmllm.errors.CheckpointError`. Torch files are read with ``weights_only=True``.
A learned ``pos_embed`` of another spatial grid (a file fine-tuned at another ``img_size``) is resampled as
``run_class_finetuning.py`` does: each temporal slot's square grid bicubically (``align_corners=False``) to
ours; the number of temporal slots must match (the released script does not resample time either).
Norms: ours use the released eps 1e-6; transformers' configs default to 1e-12 (blocks) and its ``fc_norm`` to
1e-5, a difference of the order of eps relative to the features' variance (logged when config.json says so).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mmllm.errors import CheckpointError
from mmllm.loading.hf_folder import KeyIndex
from mmllm.loading.state_fit import require_finite
from mmllm.safeload import load_weights_only

__all__ = ["TABLE", "load_videomae_checkpoint", "map_videomae_state", "read_videomae_file", "resample_pos_embed"]

log = logging.getLogger(f"mmllm.{__name__}")

Layout = Literal["released", "transformers"]
EPS = 1e-6  # the released norm_layer (partial(nn.LayerNorm, eps=1e-6)) and ours
# keys of pre-training models with no counterpart in a classifier (modeling_pretrain.py / VideoMAEForPreTraining)
PRETRAINING_ONLY = ("decoder.", "encoder_to_decoder.", "mask_token")
FINAL_NORM = {"released": "norm.", "transformers": "layernorm."}
HEAD = {"released": "head.", "transformers": "classifier."}
REQUIRED = ("patch_embed.", "blocks.")  # parts of our model every checkpoint must fill; the rest may stay at init


@dataclass(frozen=True)
class Row:
    """One correspondence: a source name template, our name template, and which third of a fused qkv it fills."""

    source: str
    ours: str
    part: int | None = None  # 0 = query, 1 = key, 2 = value rows of blocks.i.attn.qkv.*; None = the whole tensor


_ATTN = "encoder.layer.{i}.attention.attention."
# {i}: a block index, {p}: weight or bias
TABLE: dict[Layout, tuple[Row, ...]] = {
    "released": (
        Row("patch_embed.proj.{p}", "patch_embed.proj.{p}"),
        Row("pos_embed", "pos_embed"),
        Row("blocks.{i}.norm1.{p}", "blocks.{i}.norm1.{p}"),
        Row("blocks.{i}.norm2.{p}", "blocks.{i}.norm2.{p}"),
        Row("blocks.{i}.attn.qkv.weight", "blocks.{i}.attn.qkv.weight"),
        Row("blocks.{i}.attn.q_bias", "blocks.{i}.attn.qkv.bias", 0),
        Row("blocks.{i}.attn.v_bias", "blocks.{i}.attn.qkv.bias", 2),
        Row("blocks.{i}.attn.proj.{p}", "blocks.{i}.attn.proj.{p}"),
        Row("blocks.{i}.mlp.fc1.{p}", "blocks.{i}.mlp.fc1.{p}"),
        Row("blocks.{i}.mlp.fc2.{p}", "blocks.{i}.mlp.fc2.{p}"),
        Row("fc_norm.{p}", "fc_norm.{p}"),
        Row("head.{p}", "head.{p}"),
    ),
    "transformers": (
        Row("embeddings.patch_embeddings.projection.{p}", "patch_embed.proj.{p}"),
        Row("encoder.layer.{i}.layernorm_before.{p}", "blocks.{i}.norm1.{p}"),
        Row("encoder.layer.{i}.layernorm_after.{p}", "blocks.{i}.norm2.{p}"),
        Row(_ATTN + "query.weight", "blocks.{i}.attn.qkv.weight", 0),
        Row(_ATTN + "key.weight", "blocks.{i}.attn.qkv.weight", 1),
        Row(_ATTN + "value.weight", "blocks.{i}.attn.qkv.weight", 2),
        Row(_ATTN + "q_bias", "blocks.{i}.attn.qkv.bias", 0),  # save_pretrained's (and the hub files') names
        Row(_ATTN + "v_bias", "blocks.{i}.attn.qkv.bias", 2),
        Row(_ATTN + "query.bias", "blocks.{i}.attn.qkv.bias", 0),  # transformers 5's module names
        Row(_ATTN + "value.bias", "blocks.{i}.attn.qkv.bias", 2),
        Row("encoder.layer.{i}.attention.output.dense.{p}", "blocks.{i}.attn.proj.{p}"),
        Row("encoder.layer.{i}.intermediate.dense.{p}", "blocks.{i}.mlp.fc1.{p}"),
        Row("encoder.layer.{i}.output.dense.{p}", "blocks.{i}.mlp.fc2.{p}"),
        Row("fc_norm.{p}", "fc_norm.{p}"),
        Row("classifier.{p}", "head.{p}"),
    ),
}
# the parts a fused tensor needs: all three weights; the key bias is zero in both layouts
NEEDED_PARTS = {"weight": {0, 1, 2}, "bias": {0, 2}}


def _pattern(template: str) -> re.Pattern[str]:
    """``blocks.{i}.norm1.{p}`` -> a regex with named groups i (digits) and p (weight|bias)."""
    body = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(f"^{body}$")


def _translate(name: str, layout: Layout) -> tuple[str, int | None] | None:
    """(our name, qkv part) of the source tensor ``name`` under the first matching row; None: no row."""
    for row in TABLE[layout]:
        match = _pattern(row.source).match(name)
        if match:
            return row.ours.format(**match.groupdict()), row.part
    return None


def _expected_sources(ours: str, layout: Layout) -> list[str]:
    """The source keys that fill our tensor ``ours`` in ``layout`` (for messages)."""
    found = []
    for row in TABLE[layout]:
        match = _pattern(row.ours).match(ours)
        if match:
            found.append(row.source.format(**match.groupdict()))
    return found


# ------------------------------------------------------------------ reading the file


def _unwrap(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """The state dict of a loaded torch file: under ``model`` / ``module`` (the official ``--model_key``) or the
    dict itself; every value must be a tensor."""
    if isinstance(obj, Mapping):
        for key in ("model", "module"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        found = sorted(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{where}: expected a state dict (or one under 'model' / 'module'), found {found}")
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{where}: {key} is a {type(value).__name__}, not a tensor")
    return dict(obj)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a torch file (``weights_only=True``)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = load_weights_only(path)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch/safetensors raise many types for a damaged file
        raise CheckpointError(f"model.checkpoint: cannot read {path}: {exc}") from exc
    return _unwrap(obj, str(path))


def _read_folder(folder: Path) -> dict[str, torch.Tensor]:
    """A ``save_pretrained`` folder's tensors: one weights file or shards with their index (mmllm's folder reader,
    :class:`mmllm.loading.hf_folder.KeyIndex`: safetensors, or ``.bin`` with ``weights_only=True``)."""
    index = KeyIndex(folder)
    return dict(index.iter_tensors(list(index.key_to_file)))


def _read_config(path: Path) -> dict[str, Any] | None:
    """A transformers ``config.json`` beside the weights (None when there is none)."""
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"model.checkpoint: cannot read {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"model.checkpoint: {path} is not a JSON object")
    return config


def read_videomae_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(tensors, transformers config.json or None) of a checkpoint file or ``save_pretrained`` folder."""
    path = Path(path)
    if path.is_dir():
        return _read_folder(path), _read_config(path / "config.json")
    if not path.is_file():
        raise CheckpointError(f"model.checkpoint: {path} does not exist")
    return _read_weights(path), None


# ------------------------------------------------------------------ layout and prefixes


def _layout(keys: list[str]) -> Layout:
    """transformers when any key has its module names, else the released layout."""
    hf = re.compile(r"^(module\.)?(videomae\.)?(embeddings\.patch_embeddings\.|encoder\.layer\.\d)")
    return "transformers" if any(hf.match(k) for k in keys) else "released"


@dataclass
class Source:
    """A checkpoint's encoder tensors under its layout's names (prefixes stripped), each with its key in the file."""

    layout: Layout
    tensors: dict[str, torch.Tensor]
    keys: dict[str, str]  # layout name -> the file's key, for messages
    prefix: str  # what the file puts before the layout names ("", "videomae.", "encoder.", "module.")
    dropped: list[str]  # the file's keys not used by a classifier


def _strip(key: str, prefixes: tuple[str, ...]) -> tuple[str, str]:
    """(prefix, name): DataParallel's ``module.`` and one model prefix removed from ``key``."""
    name = key.removeprefix("module.")
    for prefix in prefixes:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    return key[: len(key) - len(name)], name


def _source(state: Mapping[str, torch.Tensor], where: str) -> Source:
    """The encoder part of ``state``: model prefix (``videomae.``; released ``encoder.`` / ``backbone.``, as
    ``run_class_finetuning.py`` strips) removed, pre-training-only keys dropped."""
    layout = _layout(list(state))
    prefixes = ("videomae.",) if layout == "transformers" else ("encoder.", "backbone.")
    source = Source(layout, {}, {}, "", [])
    for key, value in state.items():
        if key.removeprefix("module.").startswith(PRETRAINING_ONLY):
            source.dropped.append(key)
            continue
        prefix, name = _strip(key, prefixes)
        if name in source.tensors:
            raise CheckpointError(f"{where}: {key} repeats {source.keys[name]} (two models in one file?)")
        source.tensors[name], source.keys[name] = value, key
        source.prefix = source.prefix or prefix
    return source


def _drop_final_norm(source: Source, where: str) -> None:
    """Remove the encoder's last norm (first-token pooling's); an error when the file's head pools that way."""
    norm = [k for k in source.tensors if k.startswith(FINAL_NORM[source.layout])]
    if not norm:
        return
    has_head = any(k.startswith(HEAD[source.layout]) for k in source.tensors)
    if has_head and "fc_norm.weight" not in source.tensors:
        raise CheckpointError(
            f"{where}: {source.keys[norm[0]]} is the norm of a classifier that pools the first token "
            "(use_mean_pooling=False, --use_cls); this model mean-pools the tokens then applies fc_norm, "
            "as VideoMAE's default"
        )
    for name in norm:
        del source.tensors[name]
        source.dropped.append(source.keys.pop(name))


# ------------------------------------------------------------------ a position table of another grid


def resample_pos_embed(table: torch.Tensor, grid: tuple[int, int, int], where: str = "pos_embed") -> torch.Tensor:
    """A learned ``[1, T * s * s, D]`` table (time-major) resampled to ``grid`` = (T, H, W): each temporal slot's
    s x s grid bicubically to H x W, as VideoMAE's ``run_class_finetuning.py`` does when it loads a checkpoint
    of another input size. T must be the file's: time is not resampled (nor is it there)."""
    slots, height, width = grid
    tokens, dim = (table.shape[1], table.shape[2]) if table.ndim == 3 else (0, 0)
    side = int(round((tokens / slots) ** 0.5)) if tokens % slots == 0 else 0
    if table.ndim != 3 or table.shape[0] != 1 or side == 0 or side * side * slots != tokens:
        raise CheckpointError(
            f"{where} has shape {list(table.shape)}, not [1, {slots} x s x s, D] for this model's "
            f"{slots} temporal slots (model.num_frames / tubelet_size); only the spatial grid is resampled"
        )
    spatial = table.reshape(slots, side, side, dim).permute(0, 3, 1, 2).float()
    spatial = F.interpolate(spatial, size=(height, width), mode="bicubic", align_corners=False)
    return spatial.permute(0, 2, 3, 1).reshape(1, slots * height * width, dim).to(table.dtype)


def _fit_pos_embed(
    source: Source, targets: Mapping[str, torch.Tensor], grid: tuple[int, int, int] | None, where: str
) -> None:
    """Resample the file's learned position table in place when its spatial grid is not ours (logged)."""
    table = source.tensors.get("pos_embed")
    ours = targets.get("pos_embed")
    if table is None or ours is None or grid is None or table.shape == ours.shape or table.shape[-1] != ours.shape[-1]:
        return  # absent, the same, or another width (which _plan names)
    source.tensors["pos_embed"] = resample_pos_embed(table, grid, f"{where}: {source.keys['pos_embed']}")
    log.info("%s: pos_embed resampled from %d to %d tokens (grid %s)", where, table.shape[1], ours.shape[1], grid)


# ------------------------------------------------------------------ mapping and checks


@dataclass
class Plan:
    """Tensors to copy (with their keys in the file): whole ones, and the thirds of fused qkv tensors."""

    whole: dict[str, tuple[str, torch.Tensor]]
    parts: dict[str, dict[int, tuple[str, torch.Tensor]]]


def _part_shape(shape: torch.Size, part: int | None) -> tuple[int, ...]:
    """The shape a source tensor must have: ours, or a third of its rows for a qkv part."""
    if part is None:
        return tuple(shape)
    return (shape[0] // 3, *shape[1:])


def _head_differs(name: str, value: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> bool:
    """A head of another class count (rows), to be left at its fresh init."""
    return name.startswith("head.") and name in targets and value.shape[0] != targets[name].shape[0]


def _plan(source: Source, targets: Mapping[str, torch.Tensor], where: str) -> tuple[Plan, list[str]]:
    """Check each tensor's place and shape, in file order; returns the plan and the head keys skipped."""
    plan = Plan({}, {})
    skipped: list[str] = []
    for name, value in source.tensors.items():
        key = source.keys[name]
        mapped = _translate(name, source.layout)
        if mapped is None or mapped[0] not in targets:
            where_to = f" (mapped to {mapped[0]!r}, which it does not have)" if mapped else ""
            raise CheckpointError(
                f"{where}: {key} has no place in the video ViT{where_to}; is this a VideoMAE ({source.layout} "
                "layout) checkpoint with model.depth / qkv_bias / pos_embed as the file's?"
            )
        ours, part = mapped
        if _head_differs(ours, value, targets):
            skipped.append(key)
            continue
        want = _part_shape(targets[ours].shape, part)
        if tuple(value.shape) != want:
            raise CheckpointError(
                f"{where}: {key} has shape {list(value.shape)} but {ours} needs {list(want)} "
                "(model.embed_dim / depth / patch_size / tubelet_size / mlp_ratio must match the file)"
            )
        if part is None:
            plan.whole[ours] = (key, value)
        else:
            plan.parts.setdefault(ours, {})[part] = (key, value)
    return plan, skipped


def _check_complete(plan: Plan, targets: Mapping[str, torch.Tensor], source: Source, where: str) -> list[str]:
    """Every required tensor of ours filled (qkv: all needed thirds); returns our optional tensors left at init."""
    left: list[str] = []
    for ours in targets:
        if ours.startswith("llm_block."):
            continue
        parts = plan.parts.get(ours, {})
        needed = NEEDED_PARTS["bias" if ours.endswith(".bias") else "weight"]
        if ours in plan.whole or (parts and needed <= set(parts)):
            continue
        if not ours.startswith(REQUIRED) and not parts:
            left.append(ours)
            continue
        have = {key for key, _ in parts.values()}
        expected = [source.prefix + k for k in _expected_sources(ours, source.layout)]
        missing = [k for k in expected if k not in have] or [ours]
        raise CheckpointError(f"{where}: no tensor for {ours} (expected {' + '.join(missing)})")
    return left


def _planned_tensors(plan: Plan) -> dict[str, torch.Tensor]:
    """``{checkpoint key: tensor}`` of every tensor the plan copies."""
    parts = (keyed for thirds in plan.parts.values() for keyed in thirds.values())
    return dict([*plan.whole.values(), *parts])


def _copy(plan: Plan, targets: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Write the planned tensors into the model's; the key third of a fused bias is zero."""
    loaded: dict[str, str] = {}
    with torch.no_grad():
        for ours, (key, value) in plan.whole.items():
            targets[ours].copy_(value.to(targets[ours].dtype))
            loaded[ours] = key
        for ours, parts in plan.parts.items():
            rows = targets[ours].shape[0] // 3
            targets[ours].zero_()
            for part, (_, value) in parts.items():
                targets[ours][part * rows : (part + 1) * rows].copy_(value.to(targets[ours].dtype))
            loaded[ours] = " + ".join(key for _, (key, _) in sorted(parts.items()))
    return loaded


def _check_config(config: Mapping[str, Any] | None, where: str) -> None:
    """A transformers config.json that this model cannot run (activation), or norms of another eps (logged)."""
    if not config:
        return
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"{where}: config.json hidden_act={act!r}; the timm blocks use the exact GELU ('gelu')")
    eps = config.get("layer_norm_eps")
    if eps is not None and eps != EPS:
        log.info("%s: the transformers model's norms use eps %g (fc_norm 1e-5); this model uses %g", where, eps, EPS)


def map_videomae_state(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    where: str = "checkpoint",
    config: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """Copy a VideoMAE state dict (either layout) into ``model`` after checking every tensor; returns
    ``{our name: checkpoint key(s)}``. Raises :class:`CheckpointError` naming the first key that has no place in
    the model or another shape, or the first required tensor of ours the file lacks."""
    _check_config(config, where)
    source = _source(state, where)
    _drop_final_norm(source, where)
    targets = model.state_dict(keep_vars=True)
    _fit_pos_embed(source, targets, getattr(model, "grid", None), where)
    plan, skipped = _plan(source, targets, where)
    left = _check_complete(plan, targets, source, where)
    require_finite(_planned_tensors(plan), where)
    loaded = _copy(plan, targets)
    _report(where, source, loaded, skipped, left)
    return loaded


def _report(where: str, source: Source, loaded: dict, skipped: list[str], left: list[str]) -> None:
    """One log line per kind of thing not taken, so a user sees what was re-initialised."""
    log.info("%s: %d tensors of a %s VideoMAE checkpoint loaded", where, len(loaded), source.layout)
    if source.dropped:
        dropped = source.dropped
        log.info("%s: %d keys not used by a classifier (pre-training, last norm): %s", where, len(dropped), dropped[:4])
    if skipped:
        log.info("%s: %s is for another class count: the head is re-initialised", where, skipped)
    left = [name for name in left if not (skipped and name.startswith("head."))]
    if left:
        log.info("%s: not in the file, kept at their fresh init: %s", where, left)


def load_videomae_checkpoint(model: nn.Module, path: str | Path) -> dict[str, str]:
    """Read ``path`` (a file or a transformers folder) and :func:`map_videomae_state` it into ``model``."""
    state, config = read_videomae_file(path)
    return map_videomae_state(model, state, f"model.checkpoint {path}", config)
