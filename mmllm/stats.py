"""Seed statistics for the leaderboard: mean ± sample standard deviation, and the paired difference to a
baseline with a Student-t 95% interval.

Why paired: runs of two variants with the same seed share data order and initialisation of the shared
parts, so the per-seed differences vary less than either arm; the interval is the one-sample t-interval
of those differences, mean ± t(1 − α/2, n − 1) · sd / √n, over the seeds present in both arms.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from .errors import DataError

# two-sided 95% Student-t quantiles t(0.975, df), df = 1..30 (used when scipy is absent)
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t_quantile(df: int, confidence: float = 0.95) -> float:
    """Two-sided Student-t quantile t(1 − (1 − confidence)/2, df)."""
    if df < 1:
        raise DataError(f"a t interval needs at least 2 paired seeds (df = {df})")
    try:
        from scipy.stats import t
    except ImportError:
        if abs(confidence - 0.95) > 1e-12:
            raise DataError("confidence levels other than 0.95 need scipy") from None
        return _T975[df - 1] if df <= len(_T975) else 1.960
    return float(t.ppf(1 - (1 - confidence) / 2, df))


def mean_std(values: Sequence[float]) -> tuple[float, float | None, int]:
    """(mean, sample standard deviation (n − 1; None for one value), n)."""
    n = len(values)
    if n == 0:
        raise DataError("no value to average")
    mean = sum(values) / n
    if n == 1:
        return mean, None, 1
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)), n


def paired_difference(
    arm: Mapping[int, float], baseline: Mapping[int, float], confidence: float = 0.95
) -> dict[str, float | int | None]:
    """Mean of ``arm[seed] − baseline[seed]`` over the shared seeds and its t interval (None below 2 seeds)."""
    seeds = sorted(set(arm) & set(baseline))
    if not seeds:
        raise DataError(f"no seed in common (arm seeds {sorted(arm)}, baseline seeds {sorted(baseline)})")
    diffs = [arm[s] - baseline[s] for s in seeds]
    mean, sd, n = mean_std(diffs)
    if sd is None:
        return {"diff": mean, "low": None, "high": None, "n_paired": n}
    half = t_quantile(n - 1, confidence) * sd / math.sqrt(n)
    return {"diff": mean, "low": mean - half, "high": mean + half, "n_paired": n}
