"""SQA3D's baseline fusion (Ma et al., ICLR 2023; github.com/SilongYong/SQA3D, ``ScanQA/models/sqa_module.py``
and the MCAN modules it uses, after Yu et al., CVPR 2019), with the frozen LLM block on the fused scene tokens.

Structure, as the official module arranges it (written here from the paper and that module's layout):

* separate situation and question encoders (here two MiniLM-L6 text encoders, each projected to ``hidden``; the
  release runs one GloVe + LSTM encoder over both texts and separates the streams from the SA layers on);
* scene tokens (here the Point-BERT group tokens of :class:`.model.PointSceneEncoder`, projected to ``hidden``;
  the official baseline uses VoteNet object proposals);
* MCAN fusion: self-attention layers (SA) on the situation and on the question; the scene tokens are
  then decoded by self-attention + guided-attention layers (SGA), first guided by the situation, then by
  the question;
* the frozen LLM block (``mmllm.build_visual_llm_layer``) on the fused scene tokens;
* MCAN's attentional flattening (AttFlat) of situation, question and scene to one vector each, and the
  answer classifier on their concatenation ``[s, q, o]``;
* SQA3D's auxiliary situation head: position (3) and orientation quaternion (4) regressed from ``[s, o]``
  (situation and scene, as the release's ``aux_reg``), trained with MSE (:func:`.model.situation_loss`); on in
  ``configs/3dvqa/scenes_sqa3d_smollm2.yaml`` (the option's default is off, as in the release's ``train.py``).

MCAN's layers are post-norm: ``x = LayerNorm(x + Dropout(sublayer(x)))``; its multi-head attention has
separate q/k/v/merge linear maps with biases, and its FFN is ``Linear(h, ff) -> GELU -> Dropout -> Linear(ff, h)``
(SQA3D's variant of MCAN uses GELU; its LayerNorm has eps 1e-6 and divides by the unbiased std, ours is
``nn.LayerNorm``: same parameter count). The text and scene features enter through ``Linear -> GELU`` projections
(the official module shares one projection between situation and question; here each encoder has its own).
Answer head ``Linear(3 flat, h) -> GELU -> Dropout -> Linear(h, answers)`` on ``[s, q, o]``; the situation head
``Linear(2 flat, h) -> GELU -> Dropout(0.1) -> Linear(h, 7)`` on ``[s, o]``, as the official ``aux_reg``.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from mmllm.blocks import build_visual_llm_layer
from mmllm.errors import ConfigError
from mmllm.models.encoders import build_text_encoder
from mmllm.schema import Section


class SQA3DFusionOptions(Section):
    """``model.sqa3d``: the MCAN fusion of SQA3D's baseline."""

    layers: int = Field(2, ge=1, description="SA layers per text stream and SGA layers per guidance")
    ff_size: int = Field(1024, gt=0, description="MCAN FFN width (official: 4 * hidden)")
    flat_mlp: int = Field(256, gt=0, description="AttFlat MLP width")
    flat_glimpses: int = Field(1, gt=0, description="AttFlat glimpses")
    flat_out: int = Field(512, gt=0, description="AttFlat output width (the release's train.py: 512 at hidden 256)")
    answer_dropout: float = Field(0.3, ge=0, lt=1, description="dropout in the answer head (official: 0.3)")


class MHAtt(nn.Module):
    """MCAN multi-head attention: linear q, k, v, merge (all with bias); mask True = padding."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        if hidden % heads:
            raise ConfigError(f"model.hidden_size ({hidden}) must be divisible by model.num_heads ({heads})")
        self.heads = heads
        self.linear_v = nn.Linear(hidden, hidden)
        self.linear_k = nn.Linear(hidden, hidden)
        self.linear_q = nn.Linear(hidden, hidden)
        self.linear_merge = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, v, k, q, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, h = q.shape
        d = h // self.heads

        def split(x):
            return x.view(b, -1, self.heads, d).transpose(1, 2)

        q_, k_, v_ = split(self.linear_q(q)), split(self.linear_k(k)), split(self.linear_v(v))
        scores = q_ @ k_.transpose(-1, -2) / d**0.5
        if mask is not None:
            scores = scores.masked_fill(mask[:, None, None, :], torch.finfo(scores.dtype).min)
        att = self.dropout(scores.softmax(-1))
        return self.linear_merge((att @ v_).transpose(1, 2).reshape(b, n, h))


class FFN(nn.Module):
    def __init__(self, hidden: int, ff: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(hidden, ff)
        self.out = nn.Linear(ff, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.out(self.dropout(F.gelu(self.fc(x))))


class SA(nn.Module):
    """MCAN self-attention layer (post-norm)."""

    def __init__(self, hidden: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.mhatt = MHAtt(hidden, heads, dropout)
        self.ffn = FFN(hidden, ff, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, mask):
        x = self.norm1(x + self.dropout(self.mhatt(x, x, x, mask)))
        return self.norm2(x + self.dropout(self.ffn(x)))


class SGA(nn.Module):
    """MCAN self + guided attention layer (post-norm): x attends to itself, then to y."""

    def __init__(self, hidden: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.mhatt1 = MHAtt(hidden, heads, dropout)
        self.mhatt2 = MHAtt(hidden, heads, dropout)
        self.ffn = FFN(hidden, ff, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(hidden), nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, y, x_mask, y_mask):
        x = self.norm1(x + self.dropout(self.mhatt1(x, x, x, x_mask)))
        x = self.norm2(x + self.dropout(self.mhatt2(y, y, x, y_mask)))
        return self.norm3(x + self.dropout(self.ffn(x)))


class AttFlat(nn.Module):
    """MCAN attentional flattening: MLP(h -> flat_mlp -> glimpses) scores, softmax over tokens, merge."""

    def __init__(self, hidden: int, flat_mlp: int, glimpses: int, out: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(hidden, flat_mlp)
        self.score = nn.Linear(flat_mlp, glimpses)
        self.dropout = nn.Dropout(dropout)
        self.linear_merge = nn.Linear(hidden * glimpses, out)

    def forward(self, x, mask):
        att = self.score(self.dropout(F.gelu(self.fc(x))))  # [B, N, G]
        if mask is not None:
            att = att.masked_fill(mask[:, :, None], torch.finfo(att.dtype).min)
        att = att.softmax(1)
        pooled = torch.einsum("bng,bnh->bgh", att, x).flatten(1)
        return self.linear_merge(pooled)


class SQA3DFusion(nn.Module):
    """SA on situation and question; SGA on the scene tokens guided by the situation, then the question."""

    def __init__(self, hidden: int, heads: int, layers: int, ff: int, dropout: float):
        super().__init__()
        self.situation_sa = nn.ModuleList(SA(hidden, heads, ff, dropout) for _ in range(layers))
        self.question_sa = nn.ModuleList(SA(hidden, heads, ff, dropout) for _ in range(layers))
        self.scene_by_situation = nn.ModuleList(SGA(hidden, heads, ff, dropout) for _ in range(layers))
        self.scene_by_question = nn.ModuleList(SGA(hidden, heads, ff, dropout) for _ in range(layers))

    def forward(self, s, s_mask, q, q_mask, o, o_mask=None):
        for layer in self.situation_sa:
            s = layer(s, s_mask)
        for layer in self.question_sa:
            q = layer(q, q_mask)
        for layer in self.scene_by_situation:
            o = layer(o, s, o_mask, s_mask)
        for layer in self.scene_by_question:
            o = layer(o, q, o_mask, q_mask)
        return s, q, o


class SQA3DModel(nn.Module):
    """Points + situation tokens + question tokens -> (answer logits [B, A], pose [B, 7] or None)."""

    uses_separate_text = True

    def __init__(self, scene: nn.Module, options: Any, num_answers: int):
        super().__init__()
        h, fo = options.hidden_size, options.sqa3d
        self.scene = scene
        situation_encoder, question_encoder = build_text_encoder(options.text), build_text_encoder(options.text)
        self.situation_encoder, self.question_encoder = situation_encoder, question_encoder
        w_o, w_s, w_q = (int(getattr(m, "width")) for m in (scene, situation_encoder, question_encoder))  # noqa: B009
        self.scene_proj = nn.Sequential(nn.Linear(w_o, h), nn.GELU())
        self.situation_proj = nn.Sequential(nn.Linear(w_s, h), nn.GELU())
        self.question_proj = nn.Sequential(nn.Linear(w_q, h), nn.GELU())
        self.fusion = SQA3DFusion(h, options.num_heads, fo.layers, fo.ff_size, options.dropout)
        block_cfg = dict(options.llm_block or {"kind": "none"})
        on = options.llm_block_on if block_cfg.get("kind", "llm_block") != "none" else "none"
        if on not in ("vision", "none"):
            raise ConfigError(
                "model.arch_variant=sqa3d puts the block on the fused scene tokens: "
                f"model.llm_block_on must be 'vision' or 'none', got {options.llm_block_on!r}"
            )
        self.llm_block = build_visual_llm_layer(block_cfg, h) if on == "vision" else None
        flat = fo.flat_out
        self.flat_s = AttFlat(h, fo.flat_mlp, fo.flat_glimpses, flat, options.dropout)
        self.flat_q = AttFlat(h, fo.flat_mlp, fo.flat_glimpses, flat, options.dropout)
        self.flat_o = AttFlat(h, fo.flat_mlp, fo.flat_glimpses, flat, options.dropout)
        self.answer_head = nn.Sequential(
            nn.Linear(3 * flat, h), nn.GELU(), nn.Dropout(fo.answer_dropout), nn.Linear(h, num_answers)
        )
        self.situation_head = (
            nn.Sequential(nn.Linear(2 * flat, h), nn.GELU(), nn.Dropout(0.1), nn.Linear(h, 7))
            if options.situation_loss
            else None
        )

    def forward(self, points, situation_ids, situation_mask, question_ids, question_mask):
        o = self.scene_proj(self.scene(points))
        s = self.situation_proj(self.situation_encoder(situation_ids, situation_mask))
        q = self.question_proj(self.question_encoder(question_ids, question_mask))
        s_pad, q_pad = situation_mask == 0, question_mask == 0
        s, q, o = self.fusion(s, s_pad, q, q_pad, o)
        if self.llm_block is not None:
            o = self.llm_block(o, None)
        s_flat, q_flat, o_flat = self.flat_s(s, s_pad), self.flat_q(q, q_pad), self.flat_o(o, None)
        pose = self.situation_head(torch.cat([s_flat, o_flat], -1)) if self.situation_head is not None else None
        return self.answer_head(torch.cat([s_flat, q_flat, o_flat], -1)), pose
