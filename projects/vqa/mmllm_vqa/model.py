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
        dim = 2 * backbone.hidden  # pooled text ++ pooled image
        # METER's VQA classifier (Dou et al. 2022; METERTransformerSS.vqa_classifier in the official code):
        # Linear(2h -> 2h) -> LayerNorm(2h) -> GELU -> Linear(2h -> answers)
        self.vqa_head = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim), nn.GELU(), nn.Linear(dim, num_answers))

    def forward(self, images, input_ids, attention_mask) -> torch.Tensor:
        return self.vqa_head(self.backbone(images, input_ids, attention_mask).pooled)


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE over soft scores, scaled by the vocabulary size (as ViLT/METER)."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float()) * targets.shape[1]


def create_vqa_model(options: METEROptions, num_answers: int) -> VQAModel:
    """Factory: the model from the typed ``model`` section of a task config."""
    return VQAModel(build_meter_backbone(options), num_answers)
