"""METER-style VQA model: backbone (with the frozen LLM block after fusion) + answer classifier."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from mmllm.models.meter import build_meter_backbone


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


def create_vqa_model(model_cfg: Mapping[str, Any], num_answers: int):
    """Factory: (model, tokenizer) from the ``model`` section of a task config."""
    backbone, tokenizer = build_meter_backbone(model_cfg)
    return VQAModel(backbone, num_answers), tokenizer
