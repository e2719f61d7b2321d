"""Image classifier of Pang et al. (ICLR 2024, Sec. 3/4.1): a timm ViT whose token sequence passes
through a visual LLM block (frozen LLM layer between two trainable adapters) after ViT block k.

The official code puts the block after the last ViT block, before the final norm and head; the
paper's position ablation (its Table D: head / middle / tail of the ViT) moves it, so the
insertion point is a config value (``insert_after``). The ViT runs through timm's public API
only: ``forward_intermediates`` (patch embedding, position embedding, blocks 0..k), then blocks
k+1.., ``norm`` and ``forward_head``.

Two details of the official ``image_classification`` code (ziqipang/LM4VisualEncoding) live here:
``pos_embed``/``cls_token``/``dist_token`` take no weight decay (``vit_llama.py`` l. 112-113, used by
``optimizer_utils.py`` l. 96-100 beside its 1-d/bias rule, l. 28): ``model.no_weight_decay: official`` makes
:meth:`ViTLLMClassifier.no_weight_decay` list them, which the engine's :func:`mmllm.params.param_groups`
honours (timm's convention); and its adapters (``llama_dim_mapper1/2``) are initialised by
timm's ViT init, trunc-normal std 0.02 (``vit_llama.py`` l. 109, 172-177): ``model.adapter_init``.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from pydantic import Field, PositiveInt
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmllm import build_visual_llm_layer
from mmllm.blocks import BlockOptions
from mmllm.engine.task import ModelSection
from mmllm.errors import CheckpointError, ConfigError
from mmllm.loading.hub import is_offline
from mmllm.loading.hub_cache import hub_cache_dir, looks_like_hub_id
from mmllm.loading.state_fit import require_finite, require_fit
from mmllm.safeload import refusal

# vit_llama.py l. 112-113: ViTLLaMA.no_weight_decay() (timm's VisionTransformer lists the same three)
OFFICIAL_NO_WEIGHT_DECAY = ("pos_embed", "cls_token", "dist_token")
ADAPTER_INIT_STD = 0.02  # vit_llama.py l. 175: trunc_normal_(module.weight, std=.02)


def resolve_insert_after(insert_after: int | None, depth: int) -> int:
    """Block index k after which the block sits: None = the last block; negative counts from the end."""
    if insert_after is None:
        return depth - 1
    if not -depth <= insert_after < depth:
        raise ConfigError(
            f"model.insert_after={insert_after} is outside the ViT's {depth} blocks "
            f"(use 0..{depth - 1}, or -{depth}..-1 counted from the end)"
        )
    return insert_after % depth


class ViTLLMClassifier(nn.Module):
    """``vit`` (a timm VisionTransformer) with ``llm_block`` after ViT block ``insert_after``."""

    def __init__(self, vit: VisionTransformer, llm_block: nn.Module, insert_after: int | None = None):
        super().__init__()
        if not isinstance(vit, VisionTransformer):
            raise ConfigError(f"model.vit must be a timm VisionTransformer (vit_*, deit_*), got {type(vit).__name__}")
        self.vit = vit
        self.llm_block = llm_block
        self.insert_after = resolve_insert_after(insert_after, len(vit.blocks))

    @property
    def num_classes(self) -> int:
        return self.vit.num_classes

    @property
    def num_features(self) -> int:
        return self.vit.num_features

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """timm's switch, for the ViT blocks and the LLM block's layers alike (the block's own option)."""
        self.vit.set_grad_checkpointing(enable)
        if hasattr(self.llm_block, "gradient_checkpointing"):
            self.llm_block.gradient_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.vit.get_classifier()

    skip_official_decay = False  # model.no_weight_decay: official (set by create_vit_cls_model)

    def no_weight_decay(self) -> set[str]:
        """Full names of the parameters kept out of weight decay beside biases and norms (timm's convention,
        read by mmllm.params.param_groups): the official code's three under ``official``, none by default."""
        if not self.skip_official_decay:
            return set()
        return {f"vit.{name}" for name, _ in self.vit.named_parameters() if name in OFFICIAL_NO_WEIGHT_DECAY}

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A fresh head for ``num_classes`` (timm's fine-tuning call; 0 = no head, features out)."""
        self.vit.reset_classifier(num_classes, global_pool)
        cfg = getattr(self, "pretrained_cfg", None)
        if isinstance(cfg, dict):
            cfg["num_classes"] = num_classes

    def tokens_after_block(self, images: torch.Tensor, k: int) -> torch.Tensor:
        """The full token sequence ([prefix tokens, patch tokens], [B, N, D]) output by ViT block ``k``."""
        out = self.vit.forward_intermediates(
            images,
            indices=[k],
            return_prefix_tokens=True,
            norm=False,
            stop_early=True,
            output_fmt="NLC",
            intermediates_only=True,
        )[0]
        if isinstance(out, tuple):  # (patch tokens, prefix tokens) when the ViT has class/register tokens
            patches, prefix = out
            return torch.cat([prefix, patches], dim=1)  # timm's order: prefix tokens first
        return out

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.tokens_after_block(images, self.insert_after)
        x = self.llm_block(x)
        for block in self.vit.blocks[self.insert_after + 1 :]:
            if self.vit.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.vit.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the normed tokens and classify (``pre_logits=True``: the pooled features)."""
        return self.vit.forward_head(x, pre_logits=pre_logits)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))


def _read_vit_file(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A safetensors or torch file through timm's reader (``weights_only=True``; DeiT's ``{'model': ...}``,
    ``state_dict`` and ``module.`` layouts unwrapped by timm)."""
    try:
        return timm.models.load_state_dict(str(path), weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused a global: planted code, not damage
        raise CheckpointError(f"{what}: {refusal(path, exc)}") from exc
    except Exception as exc:  # noqa: BLE001 - torch/safetensors raise many types for a bad file
        raise CheckpointError(f"{what}: cannot read {path}: {exc}") from exc


HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's hub names, in its order of preference


def _read_vit_folder(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A downloaded hub folder (``hf download timm/...``): its weights file, safetensors first as timm reads it."""
    for name in HUB_WEIGHT_FILES:
        if (path / name).is_file():
            return _read_vit_file(path / name, what)
    raise CheckpointError(f"{what}: the folder {path} holds none of {list(HUB_WEIGHT_FILES)}")


def _read_vit_hub(repo_id: str, what: str) -> dict[str, torch.Tensor]:
    """A hub id (``timm/deit_small_patch16_224.fb_in1k``, ``@revision`` allowed) through timm's own download
    (``load_state_dict_from_hf``: ``model.safetensors``, else ``pytorch_model.bin``) into the standard Hugging
    Face cache; offline (``HF_HUB_OFFLINE=1``) only that cache is read."""
    try:
        return timm.models.load_state_dict_from_hf(repo_id, weights_only=True, cache_dir=str(hub_cache_dir()))
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{what}: {refusal(repo_id, exc)}") from exc
    except Exception as exc:  # noqa: BLE001 - huggingface_hub/httpx/torch raise many types
        if is_offline():
            raise CheckpointError(
                f"{what} {repo_id!r}: no such local file, and as a hub id it is not in the local Hugging Face cache "
                f"({hub_cache_dir()}) while HF_HUB_OFFLINE=1; download it once with network (unset HF_HUB_OFFLINE, "
                f"or `hf download {repo_id.split('@')[0]}`) or give a local weights file"
            ) from exc
        reason = " ".join(str(exc).split("\n\n")[:2]).strip() or type(exc).__name__  # the hub's status and cause
        raise CheckpointError(
            f"{what} {repo_id!r}: no such local file, and as a hub id it could not be downloaded: {reason}"
        ) from exc


def read_vit_state(source: str, what: str = "model.checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of ViT/DeiT weights as released: a file, a folder holding one, or a hub id
    (``timm/<name>.<tag>``, optionally ``hf-hub:``-prefixed as timm writes it)."""
    path = Path(source).expanduser()
    if path.is_file():
        return _read_vit_file(path, what)
    if path.is_dir():
        return _read_vit_folder(path, what)
    repo_id = source.removeprefix("hf-hub:")
    if looks_like_hub_id(repo_id.split("@")[0]):
        return _read_vit_hub(repo_id, what)
    raise CheckpointError(
        f"{what}: {source} does not exist (give a weights file, a folder, or a hub id such as "
        "timm/deit_small_patch16_224.fb_in1k)"
    )


def load_vit_checkpoint(vit: VisionTransformer, source: str, what: str = "model.checkpoint") -> list[str]:
    """Load released ViT/DeiT weights (see :func:`read_vit_state`) into ``vit``, every tensor name- and
    shape-checked.

    timm's ``checkpoint_filter_fn`` maps the layout (DeiT's ``model`` key, an OpenAI/open_clip CLIP
    tower, ...) and resamples the position and patch embeddings to the model's grid; a classifier head
    of another class count (an ImageNet head for a 10-class task) is left at its fresh init, as in DeiT
    fine-tuning. Any other tensor that does not fit is a :class:`CheckpointError` naming the first key.
    Returns the names not taken from the weights.
    """
    state = read_vit_state(source, what)
    try:
        state = checkpoint_filter_fn(state, vit)
    except Exception as exc:  # noqa: BLE001 - timm's resampling fails in several ways on a foreign layout
        raise CheckpointError(f"{what} {source}: timm cannot map it onto model.vit: {exc}") from exc
    own = vit.state_dict()
    skipped = sorted(k for k, v in state.items() if _is_head(k) and (k not in own or v.shape != own[k].shape))
    for key in skipped:
        state.pop(key)
    required = {k: v for k, v in own.items() if k in state or not _is_head(k)}
    require_fit(state, required, f"{what} {source}")
    require_finite(state, f"{what} {source}")
    vit.load_state_dict(state, strict=False)  # every key checked above; head keys absent stay at their init
    return sorted(set(skipped) | (own.keys() - state.keys()))


def _is_head(key: str) -> bool:
    """The classifier (``head``, DeiT's ``head_dist``): re-initialised when its class count differs."""
    return key.split(".")[0] in ("head", "head_dist")


def init_adapters(block: nn.Module, mode: str) -> None:
    """``trunc_normal``: the block's linear adapters as the official code's timm init (weights trunc-normal
    std 0.02, biases 0; vit_llama.py l. 172-177); ``default``: as built (PyTorch's nn.Linear init)."""
    if mode == "default":
        return
    if mode != "trunc_normal":
        raise ConfigError(f"model.adapter_init={mode!r} is not one of 'default', 'trunc_normal'")
    for name, module in block.named_children():
        if name.startswith("adapter") and isinstance(module, nn.Linear):
            with torch.no_grad():
                nn.init.trunc_normal_(module.weight, std=ADAPTER_INIT_STD)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)


def create_vit(
    name: str,
    num_classes: int,
    vit_kwargs: dict[str, Any] | None = None,
    checkpoint_path: str | None = None,
    what: str = "model.checkpoint",
) -> VisionTransformer:
    """A timm ViT by name, never downloading (``pretrained=False``); optionally a local checkpoint."""
    try:
        vit = timm.create_model(name, pretrained=False, num_classes=num_classes, **dict(vit_kwargs or {}))
    except (RuntimeError, TypeError, ValueError) as exc:  # unknown name / bad keyword
        raise ConfigError(f"model.vit={name!r} with model.vit_kwargs={vit_kwargs}: {exc}") from exc
    if not isinstance(vit, VisionTransformer):
        raise ConfigError(f"model.vit={name!r} is a {type(vit).__name__}, not a timm VisionTransformer")
    if checkpoint_path:
        load_vit_checkpoint(vit, checkpoint_path, what)
    return vit


class ClsModelOptions(ModelSection):
    """``model`` section: the timm ViT, where the block sits, the block itself, the loss."""

    vit: str = Field(
        "vit_tiny_patch16_224", description="timm VisionTransformer name (vit_*, deit_*); pretrained=False"
    )
    vit_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="timm.create_model keywords: img_size, patch_size, depth, drop_path_rate"
    )
    checkpoint: str | None = Field(
        None, description="local ViT/DeiT weights (tensors only); a head of another size is re-initialised"
    )
    num_classes: PositiveInt | None = Field(None, description="default: the number of class folders of the train split")
    insert_after: int | None = Field(
        None,
        description="ViT block k after which the block sits; default the last "
        "(official placement); negative counts from the end",
    )
    llm_block: BlockOptions = Field(None, description="block options (mmllm.blocks); None = no block")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing (DeiT: 0.1)")
    no_weight_decay: Literal["norms_biases", "official"] = Field(
        "norms_biases",
        description="parameters without weight decay: norms_biases (1-d tensors, biases, norms) or official "
        "(also pos_embed / cls_token / dist_token, as the official image code: vit_llama.py l. 112-113)",
    )
    adapter_init: Literal["default", "trunc_normal"] = Field(
        "default",
        description="the block's adapters: default (PyTorch's nn.Linear init) or trunc_normal "
        "(std 0.02, biases 0: the official image code's timm init)",
    )


def create_vit_cls_model(options: ClsModelOptions, num_classes: int) -> ViTLLMClassifier:
    """The classifier from the task's ``model`` section (a :class:`ClsModelOptions`)."""
    vit = create_vit(options.vit, num_classes, options.vit_kwargs, options.checkpoint)
    block = build_visual_llm_layer(options.llm_block, vit.embed_dim)
    init_adapters(block, options.adapter_init)
    model = ViTLLMClassifier(vit, block, options.insert_after)
    model.skip_official_decay = options.no_weight_decay == "official"
    return model
