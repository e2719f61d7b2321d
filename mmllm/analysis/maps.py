"""Per-token activation maps and their agreement with a foreground mask.

Pang et al. (ICLR 2024, §6, "information filtering hypothesis") visualise, for the tokens of one image,
how strongly each token stands out from the others — by magnitude (the L2 norm of the token minus the
mean token) and by frequency (the phase of its FFT over the feature dimension, compared with the mean
phase) — before and after the frozen block, beside the [CLS] token's attention in the last attention
block (:mod:`.attention`), and score the maps as pseudo-masks against ground-truth
foregrounds (best IoU over thresholds, averaged over images).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import DataError

THRESHOLDS = tuple(round(0.1 * k, 1) for k in range(1, 10))


def _minmax(values: torch.Tensor) -> torch.Tensor:
    """Scaled to [0, 1]; a constant map (no token stands out) is all zeros, never NaN."""
    low, high = values.min(), values.max()
    if not torch.isfinite(values).all():
        raise DataError("activation map holds NaN or inf")
    span = high - low
    return torch.zeros_like(values) if span <= 0 else (values - low) / span


def _tokens(tokens: torch.Tensor) -> torch.Tensor:
    if tokens.dim() != 2 or tokens.shape[0] == 0:
        raise DataError(f"expected tokens [N, D] of one image, got shape {tuple(tokens.shape)}")
    return tokens.detach().double()


def magnitude_map(tokens: torch.Tensor) -> torch.Tensor:
    """[N]: ‖x_i − mean_j x_j‖₂, min–max normalised over the image's tokens."""
    x = _tokens(tokens)
    return _minmax((x - x.mean(dim=0, keepdim=True)).norm(dim=-1)).float()


def frequency_map(tokens: torch.Tensor) -> torch.Tensor:
    """[N]: the angle of ``torch.fft.fft`` over the feature dimension, each token's L2 distance to the mean
    angle vector, min–max normalised."""
    angle = torch.angle(torch.fft.fft(_tokens(tokens), dim=-1))
    return _minmax((angle - angle.mean(dim=0, keepdim=True)).norm(dim=-1)).float()


def attention_map(weights: torch.Tensor) -> torch.Tensor:
    """[N]: one token's attention probabilities over the N patch tokens (the CLS row), min–max normalised
    like the magnitude and frequency maps, so that the same thresholds make its pseudo-masks."""
    if weights.dim() != 1 or weights.shape[0] == 0:
        raise DataError(f"expected one attention row [N], got shape {tuple(weights.shape)}")
    return _minmax(weights.detach().double()).float()


def iou(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Intersection over union of two boolean masks of one shape (two empty masks: 1)."""
    if pred.shape != target.shape:
        raise DataError(f"mask shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    pred, target = pred.bool(), target.bool()
    union = (pred | target).sum().item()
    return 1.0 if union == 0 else (pred & target).sum().item() / union


def best_iou(
    token_map: torch.Tensor, target: torch.Tensor, thresholds: Sequence[float] = THRESHOLDS, mode: str = "nearest"
) -> tuple[float, float]:
    """(best IoU, its threshold): the [h, w] token map upsampled to the [H, W] mask (``nearest`` keeps each
    patch's value on its pixels; ``bilinear`` smooths across patches), thresholded at each value."""
    if token_map.dim() != 2 or target.dim() != 2:
        raise DataError(
            f"expected a [h, w] map and an [H, W] mask, got {tuple(token_map.shape)}, {tuple(target.shape)}"
        )
    up = F.interpolate(
        token_map[None, None].float(),
        size=tuple(target.shape),
        mode=mode,
        **({} if mode == "nearest" else {"align_corners": False}),
    )[0, 0]
    scores = [(iou(up >= t, target), t) for t in thresholds]
    return max(scores, key=lambda s: (s[0], -s[1]))


def _upsample(token_map: torch.Tensor, target: torch.Tensor, mode: str) -> torch.Tensor:
    if token_map.dim() != 2 or target.dim() != 2:
        raise DataError(
            f"expected a [h, w] map and an [H, W] mask, got {tuple(token_map.shape)}, {tuple(target.shape)}"
        )
    return F.interpolate(
        token_map[None, None].float(),
        size=tuple(target.shape),
        mode=mode,
        **({} if mode == "nearest" else {"align_corners": False}),
    )[0, 0]


def held_out_threshold(
    maps: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    thresholds: Sequence[float] = THRESHOLDS,
    mode: str = "nearest",
) -> tuple[float, float]:
    """(threshold, its mIoU on these images): the ONE threshold whose mean IoU over the held-out images is
    highest (ties: the lowest threshold), to be applied unchanged to the evaluated images
    (:func:`fixed_threshold_miou`). Unlike each image's own best threshold (:func:`best_iou`), this does not
    look at the evaluated masks."""
    if len(maps) == 0 or len(maps) != len(masks):
        raise DataError(f"need as many held-out maps as masks, at least one (got {len(maps)}, {len(masks)})")
    ups = [_upsample(m, t, mode) for m, t in zip(maps, masks)]
    scores = [(mean_iou([iou(u >= t, m) for u, m in zip(ups, masks)]), t) for t in thresholds]
    score, threshold = max(scores, key=lambda s: (s[0], -s[1]))
    return threshold, score


def fixed_threshold_miou(
    maps: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], threshold: float, mode: str = "nearest"
) -> float:
    """mIoU of the maps' pseudo-masks at one given threshold (chosen elsewhere, e.g. on held-out images)."""
    if len(maps) != len(masks):
        raise DataError(f"{len(maps)} maps for {len(masks)} masks")
    return mean_iou([iou(_upsample(m, t, mode) >= threshold, t) for m, t in zip(maps, masks)])


def mean_iou(values: Sequence[float]) -> float:
    """mIoU over a set of images (the mean of their best IoUs)."""
    if not values:
        raise DataError("no image to average")
    return float(sum(values) / len(values))
