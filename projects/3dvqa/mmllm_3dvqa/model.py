"""3D VQA model: point-cloud scene tokens + MiniLM situation/question tokens, METER co-attention fusion,
the frozen LLM block after the fusion on the 3D tokens, an answer classifier and (optionally) SQA3D's
auxiliary situation head.

* Scene encoder: Point-BERT's tokeniser (:class:`mmllm.models.point_groups.PointGroupTokenizer`:
  FPS centres, kNN groups, a mini-PointNet over xyz + rgb) plus an MLP position embedding of the
  group centres, a learned [CLS] token and a small pre-norm transformer over the group tokens.
  Object-level tokens from boxes are not implemented: every scene is tokenised from its points.
* Text: situation and question as one pair-encoded sequence ``[CLS] situation [SEP] question [SEP]``
  through the pretrained MiniLM-L6 (``mmllm.models.encoders``), so each attends to the other.
* Fusion: METER's co-attention (:class:`mmllm.models.meter.METERBackbone` with the scene encoder as
  its visual stream: self-attention, cross-attention to the other stream, FFN, per stream). SQA3D's
  baseline (ScanQA-based) instead attends from the situation and question encodings to the object
  proposals of a VoteNet detector; we use METER's symmetric co-attention because the paper puts the
  block after a METER fusion in 2D VQA, the same fusion is shared with the 2D projects, and no
  detector (with its box labels) is needed.
* The frozen LLM block: after the fusion on the 3D tokens (``model.llm_block_on: vision``), or on
  the text tokens, both, or none - the same switch as 2D VQA.
* Head: METER's VQA classifier on pooled text ++ pooled scene; SQA3D's auxiliary head regresses the
  agent's position (3) and rotation quaternion (4) from the same pooled features.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from mmllm.blocks import BlockOptions
from mmllm.errors import ConfigError
from mmllm.models.encoders import TextOptions, build_text_encoder
from mmllm.models.meter import METERBackbone
from mmllm.models.point_groups import PointGroupTokenizer, PointPositionEmbed
from mmllm.schema import ModelSection, Section

from .sqa3d import SQA3DFusionOptions, SQA3DModel


class SceneOptions(Section):
    """``model.scene``: the point-cloud tokeniser (Point-BERT) and the transformer over its tokens."""

    num_groups: int = Field(64, gt=0, description="FPS centres = scene tokens")
    group_size: int = Field(32, gt=0, description="kNN points per group")
    width: int = Field(256, gt=0)
    pointnet_hidden: int = Field(256, gt=0, description="mini-PointNet width (Point-BERT: 256; smaller on CPU)")
    layers: int = Field(2, ge=0, description="transformer layers over the group tokens")
    heads: int = Field(4, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)


class SceneQAModelOptions(ModelSection):
    """The ``model`` section of 3D VQA."""

    scene: SceneOptions = Field(default_factory=SceneOptions)
    text: TextOptions = Field(default_factory=TextOptions)
    hidden_size: int = Field(256, gt=0, description="shared width of the fusion layers")
    fusion_layers: int = Field(2, ge=0)
    num_heads: int = Field(4, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    llm_block: BlockOptions = Field(None, description="block options (kind, source, layers, ...)")
    llm_block_on: Literal["vision", "text", "both", "none"] = Field(
        "vision", description="which fused stream the block processes (vision = the 3D scene tokens)"
    )
    answer_loss: Literal["ce", "bce"] = Field("ce", description="ce: SQA3D (one answer); bce: ScanQA (multi-hot)")
    situation_loss: bool = Field(False, description="SQA3D's auxiliary loss: regress the agent's position and rotation")
    situation_position_weight: float = Field(1.0, ge=0)
    situation_rotation_weight: float = Field(1.0, ge=0)
    num_answers: int | None = Field(None, description="LAVIS default-config key; the vocabulary sets the real size")
    arch_variant: Literal["meter", "sqa3d"] = Field(
        "meter",
        description="meter: METER co-attention on pair-encoded text (this model); sqa3d: SQA3D's baseline "
        "(separate situation/question encoders, MCAN fusion; :mod:`.sqa3d`)",
    )
    sqa3d: SQA3DFusionOptions = Field(default_factory=SQA3DFusionOptions, description="arch_variant=sqa3d only")


class PointSceneEncoder(nn.Module):
    """Points [B, N, 3 + C] (fp32 coordinates) -> tokens [B, 1 + G, width] ([CLS] first)."""

    def __init__(
        self,
        num_groups: int = 64,
        group_size: int = 32,
        use_color: bool = True,
        width: int = 256,
        pointnet_hidden: int = 256,
        layers: int = 2,
        heads: int = 4,
        dropout: float = 0.1,
    ):
        super().__init__()
        if width % heads:
            raise ConfigError(f"model.scene.width ({width}) must be divisible by model.scene.heads ({heads})")
        self.use_color = use_color
        self.width = width
        self.tokenizer = PointGroupTokenizer(
            num_groups, group_size, in_channels=3 if use_color else 0, dim=width, hidden=pointnet_hidden
        )
        self.pos_embed = PointPositionEmbed(width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False) if layers else None
        self.norm = nn.LayerNorm(width)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        xyz = points[..., :3]
        features = points[..., 3:] if self.use_color else None
        tokens, centers = self.tokenizer(xyz, features)  # grouping in fp32, the PointNet in the model dtype
        x = tokens + self.pos_embed(centers)
        cls = (self.cls_token + self.cls_pos).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1)
        if self.blocks is not None:
            x = self.blocks(x)
        return self.norm(x)


class SceneQAModel(nn.Module):
    def __init__(self, backbone: METERBackbone, num_answers: int, situation_head: bool):
        super().__init__()
        self.backbone = backbone
        dim = 2 * backbone.hidden
        # METER's VQA classifier (Linear 2h->2h, LayerNorm, GELU, Linear 2h->answers)
        self.vqa_head = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.GELU(), nn.Linear(dim, num_answers))
        # SQA3D's auxiliary situation regressor: position (x, y, z) + rotation quaternion (x, y, z, w)
        self.situation_head = (
            nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 7)) if situation_head else None
        )

    def forward(
        self, points: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(answer logits [B, A], pose [B, 7] or None)."""
        pooled = self.backbone(points, input_ids, attention_mask).pooled
        pose = self.situation_head(pooled) if self.situation_head is not None else None
        return self.vqa_head(pooled), pose


def answer_loss(logits: torch.Tensor, targets: torch.Tensor, kind: str = "ce") -> torch.Tensor:
    """``ce``: cross-entropy to the answer distribution (SQA3D: one answer per question);
    ``bce``: BCE on multi-hot answers, scaled by the vocabulary size (ScanQA's ``answer_cat_scores`` loss)."""
    logits = logits.float()
    if kind == "ce":
        dist = targets / targets.sum(-1, keepdim=True).clamp_min(1e-6)
        return -(dist * F.log_softmax(logits, -1)).sum(-1).mean()
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, targets.clamp(max=1.0)) * targets.shape[1]
    raise ConfigError(f"model.answer_loss must be 'ce' or 'bce', got {kind!r}")


def situation_loss(
    pred: torch.Tensor, pose: torch.Tensor, mask: torch.Tensor, position_weight: float, rotation_weight: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """SQA3D's auxiliary loss: MSE on the position and on the quaternion, over questions with a known pose."""
    if not bool(mask.any()):
        return pred.sum() * 0.0, {}
    pred, pose = pred.float()[mask], pose.float()[mask]
    pos = F.mse_loss(pred[:, :3], pose[:, :3])
    rot = F.mse_loss(pred[:, 3:], pose[:, 3:])
    return position_weight * pos + rotation_weight * rot, {"loss_pos": pos.item(), "loss_rot": rot.item()}


def create_3dvqa_model(
    options: SceneQAModelOptions, num_answers: int, use_color: bool = True
) -> SceneQAModel | SQA3DModel:
    """Factory: the model from the typed ``model`` section, for ``num_answers`` answers and xyz(+rgb) points
    (``model.arch_variant``: METER co-attention, or SQA3D's baseline fusion)."""
    if num_answers < 1:
        raise ConfigError("the answer vocabulary is empty")
    scene = PointSceneEncoder(use_color=use_color, **options.scene.model_dump())
    if options.arch_variant == "sqa3d":
        return SQA3DModel(scene, options, num_answers)
    backbone = METERBackbone(
        scene,
        build_text_encoder(options.text),
        hidden=options.hidden_size,
        fusion_layers=options.fusion_layers,
        heads=options.num_heads,
        dropout=options.dropout,
        llm_block=options.llm_block,
        llm_block_on=options.llm_block_on,
    )
    return SceneQAModel(backbone, num_answers, options.situation_loss)
