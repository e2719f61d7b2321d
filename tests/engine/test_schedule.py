"""LR schedules (transformers' get_*_schedule_with_warmup behind our run keys) against hand-computed LRs,
with two param groups so per-group LR multipliers must survive."""

import math

import pytest
import torch

from mmllm.engine.run_config import RunConfig
from mmllm.engine.schedule import build_scheduler
from mmllm.engine.trainer import schedule_settings
from mmllm.errors import ConfigError

PEAK, TOTAL, WARMUP = 1e-3, 10, 4


def lrs(name, steps=TOTAL, **kw):
    """LR of both groups at steps 0..steps-1 (group 2 at 2x the peak, like an adapter multiplier)."""
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [a], "lr": PEAK}, {"params": [b], "lr": 2 * PEAK}], lr=PEAK)
    sched = build_scheduler(opt, name, TOTAL, WARMUP, **kw)
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def check(got, expected_factor):
    for step, (g1, g2) in enumerate(got):
        f = expected_factor(step)
        assert g1 == pytest.approx(PEAK * f, rel=1e-9, abs=1e-15), step
        assert g2 == pytest.approx(2 * PEAK * f, rel=1e-9, abs=1e-15), step


def test_cosine_with_floor():
    # warm-up s/4; then floor + (1 - floor) * (1 + cos(pi * (s - 4) / 6)) / 2, floor = 0.1
    check(
        lrs("cosine", min_ratio=0.1),
        lambda s: s / 4 if s < 4 else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 4) / 6)),
    )
    assert lrs("linear_warmup_cosine_lr") == lrs("cosine")  # LAVIS's name, the same schedule


def test_linear_to_zero_and_to_a_floor():
    check(lrs("linear"), lambda s: s / 4 if s < 4 else (10 - s) / 6)
    check(lrs("linear", min_ratio=0.25), lambda s: s / 4 if s < 4 else 0.25 + 0.75 * (10 - s) / 6)


def test_constant_with_warmup():
    check(lrs("constant"), lambda s: s / 4 if s < 4 else 1.0)


def test_warmup_lr_is_where_warmup_starts():
    # LAVIS: warmup_lr + (init_lr - warmup_lr) * s / warmup_steps
    start = 1e-4 / PEAK
    check(
        lrs("cosine", warmup_start=start),
        lambda s: start + (1 - start) * s / 4 if s < 4 else 0.5 * (1 + math.cos(math.pi * (s - 4) / 6)),
    )


def test_run_keys_map_to_the_schedule():
    run = RunConfig.parse(
        {"task": "t", "output_dir": "o", "init_lr": 2e-3, "min_lr": 5e-4, "warmup_lr": 1e-4, "warmup_ratio": 0.2}, "run"
    )
    assert schedule_settings(run, 50) == (10, 0.25, 0.05)
    run = RunConfig.parse({"task": "t", "output_dir": "o", "warmup_steps": 3, "min_lr_ratio": 0.1}, "run")
    assert schedule_settings(run, 50) == (3, 0.1, 0.0)


def test_bad_values_are_refused():
    with pytest.raises(ConfigError, match="lr_sched"):
        lrs("step")
    with pytest.raises(ConfigError, match="warmup_lr"):
        lrs("cosine", warmup_start=2.0)
