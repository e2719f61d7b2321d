"""METER-style dual-stream fusion (Dou et al., "An Empirical Study of Training End-to-End
Vision-and-Language Transformers", CVPR 2022), with the frozen LLM block of Pang et al.
(ICLR 2024) after the fusion layers on the visual stream (or text, or both).

Each co-attention layer updates both streams from the previous layer's outputs:
self-attention, cross-attention to the other stream, feed-forward (post-norm, as BERT).

Where the block sits in the stack (``model.llm_block_at``, the METER host's insertion depth for
the paper's position ablation, its Table D): ``after_fusion`` (default: on the fused tokens,
before the poolers) or ``before_fusion`` (on the projected unimodal tokens, before the first
co-attention layer: retrieval's contrastive features then pass through it too).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import torch
from pydantic import Field
from torch import nn

from ..blocks import BlockOptions, build_visual_llm_layer
from ..errors import ConfigError
from ..schema import ModelSection
from .encoders import TextOptions, VisionOptions, build_text_encoder, build_vision_encoder

LLM_BLOCK_PLACES = ("vision", "text", "both", "none")
LLM_BLOCK_DEPTHS = ("after_fusion", "before_fusion")


class METEROptions(ModelSection):
    """The ``model`` section of every METER-style task (VQA, retrieval, pretraining, 3D VQA's text side)."""

    vision: VisionOptions = Field(default_factory=VisionOptions)
    text: TextOptions = Field(default_factory=TextOptions)
    hidden_size: int = Field(768, gt=0, description="shared width of the fusion layers")
    fusion_layers: int = Field(6, ge=0)
    num_heads: int = Field(12, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    llm_block: BlockOptions = Field(None, description="block options (kind, source, layers, ...)")
    llm_block_on: Literal["vision", "text", "both", "none"] = Field(
        "vision", description="which fused stream the block processes"
    )
    llm_block_at: Literal["after_fusion", "before_fusion"] = Field(
        "after_fusion", description="insertion depth: after the fusion layers, or on the unimodal tokens before them"
    )


class CrossModalLayer(nn.Module):
    """One stream of one METER fusion layer."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Dropout(dropout), nn.Linear(int(dim * mlp_ratio), dim)
        )
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, x_pad, other, other_pad):
        x = self.norm1(x + self.dropout(self.self_attn(x, x, x, key_padding_mask=x_pad, need_weights=False)[0]))
        x = self.norm2(
            x + self.dropout(self.cross_attn(x, other, other, key_padding_mask=other_pad, need_weights=False)[0])
        )
        return self.norm3(x + self.dropout(self.ffn(x)))


class Pooler(nn.Module):
    """First token -> Linear -> tanh (BERT/METER pooler)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(tokens[:, 0]))


class FusedOutput(NamedTuple):  # a tuple, so DeepSpeed ZeRO-3 sees the tensors inside
    image_tokens: torch.Tensor  # [B, Ni, D] after fusion (and the LLM block)
    text_tokens: torch.Tensor  # [B, Nt, D]
    image_pad: torch.Tensor | None
    text_pad: torch.Tensor
    pooled: torch.Tensor  # [B, 2D]: pooled text ++ pooled image (METER's classifier input)


class METERBackbone(nn.Module):
    def __init__(
        self,
        vision,
        text,
        hidden: int,
        fusion_layers: int,
        heads: int,
        dropout: float,
        llm_block: Mapping[str, Any] | None,
        llm_block_on: str,
        llm_block_at: str = "after_fusion",
    ):
        super().__init__()
        if llm_block_on not in LLM_BLOCK_PLACES:
            raise ConfigError(f"model.llm_block_on must be one of {LLM_BLOCK_PLACES}, got {llm_block_on!r}")
        if llm_block_at not in LLM_BLOCK_DEPTHS:
            raise ConfigError(f"model.llm_block_at must be one of {LLM_BLOCK_DEPTHS}, got {llm_block_at!r}")
        self.llm_block_at = llm_block_at
        self.vision = vision
        self.text = text
        self.hidden = hidden
        self.image_proj = nn.Linear(vision.width, hidden)
        self.text_proj = nn.Linear(text.width, hidden)
        self.modality_embed = nn.Embedding(2, hidden)  # METER's token-type embedding: 0 text, 1 image
        self.image_layers = nn.ModuleList(CrossModalLayer(hidden, heads, dropout=dropout) for _ in range(fusion_layers))
        self.text_layers = nn.ModuleList(CrossModalLayer(hidden, heads, dropout=dropout) for _ in range(fusion_layers))
        block_cfg = dict(llm_block or {"kind": "none"})
        on = llm_block_on if block_cfg.get("kind", "llm_block") != "none" else "none"
        self.llm_block_on = on
        self.llm_block = build_visual_llm_layer(block_cfg, hidden) if on in ("vision", "both") else None
        self.llm_block_text = build_visual_llm_layer(block_cfg, hidden) if on in ("text", "both") else None
        self.image_pooler = Pooler(hidden)
        self.text_pooler = Pooler(hidden)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unimodal image tokens in the shared width (used by retrieval's contrastive head)."""
        tokens = self.image_proj(self.vision(images))
        tokens = tokens + self._modality(1, tokens)
        if self.llm_block is not None and self.llm_block_at == "before_fusion":
            tokens = self.llm_block(tokens, None)
        return tokens

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.text_proj(self.text(input_ids, attention_mask))
        tokens = tokens + self._modality(0, tokens)
        if self.llm_block_text is not None and self.llm_block_at == "before_fusion":
            tokens = self.llm_block_text(tokens, attention_mask == 0)
        return tokens

    def _modality(self, kind: int, like: torch.Tensor) -> torch.Tensor:
        # called as a module (not .weight[...]) so ZeRO-3 gathers its partitioned weight
        return self.modality_embed(torch.full((1, 1), kind, dtype=torch.long, device=like.device))

    def fuse(self, image_tokens, text_tokens, text_pad, image_pad=None) -> FusedOutput:
        x_img, x_txt = image_tokens, text_tokens
        for img_layer, txt_layer in zip(self.image_layers, self.text_layers):
            x_img, x_txt = img_layer(x_img, image_pad, x_txt, text_pad), txt_layer(x_txt, text_pad, x_img, image_pad)
        if self.llm_block is not None and self.llm_block_at == "after_fusion":
            x_img = self.llm_block(x_img, image_pad)
        if self.llm_block_text is not None and self.llm_block_at == "after_fusion":
            x_txt = self.llm_block_text(x_txt, text_pad)
        pooled = torch.cat([self.text_pooler(x_txt), self.image_pooler(x_img)], dim=-1)
        return FusedOutput(x_img, x_txt, image_pad, text_pad, pooled)

    def forward(self, images, input_ids, attention_mask) -> FusedOutput:
        text_pad = attention_mask == 0
        return self.fuse(self.encode_image(images), self.encode_text(input_ids, attention_mask), text_pad)


def build_meter_backbone(options: METEROptions) -> METERBackbone:
    """The backbone from the typed ``model`` section of a task config."""
    return METERBackbone(
        build_vision_encoder(options.vision),
        build_text_encoder(options.text),
        hidden=options.hidden_size,
        fusion_layers=options.fusion_layers,
        heads=options.num_heads,
        dropout=options.dropout,
        llm_block=options.llm_block,
        llm_block_on=options.llm_block_on,
        llm_block_at=options.llm_block_at,
    )
