"""Point-BERT-style classifier with the frozen LLM block inserted after transformer block k.

    points --FPS + kNN + mini-PointNet--> group tokens (+ MLP position embedding of the centres)
           --[CLS] + transformer blocks 1..k--> LLM block --blocks k+1..depth--> norm
           --[CLS ‖ max-pool(tokens)]--> MLP head

(Yu et al., Point-BERT, CVPR 2022: tokenizer §3.1, fine-tuning head "concatenate the [CLS] token and
the max-pooled features"; Pang et al., ICLR 2024: the block after the encoder's last block, before
the final norm.) As in Point-BERT the position embedding is added to the input of every
transformer block; the LLM block receives the hidden states alone (the paper's block has no
positions) and its output replaces them, like the image classifier's.

The transformer blocks are timm's ``Block``; the LLM block comes from :func:`mmllm.build_visual_llm_layer`.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from timm.models.vision_transformer import Block
from torch import nn

from mmllm import build_visual_llm_layer
from mmllm.engine.task import ModelSection
from mmllm.errors import ConfigError
from mmllm.models.point_groups import PointGroupTokenizer, PointPositionEmbed, min_points_required


class PointBERTOptions(ModelSection):
    """``model`` section of the point-cloud task (defaults: Point-BERT's fine-tuning encoder)."""

    num_classes: int | None = Field(None, gt=0, description="default: the number of class names of the data")
    num_groups: int = Field(64, gt=0, description="FPS centres = tokens per cloud")
    group_size: int = Field(32, gt=0, description="points per kNN group (groups overlap)")
    in_channels: int = Field(0, ge=0, description="per-point feature channels beside xyz (3 with normals)")
    dim: int = Field(384, gt=0, description="transformer width")
    depth: int = Field(12, gt=0, description="transformer blocks")
    num_heads: int = Field(6, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    qkv_bias: bool = False
    drop_path: float = Field(0.1, ge=0, lt=1, description="stochastic depth, linearly increasing over blocks")
    tokenizer_hidden: int = Field(256, gt=0, description="mini-PointNet width (Point-BERT: 256)")
    pos_hidden: int = Field(128, gt=0, description="position-embedding MLP width (Point-BERT: 128)")
    head_hidden: int = Field(256, gt=0, description="classification MLP width (Point-BERT: 256)")
    head_dropout: float = Field(0.5, ge=0, lt=1)
    insert_after: int | None = Field(
        None,
        description="the LLM block runs after this many transformer blocks: 0 = before the first, "
        "depth = after the last (default, before the final norm), negative counts from the end (-1 = depth - 1)",
    )
    llm_block: dict[str, Any] | None = Field(None, description="block options (kind, source, layers, ...)")
    label_smoothing: float = Field(0.0, ge=0, lt=1)


def resolve_insert_after(insert_after: int | None, depth: int) -> int:
    """Number of transformer blocks before the LLM block, in ``[0, depth]``."""
    if insert_after is None:
        return depth
    k = insert_after + depth if insert_after < 0 else insert_after
    if not 0 <= k <= depth:
        raise ConfigError(f"model.insert_after={insert_after} is outside [-{depth}, {depth}] for depth {depth}")
    return k


class PointBERTClassifier(nn.Module):
    """``forward(points [B, N, 3] fp32, features [B, N, C] | None) -> logits [B, num_classes]``."""

    def __init__(self, options: PointBERTOptions, num_classes: int):
        super().__init__()
        o = options
        self.insert_after = resolve_insert_after(o.insert_after, o.depth)
        self.tokenizer = PointGroupTokenizer(o.num_groups, o.group_size, o.in_channels, o.dim, o.tokenizer_hidden)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, o.dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, o.dim))
        self.pos_embed = PointPositionEmbed(o.dim, o.pos_hidden)
        rates = torch.linspace(0, o.drop_path, o.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(o.dim, o.num_heads, o.mlp_ratio, qkv_bias=o.qkv_bias, drop_path=rate) for rate in rates
        )
        self.llm_block = build_visual_llm_layer(o.llm_block, visual_dim=o.dim)
        self.norm = nn.LayerNorm(o.dim)
        self.head = nn.Sequential(
            nn.Linear(2 * o.dim, o.head_hidden),
            nn.BatchNorm1d(o.head_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(o.head_dropout),
            nn.Linear(o.head_hidden, o.head_hidden),
            nn.BatchNorm1d(o.head_hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(o.head_dropout),
            nn.Linear(o.head_hidden, num_classes),
        )
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)

    @property
    def min_points(self) -> int:
        return min_points_required(self.tokenizer.num_groups, self.tokenizer.group_size)

    def forward_features(self, points: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised token sequence ``[B, 1 + G, dim]`` (CLS first)."""
        tokens, centers = self.tokenizer(points, features)  # coordinates stay fp32 inside the tokenizer
        batch = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(batch, -1, -1).to(tokens.dtype), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(batch, -1, -1), self.pos_embed(centers)], dim=1).to(x.dtype)
        for i, block in enumerate(self.blocks):
            if i == self.insert_after:
                x = self.llm_block(x)
            x = block(x + pos)
        if self.insert_after == len(self.blocks):
            x = self.llm_block(x)
        return self.norm(x)

    def forward(self, points: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        x = self.forward_features(points, features)
        return self.head(torch.cat([x[:, 0], x[:, 1:].amax(1)], dim=-1))


def create_pointbert_model(options: PointBERTOptions, num_classes: int | None = None) -> PointBERTClassifier:
    """Factory: ``num_classes`` from the data unless the config fixes it (then both must agree)."""
    if options.num_classes is not None and num_classes is not None and options.num_classes != num_classes:
        raise ConfigError(f"model.num_classes={options.num_classes} but the data has {num_classes} classes")
    n = options.num_classes or num_classes
    if n is None:
        raise ConfigError("model.num_classes is needed when no class list is given")
    if options.dim % options.num_heads:
        raise ConfigError(f"model.dim={options.dim} is not divisible by model.num_heads={options.num_heads}")
    return PointBERTClassifier(options, n)
