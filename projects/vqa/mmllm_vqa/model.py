"""METER-style VQA model: backbone (with the frozen LLM block after fusion) + answer classifier."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mmllm.models.meter import METEROptions, build_meter_backbone


class VQAModel(nn.Module):
    def __init__(self, backbone, num_answers: int):
        super().__init__()
        self.backbone = backbone
        dim = 2 * backbone.hidden
        # METER's VQA classifier: Linear -> LayerNorm -> GELU -> Linear over the answer vocabulary
        self.vqa_head = nn.Sequential(nn.Linear(dim, dim * 2), nn.LayerNorm(dim * 2), nn.GELU(), nn.Linear(dim * 2, num_answers))

    def forward(self, images, input_ids, attention_mask) -> torch.Tensor:
        return self.vqa_head(self.backbone(images, input_ids, attention_mask).pooled)


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE over soft scores, scaled by the vocabulary size (as ViLT/METER)."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float()) * targets.shape[1]


def create_vqa_model(options: METEROptions, num_answers: int) -> VQAModel:
    """Factory: the model from the typed ``model`` section of a task config."""
    return VQAModel(build_meter_backbone(options), num_answers)
