"""VectorNet-style motion forecaster with the frozen LLM block on its polyline tokens.

    agent vectors --sub-graph--> agent polyline tokens --+
                                                          +-- global interaction graph (transformer)
    lane vectors  --sub-graph--> lane polyline tokens  --+        --> frozen LLM block (padding mask)
                                                                   --> focal-agent token
                                                                   --> K trajectories + K scores

* Polyline sub-graph (Gao et al., *VectorNet*, CVPR 2020, Sec. 3.2, Eq. 1-2): per layer a
  vector encoder (Linear, LayerNorm, ReLU), max-pool over the polyline's vectors and
  concatenation; after the last layer one max-pool gives the polyline's token. Padded
  vectors never win a max.
* Global interaction graph (Sec. 3.3): self-attention over all polyline tokens, here
  ``torch.nn.TransformerEncoder`` layers with a key padding mask for padded polylines.
* The frozen LLM block (Pang et al., ICLR 2024) on those tokens, with the same padding mask.
* Decoder: an MLP on the focal agent's token (polyline 0), then one linear regressor per mode
  (T (x, y) points each, as LaneGCN's per-mode heads: distinct from the start, so
  winner-takes-all does not collapse them) and one score per mode; these last linear layers
  run in fp32.
* Loss (:func:`forecasting_loss`): winner-takes-all — smooth L1 on the mode closest to the
  ground truth (by final-point distance by default: the mode the Argoverse metrics score;
  ``winner: ade`` picks by mean distance) — plus cross-entropy of the scores on that mode.

Coordinates arrive in fp32 (the task keeps them out of ``compute_dtype_inputs``) and are
cast to the model's dtype only here, after scaling by ``coord_scale``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmllm import build_visual_llm_layer
from mmllm.errors import ConfigError

from .data import AGENT_FEATURES, LANE_FEATURES

WINNER_RULES = ("fde", "ade")


def _masked_max(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Max over ``dim`` of the entries where ``mask`` is True; 0 where none is."""
    filled = x.masked_fill(~mask.unsqueeze(-1), torch.finfo(x.dtype).min)
    out = filled.amax(dim=dim)
    return out.masked_fill(~mask.any(dim=dim).unsqueeze(-1), 0.0)


class PolylineSubgraph(nn.Module):
    """VectorNet's polyline sub-graph: ``[B, P, V, F]`` vectors -> ``[B, P, out_dim]`` polyline tokens."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int = 3):
        super().__init__()
        if hidden % 2:
            raise ConfigError(f"model.hidden_dim must be even (half encoder, half pooled context), got {hidden}")
        dims = [in_dim] + [hidden] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(d, hidden // 2), nn.LayerNorm(hidden // 2), nn.ReLU()) for d in dims
        )
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = vectors
        for layer in self.layers:
            h = layer(x)
            pooled = _masked_max(h, mask, dim=2).unsqueeze(2).expand_as(h)
            x = torch.cat([h, pooled], dim=-1)
        return self.out(_masked_max(x, mask, dim=2))


class VectorNetForecaster(nn.Module):
    def __init__(
        self,
        hidden_dim: int = 64,
        dim: int = 128,
        subgraph_layers: int = 3,
        global_layers: int = 1,
        num_heads: int = 4,
        dropout: float = 0.0,
        num_modes: int = 6,
        pred_len: int = 30,
        coord_scale: float = 10.0,
        llm_block: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        if num_modes < 1 or pred_len < 1:
            raise ConfigError(f"num_modes and pred_len must be >= 1, got {num_modes}, {pred_len}")
        if dim % num_heads:
            raise ConfigError(f"model.dim ({dim}) must be divisible by model.num_heads ({num_heads})")
        self.num_modes, self.pred_len, self.coord_scale = num_modes, pred_len, float(coord_scale)
        self.agent_subgraph = PolylineSubgraph(AGENT_FEATURES, hidden_dim, dim, subgraph_layers)
        self.lane_subgraph = PolylineSubgraph(LANE_FEATURES, hidden_dim, dim, subgraph_layers)
        self.type_embed = nn.Parameter(torch.zeros(2, dim))  # agent / lane polyline
        layer = nn.TransformerEncoderLayer(
            dim, num_heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True, norm_first=True
        )
        self.global_graph = nn.TransformerEncoder(
            layer, global_layers, norm=nn.LayerNorm(dim), enable_nested_tensor=False
        )
        self.llm_block = build_visual_llm_layer(llm_block, dim)
        self.decoder = nn.Sequential(
            nn.Linear(dim, 2 * dim),
            nn.LayerNorm(2 * dim),
            nn.ReLU(),
            nn.Linear(2 * dim, 2 * dim),
            nn.LayerNorm(2 * dim),
            nn.ReLU(),
        )
        self.traj_head = nn.Linear(2 * dim, num_modes * pred_len * 2)  # one regressor per mode
        self.score_head = nn.Linear(2 * dim, num_modes)

    @property
    def dtype(self) -> torch.dtype:
        return self.type_embed.dtype

    def _scale(self, vectors: torch.Tensor, coords: int = 4) -> torch.Tensor:
        """Coordinates (the first ``coords`` features) in units of ``coord_scale`` m, in the model's dtype."""
        x = vectors.float().clone()
        x[..., :coords] = x[..., :coords] / self.coord_scale
        return x.to(self.dtype)

    def encode(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Polyline tokens after the global graph and the block, and their padding mask (True = pad)."""
        agent_mask = batch["agent_vector_mask"]
        lane_mask = batch["lane_vector_mask"]
        agents = self.agent_subgraph(self._scale(batch["agent_vectors"]), agent_mask) + self.type_embed[0]
        lanes = self.lane_subgraph(self._scale(batch["lane_vectors"]), lane_mask) + self.type_embed[1]
        tokens = torch.cat([agents, lanes], dim=1)
        pad = ~torch.cat([agent_mask.any(-1), lane_mask.any(-1)], dim=1)
        pad[:, 0] = False  # the focal agent always has at least one vector
        tokens = self.global_graph(tokens, src_key_padding_mask=pad)
        tokens = self.llm_block(tokens, padding_mask=pad)
        return tokens, pad

    def forward(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(trajectories [B, K, T, 2] fp32 metres in the agent frame, scores [B, K] fp32 logits)``."""
        tokens, _ = self.encode(batch)
        h = self.decoder(tokens[:, 0].to(self.dtype)).float()  # the focal agent's token
        traj = F.linear(h, self.traj_head.weight.float(), self.traj_head.bias.float())
        scores = F.linear(h, self.score_head.weight.float(), self.score_head.bias.float())
        return traj.view(h.shape[0], self.num_modes, self.pred_len, 2) * self.coord_scale, scores


def forecasting_loss(
    traj: torch.Tensor,
    scores: torch.Tensor,
    target: torch.Tensor,
    winner: str = "fde",
    cls_weight: float = 1.0,
    beta: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Winner-takes-all smooth-L1 regression + cross-entropy on the winning mode (all in fp32).

    The winner is the mode whose final point is closest to the ground truth (``fde``, the mode
    Argoverse's minFDE/minADE/MR score) or whose mean distance is smallest (``ade``).
    """
    if winner not in WINNER_RULES:
        raise ConfigError(f"model.winner must be one of {WINNER_RULES}, got {winner!r}")
    traj, scores, target = traj.float(), scores.float(), target.float()
    with torch.no_grad():
        dist = (traj - target[:, None]).norm(dim=-1)  # [B, K, T]
        best = (dist[..., -1] if winner == "fde" else dist.mean(-1)).argmin(dim=1)
    chosen = traj[torch.arange(len(traj), device=traj.device), best]
    reg = F.smooth_l1_loss(chosen, target, beta=beta)
    cls = F.cross_entropy(scores, best)
    loss = reg + cls_weight * cls
    return loss, {"reg_loss": float(reg.detach()), "cls_loss": float(cls.detach())}


def create_vectornet_model(options: Mapping[str, Any], pred_len: int = 30) -> VectorNetForecaster:
    """Factory from the ``model`` section (see :class:`vision.motion.task.MotionModelOptions`)."""
    keys = (
        "hidden_dim",
        "dim",
        "subgraph_layers",
        "global_layers",
        "num_heads",
        "dropout",
        "num_modes",
        "coord_scale",
        "llm_block",
    )
    return VectorNetForecaster(pred_len=pred_len, **{k: options[k] for k in keys if k in options})
