"""LLaViT's changes to a causal LM that reads visual tokens (*Large Language Models as extended
Vision Transformers*): (a) separate Q/K/V projections for visual tokens in every layer, and
(b) bidirectional attention among visual tokens while text stays causal.

(a) wraps transformers' own ``q_proj``/``k_proj``/``v_proj`` Linear layers (the attention code
is untouched): the text projection keeps the pretrained weights; a trainable copy, initialised
from them, projects the tokens whose modality id is 1. The ids of the running batch are read
from a shared :class:`ModalityContext` that the host sets around each LM call.
(b) is an additive 4D mask [B, 1, T, T] that transformers 5 hands to the attention as-is.
(c) (several encoder depths concatenated channel-wise) belongs to the vision side: see the
generative VQA model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

QKV_NAMES = ("q_proj", "k_proj", "v_proj")


class ModalityContext:
    """Per-token modality ids [B, T] of the current LM call (1 = visual), or None (all text)."""

    def __init__(self):
        self.ids: torch.Tensor | None = None


class ModalityLinear(nn.Module):
    """``text`` for text tokens, ``visual`` (a trainable copy of ``text`` at init) for visual tokens."""

    def __init__(self, text: nn.Linear, context: ModalityContext):
        super().__init__()
        self.text = text
        self.visual = copy.deepcopy(text)
        for p in self.visual.parameters():
            p.requires_grad = True
        self._context = context

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.text(x)
        ids = self._context.ids
        if ids is None:
            return out
        if ids.shape != x.shape[:-1]:
            raise ValueError(f"modality ids {tuple(ids.shape)} do not match tokens {tuple(x.shape[:-1])}")
        visual = ids == 1
        if not bool(visual.any()):
            return out
        # the visual copy runs on every token, the same GEMM shape as the text one, and is selected per token:
        # projecting only the gathered visual rows changes the GEMM's blocking, and on some CPUs (AVX-512
        # oneDNN) its last bits, so identical copies would not reproduce the baseline exactly
        return torch.where(visual.unsqueeze(-1), self.visual(x).to(out.dtype), out)


def install_visual_qkv(lm: nn.Module, context: ModalityContext) -> int:
    """Wrap every attention's q/k/v projection of ``lm`` in a :class:`ModalityLinear`; returns how many."""
    count = 0
    for module in list(lm.modules()):
        if all(isinstance(getattr(module, n, None), nn.Linear) for n in QKV_NAMES):
            for n in QKV_NAMES:
                setattr(module, n, ModalityLinear(getattr(module, n), context))
            count += 1
    if count == 0:
        raise ValueError(f"{type(lm).__name__} has no attention with q_proj/k_proj/v_proj Linear layers")
    return count


def visual_block_mask(modality_ids: torch.Tensor, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive mask [B, 1, T, T] (0 keep, finfo.min drop): query q sees key k when k <= q (causal) or
    both are visual tokens (bidirectional block), and k is not padding. A padding query sees itself
    only, so no row is empty."""
    B, T = modality_ids.shape
    causal = torch.ones(T, T, dtype=torch.bool, device=modality_ids.device).tril()
    visual = modality_ids == 1
    allowed = causal | (visual[:, :, None] & visual[:, None, :])
    allowed = allowed & attention_mask.bool()[:, None, :]
    allowed = allowed | torch.eye(T, dtype=torch.bool, device=modality_ids.device)
    mask = torch.zeros(B, T, T, dtype=dtype, device=modality_ids.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)
