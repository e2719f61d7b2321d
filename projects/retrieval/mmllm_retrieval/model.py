"""METER-style retrieval model: an image–text contrastive (ITC) head on the unimodal features
for fast ranking, and an image–text matching (ITM) head on the fused features (with the
frozen LLM block after fusion) for re-ranking. Hard negatives for ITM are sampled from the
contrastive similarities (Li et al., ALBEF, NeurIPS 2021)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from mmllm.models.meter import METEROptions, build_meter_backbone


class RetrievalModelOptions(METEROptions):
    embed_dim: int = Field(256, gt=0, description="width of the contrastive (ITC) space")
    temperature: float = Field(0.07, gt=0, description="initial ITC temperature")


class RetrievalModel(nn.Module):
    def __init__(self, backbone, embed_dim: int = 256, temperature: float = 0.07):
        super().__init__()
        self.backbone = backbone
        self.image_itc = nn.Linear(backbone.hidden, embed_dim)
        self.text_itc = nn.Linear(backbone.hidden, embed_dim)
        # shape [1], not a scalar: DeepSpeed broadcasts parameters as byte views, impossible for 0-d bf16
        self.logit_scale = nn.Parameter(torch.tensor([math.log(1 / temperature)]))
        self.itm_head = nn.Linear(2 * backbone.hidden, 2)

    # unimodal side (cheap, for ranking every pair)
    def image_features(self, images):
        tokens = self.backbone.encode_image(images)
        return tokens, F.normalize(self.image_itc(tokens[:, 0]).float(), dim=-1)

    def text_features(self, input_ids, attention_mask):
        tokens = self.backbone.encode_text(input_ids, attention_mask)
        return tokens, F.normalize(self.text_itc(tokens[:, 0]).float(), dim=-1)

    def similarity(self, image_feat, text_feat):
        return image_feat @ text_feat.T * self.logit_scale.float().clamp(max=math.log(100)).exp().squeeze()

    # fused side (expensive, for re-ranking candidates)
    def itm_logits(self, image_tokens, text_tokens, text_pad):
        return self.itm_head(self.backbone.fuse(image_tokens, text_tokens, text_pad).pooled).float()

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        img_tok, img_feat = self.image_features(batch["images"])
        txt_tok, txt_feat = self.text_features(batch["input_ids"], batch["attention_mask"])
        text_pad = batch["attention_mask"] == 0
        sim = self.similarity(img_feat, txt_feat)
        same = (batch["image_index"][:, None] == batch["image_index"][None, :]).float()  # duplicates are positives
        targets = same / same.sum(1, keepdim=True)
        itc = (
            -(F.log_softmax(sim, 1) * targets).sum(1).mean() / 2 - (F.log_softmax(sim.T, 1) * targets).sum(1).mean() / 2
        )
        with torch.no_grad():  # hard negatives: sampled in proportion to the contrastive similarity
            weights_i2t = F.softmax(sim.float(), 1).masked_fill(same.bool(), 0) + 1e-9
            weights_t2i = F.softmax(sim.T.float(), 1).masked_fill(same.bool(), 0) + 1e-9
            neg_txt = torch.multinomial(weights_i2t, 1).squeeze(1)
            neg_img = torch.multinomial(weights_t2i, 1).squeeze(1)
        images = torch.cat([img_tok, img_tok, img_tok[neg_img]])
        texts = torch.cat([txt_tok, txt_tok[neg_txt], txt_tok])
        pads = torch.cat([text_pad, text_pad[neg_txt], text_pad])
        logits = self.itm_logits(images, texts, pads)
        b = img_tok.shape[0]
        labels = torch.cat([torch.ones(b), torch.zeros(2 * b)]).long().to(logits.device)
        itm = F.cross_entropy(logits, labels)
        return {"loss": itc + itm, "itc_loss": itc, "itm_loss": itm}


def create_retrieval_model(options: RetrievalModelOptions) -> RetrievalModel:
    """Factory: the model from the typed ``model`` section of a task config."""
    return RetrievalModel(build_meter_backbone(options), options.embed_dim, options.temperature)
