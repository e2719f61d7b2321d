"""VideoMAE-style video ViT classifier with the frozen LLM block after ViT block k.

    video [B, C, T, H, W] --Conv3d tubelets (t x p x p)--> tokens [B, N, D] + position table
      --> timm ViT blocks 0..k --> LLM block (Pang et al., ICLR 2024) --> blocks k+1..depth-1
      --> mean over tokens --> LayerNorm (fc_norm) --> head

Tong et al., "VideoMAE", NeurIPS 2022: tubelet embedding (2x16x16), a fixed sinusoid table over the
flattened token index (Vaswani et al. 2017), mean pooling with the norm after the pooling ("fc_norm")
and a head initialised small (``head_init_scale``). The paper adds the block after the last ViT block,
before that norm and head; ``insert_after`` moves it (the position ablation of the ViT, not the choice
of the LLM layer, which is ``llm_block.layers``).

``checkpoint`` loads VideoMAE weights (released or transformers layout: :mod:`.videomae_checkpoint`);
:meth:`VideoViTClassifier.layer_id` gives the engine VideoMAE's layer ids for ``run.layer_decay``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field, PositiveInt, model_validator
from timm.layers import trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from mmllm import build_visual_llm_layer
from mmllm.blocks import BlockOptions
from mmllm.engine.task import ModelSection

from .videomae_checkpoint import load_videomae_checkpoint


class VideoViTOptions(ModelSection):
    """The ``model`` section of the action-recognition task."""

    num_classes: PositiveInt = Field(description="number of action classes (174 for SSv2, 400 for Kinetics-400)")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing (VideoMAE: 0.1)")
    img_size: PositiveInt = Field(224, description="input frames are img_size x img_size after cropping")
    num_frames: PositiveInt = Field(16, description="frames per clip (must equal datasets.<task>.num_frames)")
    in_chans: PositiveInt = 3
    patch_size: PositiveInt = Field(16, description="spatial tubelet size")
    tubelet_size: PositiveInt = Field(2, description="temporal tubelet size (frames per token)")
    embed_dim: PositiveInt = 384
    depth: PositiveInt = 12
    num_heads: PositiveInt = 6
    mlp_ratio: float = Field(4.0, gt=0)
    qkv_bias: bool = True
    pos_embed: Literal["sincos", "learned"] = Field(
        "sincos", description="sincos: VideoMAE's fixed sinusoid table; learned: trainable, trunc-normal init"
    )
    drop_rate: float = Field(0.0, ge=0, lt=1, description="dropout before the head (VideoMAE fc_drop_rate)")
    attn_drop_rate: float = Field(0.0, ge=0, lt=1)
    drop_path_rate: float = Field(0.0, ge=0, lt=1, description="stochastic depth, linear over the ViT blocks")
    head_init_scale: float = Field(1e-3, gt=0, description="head weights scaled after trunc-normal init (VideoMAE)")
    insert_after: int = Field(-1, description="the LLM block runs after this ViT block (0-based; -1 = last)")
    llm_block: BlockOptions = Field(
        None, description="block options (mmllm.build_visual_llm_layer): kind, source, layers, dtype, ..."
    )
    checkpoint: str | None = Field(
        None,
        description="VideoMAE weights: the released .pth (modeling_finetune.py names; pre-training files' encoder) "
        "or a transformers VideoMAE folder/safetensors; a head of another class count is re-initialised",
    )

    @model_validator(mode="after")
    def _check(self) -> VideoViTOptions:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.num_frames % self.tubelet_size:
            raise ValueError(f"num_frames {self.num_frames} is not a multiple of tubelet_size {self.tubelet_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")
        if not -self.depth <= self.insert_after < self.depth:
            raise ValueError(
                f"insert_after must be in [-{self.depth}, {self.depth - 1}] for depth {self.depth}, "
                f"got {self.insert_after}"
            )
        return self


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """[1, num_positions, dim]: sin on even channels, cos on odd ones, wavelengths 10000^(2i/dim)
    (Vaswani et al. 2017, Sec. 3.5), over the flattened token index as VideoMAE's fixed table."""
    position = torch.arange(num_positions, dtype=torch.float64)[:, None]
    channel = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = position / torch.pow(10000.0, 2 * torch.div(channel, 2, rounding_mode="floor") / dim)
    table = torch.where(channel.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table[None].float()


class TubeletEmbed(nn.Module):
    """Non-overlapping t x p x p tubelets of the clip, each projected to ``embed_dim`` (a strided Conv3d)."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, tubelet_size: int):
        super().__init__()
        self.in_chans, self.patch_size, self.tubelet_size = in_chans, patch_size, tubelet_size
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, T/t * H/p * W/p, D], tokens ordered time-major (t, then row, then column)."""
        return self.proj(video).flatten(2).transpose(1, 2)


class VideoViTClassifier(nn.Module):
    """The video ViT with the LLM block (``llm_block``; :class:`mmllm.NoBlock` for the baseline)."""

    def __init__(self, opts: VideoViTOptions, llm_block: nn.Module):
        super().__init__()
        self.opts = opts
        self.grid = (
            opts.num_frames // opts.tubelet_size,
            opts.img_size // opts.patch_size,
            opts.img_size // opts.patch_size,
        )
        num_tokens = math.prod(self.grid)
        self.patch_embed = TubeletEmbed(opts.in_chans, opts.embed_dim, opts.patch_size, opts.tubelet_size)
        if opts.pos_embed == "sincos":
            self.register_buffer("pos_embed", sinusoid_table(num_tokens, opts.embed_dim), persistent=False)
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, opts.embed_dim))
            trunc_normal_(self.pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(opts.drop_rate)
        rates = torch.linspace(0, opts.drop_path_rate, opts.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(
                opts.embed_dim,
                opts.num_heads,
                opts.mlp_ratio,
                qkv_bias=opts.qkv_bias,
                attn_drop=opts.attn_drop_rate,
                proj_drop=opts.drop_rate,
                drop_path=rate,
                norm_layer=_layer_norm,
            )
            for rate in rates
        )
        self.insert_index = opts.insert_after % opts.depth
        self.llm_block = llm_block
        self.fc_norm = _layer_norm(opts.embed_dim)
        self.head_drop = nn.Dropout(opts.drop_rate)
        self.head = nn.Linear(opts.embed_dim, opts.num_classes)
        for module in (self.patch_embed, self.blocks, self.fc_norm, self.head):  # never the LLM block's own init
            module.apply(_init_weights)
        with torch.no_grad():
            self.head.weight.mul_(opts.head_init_scale)
            self.head.bias.mul_(opts.head_init_scale)

    def _check_input(self, video: torch.Tensor) -> None:
        o = self.opts
        want = (o.in_chans, o.num_frames, o.img_size, o.img_size)
        if video.dim() != 5 or tuple(video.shape[1:]) != want:
            raise ValueError(
                f"expected a video batch [B, C, T, H, W] with (C, T, H, W) = {want} "
                f"(model.in_chans/num_frames/img_size), got {tuple(video.shape)}"
            )

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """Pooled, normalised clip features [B, D]."""
        self._check_input(video)
        x = self.patch_embed(video)
        x = self.pos_drop(x + self.pos_embed.to(x.dtype))
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == self.insert_index:
                x = self.llm_block(x)
        return self.fc_norm(x.mean(dim=1))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Class logits [B, num_classes]."""
        return self.head(self.head_drop(self.forward_features(video)))

    def get_num_layers(self) -> int:
        """ViT blocks, VideoMAE's ``get_num_layers``: layer-wise LR decay (``run.layer_decay``) spans 0..this+1."""
        return len(self.blocks)

    def layer_id(self, name: str) -> int:
        """Layer of parameter ``name`` for ``run.layer_decay``, as VideoMAE's ``get_num_layer_for_vit``: 0 = tubelet
        and position embeddings, i + 1 = ViT block i, depth + 1 = fc_norm and head (the full LR).

        The LLM block's trainable parts (adapters, the MLP control) count as the ViT block they follow (id k + 1):
        the block reads and writes block k's token stream, one more residual step at that depth, so it decays
        like that block. Giving it the head's full LR instead would be a statement that new modules train faster,
        which ``run.lr_multipliers`` (e.g. ``llm_block.adapter: 10``) makes explicitly and which composes with this.
        """
        if name == "pos_embed" or name.startswith("patch_embed."):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        if name.startswith("llm_block."):
            return self.insert_index + 1
        return len(self.blocks) + 1


def _layer_norm(dim: int, **kwargs) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6, **kwargs)


def _init_weights(module: nn.Module) -> None:
    """VideoMAE's init: trunc-normal(0.02) linears with zero bias, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def create_videovit_model(options: VideoViTOptions | Mapping[str, Any]) -> VideoViTClassifier:
    """The classifier from the ``model`` section (a mapping is validated first)."""
    if not isinstance(options, VideoViTOptions):
        options = VideoViTOptions.parse(options, "model")
    model = VideoViTClassifier(options, build_visual_llm_layer(options.llm_block, visual_dim=options.embed_dim))
    if options.checkpoint:
        load_videomae_checkpoint(model, options.checkpoint)
    return model
