"""The information-filtering analysis of Pang et al. (ICLR 2024, §6): which tokens the frozen block amplifies."""

from .maps import (
    attention_map,
    best_iou,
    fixed_threshold_miou,
    frequency_map,
    held_out_threshold,
    iou,
    magnitude_map,
    mean_iou,
)

__all__ = [
    "attention_map",
    "best_iou",
    "fixed_threshold_miou",
    "frequency_map",
    "held_out_threshold",
    "iou",
    "magnitude_map",
    "mean_iou",
]
