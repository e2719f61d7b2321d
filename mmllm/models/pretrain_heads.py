"""METER's VL-pretraining objectives: image–text matching (ITM) and masked language modelling (MLM)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ITMHead(nn.Module):
    def __init__(self, pooled_dim: int):
        super().__init__()
        self.fc = nn.Linear(pooled_dim, 2)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(pooled)


class MLMHead(nn.Module):
    """BERT's prediction head: dense -> GELU -> LayerNorm -> vocabulary."""

    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))
        self.decoder = nn.Linear(dim, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(tokens))


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    tokenizer,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking (Devlin et al. 2019): of the chosen 15%, 80% -> [MASK], 10% random, 10% kept.
    Returns (masked ids, labels with -100 where nothing is predicted). At least one token per row is chosen."""
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for tid in tokenizer.all_special_ids:
        special |= input_ids == tid
    candidates = (attention_mask == 1) & ~special
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & candidates
    for row in range(input_ids.shape[0]):  # every caption contributes a prediction
        if not chosen[row].any() and candidates[row].any():
            options = candidates[row].nonzero().flatten()
            chosen[row, options[torch.randint(len(options), (1,), generator=generator)]] = True
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    masked = input_ids.clone()
    roll = torch.rand(input_ids.shape, generator=generator)
    masked[chosen & (roll < 0.8)] = tokenizer.mask_token_id
    random_ids = torch.randint(len(tokenizer), input_ids.shape, generator=generator)
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    masked[swap] = random_ids[swap]
    return masked, labels


class PretrainModel(nn.Module):
    def __init__(self, backbone, vocab_size: int):
        super().__init__()
        self.backbone = backbone
        self.itm_head = ITMHead(2 * backbone.hidden)
        self.mlm_head = MLMHead(backbone.hidden, vocab_size)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        images, ids, mask = batch["images"], batch["input_ids"], batch["attention_mask"]
        # MLM on matched pairs with masked text
        fused = self.backbone(images, batch["mlm_input_ids"], mask)
        mlm_logits = self.mlm_head(fused.text_tokens)
        mlm_loss = F.cross_entropy(mlm_logits.float().flatten(0, 1), batch["mlm_labels"].flatten(), ignore_index=-100)
        # ITM: each caption with its image (1) and with the next image in the batch (0 unless same caption)
        negatives = images.roll(1, dims=0)
        neg_label = batch["same_caption_as_rolled"].long()
        both = self.backbone(torch.cat([images, negatives]), torch.cat([ids, ids]), torch.cat([mask, mask]))
        itm_logits = self.itm_head(both.pooled)
        itm_labels = torch.cat([torch.ones_like(neg_label), neg_label])
        itm_loss = F.cross_entropy(itm_logits.float(), itm_labels)
        return {
            "loss": mlm_loss + itm_loss,
            "mlm_loss": mlm_loss,
            "itm_loss": itm_loss,
            "mlm_logits": mlm_logits,
            "itm_logits": itm_logits,
            "itm_labels": itm_labels,
        }
