"""The ViT + LLM-block classifiers as timm models: ``timm.create_model(name, llm_block=..., num_classes=...)``.

Importing ``vision.classification`` registers them (timm's ``@register_model``); each name is a
timm ViT architecture with the visual LLM block after ViT block ``insert_after`` (default: the
last, the official placement of Pang et al., ICLR 2024):

* ``vit_tiny_patch16_224_llm``, ``vit_small_patch16_224_llm``, ``vit_base_patch16_224_llm``:
  DeiT/ViT-Ti/S/B at 224 px, ImageNet normalisation;
* ``vit_tiny_patch7_28_llm``: the embedded MNIST config's model (DeiT-Tiny widths, 28 px
  digits, 7 px patches, 6 blocks, 10 classes, MNIST normalisation).

Keywords: ``llm_block`` (a ``model.llm_block`` mapping; default the frozen last layer of
SmolLM2-135M; ``{"kind": "none"}`` for the plain ViT), ``insert_after``, ``vit_checkpoint``
(ViT/DeiT weights: a file, a folder or a hub id, see :func:`.model.load_vit_checkpoint`), and any timm
VisionTransformer keyword (``img_size``, ``patch_size``, ``depth``, ``drop_path_rate``, ...). ``pretrained=True`` starts the 224-px models' ViT from the
weights their ``pretrained_cfg["hf_hub_id"]`` names (DeiT, ImageNet-1k: the paper's ViT, trained with the
ImageNet statistics the cfg states), downloaded by timm into the standard Hugging Face cache (offline: that
cache only); the LLM block and a head of another class count start fresh. The MNIST model has no released
weights. The model's ``pretrained_cfg`` describes its real input
(``input_size`` follows ``img_size``/``in_chans``), so ``timm.data.resolve_data_config(model=m)``
builds the right transform.
"""

from __future__ import annotations

from typing import Any

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model

from mmllm import build_visual_llm_layer
from mmllm.errors import ConfigError

from .model import ViTLLMClassifier, create_vit

DEFAULT_BLOCK = {"kind": "llm_block", "source": "smollm2-135m", "layers": "last", "dtype": "auto", "final_norm": "unit"}
MNIST_MEAN, MNIST_STD = (0.1307,) * 3, (0.3081,) * 3


def _cfg(**overrides: Any) -> dict[str, Any]:
    cfg = dict(
        url="",
        num_classes=1000,
        input_size=(3, 224, 224),
        pool_size=None,
        crop_pct=0.9,
        interpolation="bicubic",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="vit.patch_embed.proj",
        classifier="vit.head",
        license="apache-2.0",
    )
    return {**cfg, **overrides}


# read by timm's register_model (must exist before the decorated functions): one untagged cfg per name
default_cfgs = generate_default_cfgs(
    {
        "vit_tiny_patch16_224_llm": _cfg(hf_hub_id="timm/deit_tiny_patch16_224.fb_in1k"),
        "vit_small_patch16_224_llm": _cfg(hf_hub_id="timm/deit_small_patch16_224.fb_in1k"),
        "vit_base_patch16_224_llm": _cfg(hf_hub_id="timm/deit_base_patch16_224.fb_in1k"),
        "vit_tiny_patch7_28_llm": _cfg(
            num_classes=10,
            input_size=(3, 28, 28),
            crop_pct=1.0,
            interpolation="bilinear",
            mean=MNIST_MEAN,
            std=MNIST_STD,
        ),
    }
)


def _pretrained_vit(name: str, cfg: dict[str, Any], vit_checkpoint: str | None) -> str:
    """The hub id ``pretrained=True`` loads: the ViT weights the model's ``pretrained_cfg`` names (``hf_hub_id``,
    timm's field; ``pretrained_cfg_overlay=dict(hf_hub_id=...)`` picks others)."""
    if vit_checkpoint:
        raise ConfigError(f"timm model {name!r}: give pretrained=True or vit_checkpoint, not both")
    if not cfg.get("hf_hub_id"):
        raise ConfigError(
            f"timm model {name!r}: no released ViT weights fit this architecture, so pretrained=True has nothing "
            "to load; pass vit_checkpoint=<ViT/DeiT weights file or hub id> (or timm's checkpoint_path=<a saved "
            "state dict of this model>)"
        )
    return str(cfg["hf_hub_id"])


def _create(name: str, base: str, base_kwargs: dict[str, Any], pretrained: bool, **kwargs: Any) -> ViTLLMClassifier:
    kwargs.pop("cache_dir", None)  # timm passes these to every entry point; downloads use the standard HF cache
    kwargs.pop("pretrained_cfg", None)
    overlay = kwargs.pop("pretrained_cfg_overlay", None) or {}
    llm_block = kwargs.pop("llm_block", DEFAULT_BLOCK)
    insert_after = kwargs.pop("insert_after", None)
    vit_checkpoint = kwargs.pop("vit_checkpoint", None)
    cfg = {**timm.get_pretrained_cfg(name).to_dict(), **overlay}
    if pretrained:
        vit_checkpoint = _pretrained_vit(name, cfg, vit_checkpoint)
    num_classes = kwargs.pop("num_classes", cfg["num_classes"])
    what = f"{name} pretrained=True (pretrained_cfg hf_hub_id)" if pretrained else f"{name} vit_checkpoint"
    vit = create_vit(base, num_classes, {**base_kwargs, **kwargs}, vit_checkpoint, what)
    model = ViTLLMClassifier(vit, build_visual_llm_layer(llm_block, vit.embed_dim), insert_after)
    height, width = vit.patch_embed.img_size
    cfg.update(
        architecture=name, num_classes=vit.num_classes, input_size=(vit.patch_embed.proj.in_channels, height, width)
    )
    model.pretrained_cfg = cfg
    model.default_cfg = cfg  # timm's older name for the same dict
    return model


@register_model
def vit_tiny_patch16_224_llm(pretrained: bool = False, **kwargs: Any) -> ViTLLMClassifier:
    """ViT-Ti/16 (DeiT-Tiny widths) at 224 px with the LLM block."""
    return _create("vit_tiny_patch16_224_llm", "vit_tiny_patch16_224", {}, pretrained, **kwargs)


@register_model
def vit_small_patch16_224_llm(pretrained: bool = False, **kwargs: Any) -> ViTLLMClassifier:
    """ViT-S/16 (DeiT-Small widths) at 224 px with the LLM block (the paper's DeiT-S setting)."""
    return _create("vit_small_patch16_224_llm", "vit_small_patch16_224", {}, pretrained, **kwargs)


@register_model
def vit_base_patch16_224_llm(pretrained: bool = False, **kwargs: Any) -> ViTLLMClassifier:
    """ViT-B/16 at 224 px with the LLM block."""
    return _create("vit_base_patch16_224_llm", "vit_base_patch16_224", {}, pretrained, **kwargs)


@register_model
def vit_tiny_patch7_28_llm(pretrained: bool = False, **kwargs: Any) -> ViTLLMClassifier:
    """The embedded MNIST config's model (configs/vision/image_cls_mnist.yaml): 28 px, 7 px patches, 6 blocks."""
    base = {"img_size": 28, "patch_size": 7, "depth": 6, "drop_path_rate": 0.0}
    return _create("vit_tiny_patch7_28_llm", "vit_tiny_patch16_224", base, pretrained, **kwargs)
