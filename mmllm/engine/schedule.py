"""Learning-rate schedules: transformers' ``get_*_schedule_with_warmup``, as multipliers of each
param group's own LR (so per-module LR ratios — METER's fusion/head multipliers, the paper's
adapter multiplier — hold).

``run.lr_sched`` names the shape (LAVIS's names accepted), ``run.warmup_steps``/``warmup_ratio``
the linear warm-up, ``run.min_lr``/``min_lr_ratio`` the floor the decay ends at (as a fraction of
each group's peak) and ``run.warmup_lr`` where warm-up starts (LAVIS's ``warmup_lr``; default 0).
Step ``s`` (0-based optimizer steps) during warm-up runs at ``start + (1 - start) * s / warmup``
of the peak, the transformers convention (the first step at ``warmup_lr``).

* ``cosine``: :func:`transformers.get_cosine_with_min_lr_schedule_with_warmup` (SGDR's half
  cosine, Loshchilov & Hutter 2017) down to the floor.
* ``linear``: :func:`transformers.get_linear_schedule_with_warmup`, or with a floor
  :func:`transformers.get_polynomial_decay_schedule_with_warmup` at power 1 (linear to the floor).
* ``constant``: :func:`transformers.get_constant_schedule_with_warmup`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR

from ..errors import ConfigError


def _cosine(optimizer, warmup: int, total: int, min_ratio: float) -> LambdaLR:
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    return get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, total, min_lr_rate=min_ratio)


def _linear(optimizer, warmup: int, total: int, min_ratio: float) -> LambdaLR:
    from transformers import get_linear_schedule_with_warmup, get_polynomial_decay_schedule_with_warmup

    if min_ratio <= 0:
        return get_linear_schedule_with_warmup(optimizer, warmup, total)
    if min_ratio >= 1:  # the floor is the peak
        return _constant(optimizer, warmup, total, min_ratio)
    # power-1 polynomial decay from the optimizer's default LR to lr_end; as a multiplier that is
    # linear from 1 to lr_end / lr for every group, so the floor is min_ratio of each group's peak
    return get_polynomial_decay_schedule_with_warmup(
        optimizer, warmup, total, lr_end=min_ratio * optimizer.defaults["lr"], power=1.0
    )


def _constant(optimizer, warmup: int, total: int, min_ratio: float) -> LambdaLR:
    from transformers import get_constant_schedule_with_warmup

    return get_constant_schedule_with_warmup(optimizer, warmup)


Builder = Callable[[torch.optim.Optimizer, int, int, float], LambdaLR]
SCHEDULES: dict[str, Builder] = {
    "cosine": _cosine,
    "linear": _linear,
    "constant": _constant,
    # LAVIS's scheduler names, so one task config runs under LAVIS's runner and ours
    "linear_warmup_cosine_lr": _cosine,
    "constant_lr": _constant,
}


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    total_steps: int,
    warmup_steps: int,
    min_ratio: float = 0.0,
    warmup_start: float = 0.0,
) -> LambdaLR:
    """The ``name`` schedule over ``total_steps`` optimizer steps; ``warmup_start`` is the warm-up's
    first multiplier (LAVIS's ``warmup_lr / init_lr``)."""
    if name not in SCHEDULES:
        raise ConfigError(f"run.lr_sched {name!r}: choose one of {sorted(SCHEDULES)}")
    if not 0 <= min_ratio <= 1:
        raise ConfigError(f"run.min_lr must lie between 0 and run.init_lr (as a ratio: {min_ratio})")
    if not 0 <= warmup_start <= 1:
        raise ConfigError(f"run.warmup_lr must lie between 0 and run.init_lr (as a ratio: {warmup_start})")
    total_steps = max(1, total_steps)
    warmup_steps = min(warmup_steps, total_steps)
    scheduler = SCHEDULES[name](optimizer, warmup_steps, total_steps, min_ratio)
    if warmup_start > 0 and warmup_steps > 0:
        shapes = list(scheduler.lr_lambdas)

        def starting_at(shape):
            def factor(step: int) -> float:
                value = shape(step)
                return warmup_start + (1 - warmup_start) * value if step < warmup_steps else value

            return factor

        scheduler = LambdaLR(optimizer, [starting_at(f) for f in shapes])
    return scheduler
