"""Learning-rate schedules as multipliers of each param group's own LR (so per-module
LR ratios — METER's fusion/head multipliers, the paper's adapter multiplier — hold)."""
from __future__ import annotations

import math
from collections.abc import Callable


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    """Linear warm-up from 0, then cosine decay to ``min_ratio`` (Loshchilov & Hutter, SGDR, 2017)."""
    total_steps = max(1, total_steps)

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def warmup_linear(total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    """Linear warm-up then linear decay (METER's schedule)."""
    total_steps = max(1, total_steps)

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * (1 - progress)

    return factor


SCHEDULES = {"cosine": warmup_cosine, "linear": warmup_linear, "constant": lambda total, warmup, m=0.0: (lambda s: 1.0)}
# LAVIS's scheduler names, so one task config runs under LAVIS's runner and ours
SCHEDULES["linear_warmup_cosine_lr"] = warmup_cosine
SCHEDULES["constant_lr"] = SCHEDULES["constant"]
