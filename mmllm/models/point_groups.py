"""Point-cloud tokenisation shared by the point-cloud classifier and the 3D VQA scene encoder.

Point-BERT (Yu et al., CVPR 2022, §3.1) turns a cloud into tokens: farthest point sampling (FPS)
picks ``G`` centres, each centre's ``k`` nearest neighbours form a (possibly overlapping) group,
the group is translated to its centre and a mini-PointNet (Qi et al., CVPR 2017: shared per-point
MLP + max pooling) embeds it; a small MLP on the centre gives the position embedding.

Everything here is plain vectorised torch (no compiled extension, so it runs on CPU and GPU alike):

* :func:`farthest_point_sample`: O(B·N·k) time, one ``[B, N]`` distance buffer of memory.
* :func:`knn_indices`: O(B·G·N) time and memory (``torch.cdist`` then ``topk``).

Coordinates stay fp32 throughout the grouping (bf16 has 8 mantissa bits: a 1 m scene would be
quantised to ~4 mm and neighbour order would flip); the grouped, centred values are cast to the
model dtype only when they enter the mini-PointNet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError

__all__ = [
    "FP32BatchNorm1d",
    "farthest_point_sample",
    "knn_indices",
    "gather_points",
    "min_points_required",
    "PointGroupTokenizer",
    "PointPositionEmbed",
]


def _check_xyz(xyz: torch.Tensor, name: str = "xyz") -> None:
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise DataError(f"{name} must have shape [B, N, 3], got {list(xyz.shape)}")


@torch.no_grad()
def farthest_point_sample(xyz: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[B, k]`` (long) of ``k`` points chosen by iterative farthest point sampling.

    Starts at point 0 of every cloud (as the reference PointNet++ CUDA kernel that Point-BERT uses,
    so the result is deterministic); each next point is the one whose squared distance to the
    already chosen set is largest, ties going to the lowest index (``torch.argmax``).
    Time O(B·N·k), memory O(B·N) (the running min-distance buffer).
    """
    _check_xyz(xyz)
    batch, n, _ = xyz.shape
    if not 0 < k <= n:
        raise DataError(f"farthest_point_sample: cannot pick {k} points from a cloud of {n} points")
    xyz = xyz.float()
    rows = torch.arange(batch, device=xyz.device)
    chosen = torch.empty(batch, k, dtype=torch.long, device=xyz.device)
    min_dist = torch.full((batch, n), float("inf"), device=xyz.device)
    farthest = torch.zeros(batch, dtype=torch.long, device=xyz.device)
    for i in range(k):
        chosen[:, i] = farthest
        centre = xyz[rows, farthest].unsqueeze(1)  # [B, 1, 3]
        min_dist = torch.minimum(min_dist, ((xyz - centre) ** 2).sum(-1))
        farthest = min_dist.argmax(-1)
    return chosen


@torch.no_grad()
def knn_indices(xyz: torch.Tensor, centers: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[B, G, k]`` of the ``k`` points of ``xyz`` nearest to each centre, nearest first.

    O(B·G·N) time and memory: the full centre-to-point distance matrix (``torch.cdist`` computed
    directly, not through the matmul expansion, so near-ties are ordered exactly), then ``topk``.
    """
    _check_xyz(xyz)
    _check_xyz(centers, "centers")
    n = xyz.shape[1]
    if not 0 < k <= n:
        raise DataError(f"knn_indices: cannot take {k} neighbours in a cloud of {n} points")
    dist = torch.cdist(centers.float(), xyz.float(), compute_mode="donot_use_mm_for_euclid_dist")
    return dist.topk(k, dim=-1, largest=False, sorted=True).indices


def gather_points(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[b, idx[b, ...]]`` for every batch row: ``x`` [B, N, C], ``idx`` [B, ...] -> [B, ..., C]."""
    if x.dim() != 3:
        raise DataError(f"gather_points: x must have shape [B, N, C], got {list(x.shape)}")
    if idx.shape[0] != x.shape[0]:
        raise DataError(f"gather_points: batch sizes differ (x {x.shape[0]}, idx {idx.shape[0]})")
    flat = idx.reshape(idx.shape[0], -1, 1).expand(-1, -1, x.shape[-1])
    return torch.gather(x, 1, flat).reshape(*idx.shape, x.shape[-1])


def min_points_required(num_groups: int, group_size: int) -> int:
    """Fewest points a cloud needs: ``max(num_groups, group_size)``.

    Point-BERT's kNN groups overlap (64 groups × 32 points from a 1024-point cloud), so a cloud
    does not need ``num_groups * group_size`` points: FPS needs ``num_groups`` distinct points and
    each kNN group ``group_size`` neighbours.
    """
    return max(num_groups, group_size)


class FP32BatchNorm1d(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` that normalises in fp32 and returns the input's dtype.

    DeepSpeed's bf16 casts parameters but not buffers (:func:`mmllm.precision.cast_parameters`), so a plain
    BatchNorm ends with a bf16 weight and fp32 running statistics, a mix torch's CPU ``batch_norm`` refuses
    ("expected scalar type BFloat16 but found Float"): every point-cloud model failed at its first step in
    bf16. Mixed precision keeps normalisation statistics in fp32 anyway (``torch.autocast`` runs batch_norm
    in fp32), so here the statistics stay fp32 even under ``.to(torch.bfloat16)``. Same parameters and
    state-dict keys as ``nn.BatchNorm1d``; the training/eval logic follows ``torch.nn.modules.batchnorm._BatchNorm.forward``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        keep = not self.training or self.track_running_stats
        out = F.batch_norm(
            x.float(),
            self.running_mean if keep else None,
            self.running_var if keep else None,
            None if self.weight is None else self.weight.float(),
            None if self.bias is None else self.bias.float(),
            batch_stats,
            momentum,
            self.eps,
        )
        return out.to(x.dtype)

    def _apply(self, fn, recurse=True):  # .to()/.half()/.bfloat16() cast the weights, never the statistics
        super()._apply(fn, recurse)
        for name in ("running_mean", "running_var"):
            stat = getattr(self, name)
            if stat is not None and stat.dtype != torch.float32:
                setattr(self, name, stat.float())
        return self


class PointGroupTokenizer(nn.Module):
    """Point-BERT's group tokens: FPS centres, kNN groups centred on them, a mini-PointNet per group.

    The mini-PointNet is Point-BERT's ``Encoder``: a shared per-point MLP (in→hidden/2→hidden),
    the group's max-pooled feature concatenated back to every point (2·hidden), a second shared
    MLP (2·hidden→2·hidden→dim), max-pooled over the group.
    """

    def __init__(self, num_groups: int, group_size: int, in_channels: int = 0, dim: int = 384, hidden: int = 256):
        super().__init__()
        for key, value in (("num_groups", num_groups), ("group_size", group_size), ("dim", dim), ("hidden", hidden)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DataError(f"PointGroupTokenizer: {key} must be a positive int, got {value!r}")
        if hidden % 2:
            raise DataError(f"PointGroupTokenizer: hidden must be even, got {hidden}")
        if not isinstance(in_channels, int) or in_channels < 0:
            raise DataError(f"PointGroupTokenizer: in_channels must be an int >= 0, got {in_channels!r}")
        self.num_groups, self.group_size, self.in_channels, self.dim = num_groups, group_size, in_channels, dim
        self.first = nn.Sequential(
            nn.Conv1d(3 + in_channels, hidden // 2, 1),
            FP32BatchNorm1d(hidden // 2),
            nn.ReLU(inplace=True),
            nn.Conv1d(hidden // 2, hidden, 1),
        )
        self.second = nn.Sequential(
            nn.Conv1d(2 * hidden, 2 * hidden, 1),
            FP32BatchNorm1d(2 * hidden),
            nn.ReLU(inplace=True),
            nn.Conv1d(2 * hidden, dim, 1),
        )

    @property
    def min_points(self) -> int:
        return min_points_required(self.num_groups, self.group_size)

    def group(self, xyz: torch.Tensor, features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 ``(groups [B, G, K, 3 + C], centers [B, G, 3])``; group coordinates relative to their centre."""
        _check_xyz(xyz)
        batch, n, _ = xyz.shape
        if n < self.min_points:
            raise DataError(
                f"point cloud has {n} points; {self.num_groups} groups of {self.group_size} "
                f"(overlapping kNN groups) need at least max({self.num_groups}, {self.group_size}) "
                f"= {self.min_points}"
            )
        if not torch.isfinite(xyz).all():
            bad = (~torch.isfinite(xyz)).flatten(1).any(1).nonzero().flatten().tolist()
            raise DataError(f"point coordinates contain NaN/inf (batch rows {bad})")
        channels = 0 if features is None else features.shape[-1]
        if channels != self.in_channels:
            raise DataError(f"PointGroupTokenizer was built for {self.in_channels} feature channels, got {channels}")
        if features is not None and features.shape[:2] != xyz.shape[:2]:
            raise DataError(f"features {list(features.shape)} do not match xyz {list(xyz.shape)}")
        xyz = xyz.float()
        centers = gather_points(xyz, farthest_point_sample(xyz, self.num_groups))
        idx = knn_indices(xyz, centers, self.group_size)
        groups = gather_points(xyz, idx) - centers.unsqueeze(2)
        if features is not None:
            groups = torch.cat([groups, gather_points(features.float(), idx)], dim=-1)
        return groups, centers

    def forward(self, xyz: torch.Tensor, features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``xyz`` [B, N, 3] (fp32), ``features`` [B, N, C] or None -> (tokens [B, G, dim], centers [B, G, 3] fp32)."""
        groups, centers = self.group(xyz, features)
        batch, g, k, c = groups.shape
        x = groups.to(self.first[0].weight.dtype).reshape(batch * g, k, c).transpose(1, 2)  # [BG, C, K]
        x = self.first(x)
        x = torch.cat([x.amax(-1, keepdim=True).expand(-1, -1, k), x], dim=1)
        x = self.second(x).amax(-1)
        return x.reshape(batch, g, self.dim), centers


class PointPositionEmbed(nn.Module):
    """Position embedding of group centres (Point-BERT: Linear(3, 128) → GELU → Linear(128, dim))."""

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, centers: torch.Tensor) -> torch.Tensor:
        """``centers`` [..., 3] (any float dtype) -> [..., dim] in the module's dtype."""
        return self.mlp(centers.to(self.mlp[0].weight.dtype))
