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

from collections.abc import Iterable
from typing import Literal

import torch
from pydantic import Field
from timm.models.vision_transformer import Block
from torch import nn

from mmllm import build_visual_llm_layer
from mmllm.blocks import BlockOptions
from mmllm.engine.task import ModelSection
from mmllm.errors import ConfigError
from mmllm.models.point_groups import (
    FP32BatchNorm1d,
    PointGroupTokenizer,
    PointPositionEmbed,
    min_points_required,
)


class PointBERTOptions(ModelSection):
    """``model`` section of the point-cloud task.

    ``recipe`` picks the group embedding, the head and the optimizer groups:

    * ``point_mae`` (the default, kept so existing configs and runs stay what they were): the
      mini-PointNet straight to ``dim`` channels and Point-MAE's batch-norm head
      (Linear-BN-ReLU-Dropout-Linear-BN-ReLU-Dropout-Linear); ``run.lr_multipliers`` as given.
    * ``point_bert`` (the official Point-BERT / LM4VisualEncoding fine-tuning code,
      ``models/Point_BERT.py`` ``PointTransformer``): the mini-PointNet to ``encoder_dims`` channels,
      ``reduce_dim`` Linear(encoder_dims, dim) after the max-pool, the head
      Linear(2·dim, head_hidden)-ReLU-Dropout-Linear, and ``tools/builder.py``'s parameter groups
      (:func:`point_bert_lr_multipliers`). ``init_checkpoint`` may name the released ``Point-BERT.pth``.
    """

    recipe: Literal["point_mae", "point_bert"] = Field(
        "point_mae", description="point_mae (default, BN head) or point_bert (reduce_dim, official head and LR groups)"
    )
    encoder_dims: int = Field(256, gt=0, description="point_bert: mini-PointNet width before reduce_dim (256)")
    init_checkpoint: str | None = Field(
        None, description="point_bert: the released Point-BERT.pth (or a fine-tuned PointTransformer checkpoint)"
    )

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
    llm_block: BlockOptions = Field(None, description="block options (kind, source, layers, ...)")
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
        self.recipe = o.recipe
        if o.recipe == "point_bert":  # Point_BERT.py PointTransformer: Encoder(encoder_dims) then reduce_dim
            self.tokenizer = PointGroupTokenizer(
                o.num_groups, o.group_size, o.in_channels, o.encoder_dims, o.tokenizer_hidden
            )
            self.reduce_dim: nn.Module = nn.Linear(o.encoder_dims, o.dim)
        else:  # Point-MAE: the mini-PointNet straight to dim channels
            self.tokenizer = PointGroupTokenizer(o.num_groups, o.group_size, o.in_channels, o.dim, o.tokenizer_hidden)
            self.reduce_dim = nn.Identity()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, o.dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, o.dim))
        self.pos_embed = PointPositionEmbed(o.dim, o.pos_hidden)
        rates = torch.linspace(0, o.drop_path, o.depth).tolist()
        self.blocks = nn.ModuleList(
            Block(o.dim, o.num_heads, o.mlp_ratio, qkv_bias=o.qkv_bias, drop_path=rate) for rate in rates
        )
        self.llm_block = build_visual_llm_layer(o.llm_block, visual_dim=o.dim)
        self.norm = nn.LayerNorm(o.dim)
        head = point_bert_head if o.recipe == "point_bert" else point_mae_head
        self.head = head(o, num_classes)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)

    def no_weight_decay(self) -> set[str]:
        """Names kept out of weight decay beside biases and norms (timm's convention, honoured by
        :func:`mmllm.params.param_groups`): under ``point_bert``, ``tools/builder.py``'s rule (1-d, biases, names
        with ``token``) and the LLM block's trainable parameters (its adapters: builder.py's ``'llama'`` group,
        weight decay 0); under ``point_mae``, none beyond the engine's own rule."""
        if self.recipe != "point_bert":
            return set()
        return {
            name
            for name, param in self.named_parameters()
            if param.requires_grad and (name.startswith("llm_block.") or point_bert_no_decay(name, param))
        }

    @property
    def min_points(self) -> int:
        return min_points_required(self.tokenizer.num_groups, self.tokenizer.group_size)

    def forward_features(self, points: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised token sequence ``[B, 1 + G, dim]`` (CLS first)."""
        tokens, centers = self.tokenizer(points, features)  # coordinates stay fp32 inside the tokenizer
        tokens = self.reduce_dim(tokens)
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


def point_mae_head(options: PointBERTOptions, num_classes: int) -> nn.Sequential:
    """Point-MAE's head: Linear(2·dim, h)-BN-ReLU-Dropout-Linear(h, h)-BN-ReLU-Dropout-Linear(h, classes)."""
    o = options
    return nn.Sequential(
        nn.Linear(2 * o.dim, o.head_hidden),
        FP32BatchNorm1d(o.head_hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(o.head_dropout),
        nn.Linear(o.head_hidden, o.head_hidden),
        FP32BatchNorm1d(o.head_hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(o.head_dropout),
        nn.Linear(o.head_hidden, num_classes),
    )


def point_bert_head(options: PointBERTOptions, num_classes: int) -> nn.Sequential:
    """Point-BERT's ``cls_head_finetune``: Linear(2·dim, head_hidden)-ReLU-Dropout-Linear(head_hidden, classes)."""
    return nn.Sequential(
        nn.Linear(2 * options.dim, options.head_hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(options.head_dropout),
        nn.Linear(options.head_hidden, num_classes),
    )


def point_bert_no_decay(name: str, param: nn.Parameter) -> bool:
    """``tools/builder.py`` ``add_weight_decay``: 1-d tensors, biases and names containing ``token``, the name
    being the official one (our ``tokenizer.*`` is its ``encoder.*``, which does not contain ``token``)."""
    from .pointbert_checkpoint import ours_to_official

    return param.ndim == 1 or name.endswith(".bias") or "token" in ours_to_official(name)


def point_bert_lr_multipliers(named_parameters: Iterable[tuple[str, nn.Parameter]]) -> dict[str, float]:
    """Per-parameter LR factors of ``tools/builder.py`` (LM4VisualEncoding's ``build_opti_sche``), as
    full parameter names for the engine's prefix map: the trainable parameters of the LLM block (its
    adapters; the official ``'llama' in name`` group) 0.5x, the other no-decay parameters 0.1x, the rest 1x.

    Weight decay 0 for the same parameters comes from :meth:`PointBERTClassifier.no_weight_decay`, which the
    engine's :func:`mmllm.params.param_groups` honours."""
    out: dict[str, float] = {}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        if name.startswith("llm_block."):
            out[name] = 0.5
        elif point_bert_no_decay(name, param):
            out[name] = 0.1
    return out


def create_pointbert_model(options: PointBERTOptions, num_classes: int | None = None) -> PointBERTClassifier:
    """Factory: ``num_classes`` from the data unless the config fixes it (then both must agree)."""
    if options.num_classes is not None and num_classes is not None and options.num_classes != num_classes:
        raise ConfigError(f"model.num_classes={options.num_classes} but the data has {num_classes} classes")
    n = options.num_classes or num_classes
    if n is None:
        raise ConfigError("model.num_classes is needed when no class list is given")
    if options.dim % options.num_heads:
        raise ConfigError(f"model.dim={options.dim} is not divisible by model.num_heads={options.num_heads}")
    model = PointBERTClassifier(options, n)
    if options.init_checkpoint is not None:
        if options.recipe != "point_bert":
            raise ConfigError("model.init_checkpoint (a Point-BERT checkpoint) needs model.recipe=point_bert")
        from .pointbert_checkpoint import load_point_bert_checkpoint

        load_point_bert_checkpoint(model, options.init_checkpoint)
    return model
