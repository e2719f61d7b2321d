"""Image classifier of Pang et al. (ICLR 2024, Sec. 3/4.1): a ViT whose final token
sequence passes through the frozen LLM block (with its two adapters) before the
ViT's own final norm and classification head."""
from __future__ import annotations

from typing import Any, Mapping

import timm
import torch
from torch import nn

from mmllm import build_visual_llm_layer


class ViTLLMClassifier(nn.Module):
    def __init__(self, vit: nn.Module, llm_block: nn.Module):
        super().__init__()
        self.vit = vit
        self.llm_block = llm_block

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        x = vit.patch_embed(images)
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        x = vit.blocks(x)
        x = self.llm_block(x)
        return vit.norm(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_head(self.forward_features(images))


def create_vit_llm(config: Mapping[str, Any]) -> ViTLLMClassifier:
    """Factory from a config mapping::

        vit: vit_tiny_patch16_224      # any timm ViT name
        vit_kwargs: {img_size: 64, patch_size: 8, depth: 4}
        vit_checkpoint: null           # local weights file (no downloads)
        num_classes: 10
        llm_block: {kind: llm_block, source: smollm2-135m, layers: last}
    """
    vit = timm.create_model(
        config.get("vit", "vit_tiny_patch16_224"),
        pretrained=False,
        num_classes=int(config["num_classes"]),
        checkpoint_path=config.get("vit_checkpoint") or "",
        **dict(config.get("vit_kwargs", {})),
    )
    block = build_visual_llm_layer(config.get("llm_block"), visual_dim=vit.embed_dim)
    return ViTLLMClassifier(vit, block)
