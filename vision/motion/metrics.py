"""Argoverse 1 motion-forecasting metrics for K modes, with the Argoverse API's semantics.

What ``argoverse.evaluation.eval_forecasting.get_displacement_errors_and_miss_rate`` does
(argoverse-api, ``compute_forecasting_metrics``), per sequence:

1. Keep ``max_guesses`` modes: with probabilities, the most probable ones (stable sort on -p:
   among equal probabilities the earlier mode), their probabilities renormalised to sum to 1
   over the kept modes; without, the first ``max_guesses``.
2. The chosen mode is the one with the smallest final displacement (FDE); among equal FDEs
   the earlier kept mode (the API's strict ``<`` scan).
3. minFDE = its FDE; **minADE = its ADE** (not the minimum ADE over modes); a miss when its
   FDE exceeds ``miss_threshold`` (2.0 m, strict ``>``).
4. With probabilities p of the chosen mode: brier-minFDE = minFDE + (1 - p)^2, brier-minADE =
   minADE + (1 - p)^2, p-minFDE/p-minADE add min(-log p, -log 0.05), p-MR counts
   1 for a miss and 1 - p otherwise.

All averaged over sequences. Inputs are checked first (shapes, NaN/inf, probabilities that
are negative or do not sum to 1 per sequence within ``prob_tolerance``): a malformed file is
a :class:`~mmllm.errors.DataError`, never a score.
"""

from __future__ import annotations

import numpy as np

from mmllm.errors import DataError

MISS_THRESHOLD = 2.0  # m, Argoverse 1
LOW_PROB = 0.05  # Argoverse's floor for the -log p penalty


def check_forecasts(
    forecasts, gt, probabilities=None, prob_tolerance: float = 1e-3, where: str = "forecasts"
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(forecasts [N,K,T,2], gt [N,T,2], probabilities [N,K] | None)`` as float64, or a DataError saying what is wrong."""
    f = np.asarray(forecasts, dtype=np.float64)
    g = np.asarray(gt, dtype=np.float64)
    if f.ndim != 4 or f.shape[-1] != 2:
        raise DataError(f"{where}: forecasts must be [N, K, T, 2], got shape {f.shape}")
    if g.ndim != 3 or g.shape[-1] != 2:
        raise DataError(f"{where}: gt must be [N, T, 2], got shape {g.shape}")
    n, k, t, _ = f.shape
    if g.shape[0] != n or g.shape[1] != t:
        raise DataError(
            f"{where}: forecasts {f.shape} and gt {g.shape} disagree (need the same N sequences and T future steps)"
        )
    if n == 0 or k == 0 or t == 0:
        raise DataError(f"{where}: empty forecasts {f.shape}")
    for name, arr in (("forecasts", f), ("gt", g)):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise DataError(
                f"{where}: {name} holds {int(bad.sum())} NaN/infinite values "
                f"(first at index {tuple(int(i) for i in np.argwhere(bad)[0])})"
            )
    p = None
    if probabilities is not None:
        p = np.asarray(probabilities, dtype=np.float64)
        if p.shape != (n, k):
            raise DataError(f"{where}: probabilities must be [N, K] = {(n, k)}, got {p.shape}")
        if not np.isfinite(p).all():
            raise DataError(f"{where}: probabilities hold NaN/infinite values")
        if (p < 0).any():
            raise DataError(f"{where}: probabilities are negative for sequence {int(np.argwhere(p < 0)[0, 0])}")
        off = np.abs(p.sum(axis=1) - 1.0)
        if (off > prob_tolerance).any():
            i = int(off.argmax())
            raise DataError(
                f"{where}: probabilities of sequence {i} sum to {p[i].sum():.6f}, not 1 "
                f"(tolerance {prob_tolerance}); pass softmax outputs, not scores"
            )
    return f, g, p


def forecasting_metrics(
    forecasts,
    gt,
    probabilities=None,
    max_guesses: int | None = None,
    miss_threshold: float = MISS_THRESHOLD,
    prob_tolerance: float = 1e-3,
) -> dict[str, float]:
    """minADE, minFDE, MR (and with probabilities p-minADE, p-minFDE, p-MR, brier-minADE, brier-minFDE).

    ``max_guesses`` defaults to all K modes given.
    """
    f, g, p = check_forecasts(forecasts, gt, probabilities, prob_tolerance)
    n, k = f.shape[:2]
    keep = k if max_guesses is None else int(max_guesses)
    if keep < 1:
        raise DataError(f"max_guesses must be >= 1, got {max_guesses}")
    keep = min(keep, k)
    if p is not None:
        order = np.argsort(-p, axis=1, kind="stable")[:, :keep]
        p = np.take_along_axis(p, order, axis=1)
        p = p / p.sum(axis=1, keepdims=True)
    else:
        order = np.broadcast_to(np.arange(keep), (n, keep))
    f = np.take_along_axis(f, order[:, :, None, None], axis=1)
    err = np.sqrt(((f - g[:, None]) ** 2).sum(-1))  # [N, keep, T] displacement per step
    fde = err[:, :, -1]
    best = fde.argmin(axis=1)  # first minimum, as the API's strict '<' scan
    rows = np.arange(n)
    min_fde = fde[rows, best]
    min_ade = err[rows, best].mean(axis=1)
    miss = min_fde > miss_threshold
    out = {"minADE": float(min_ade.mean()), "minFDE": float(min_fde.mean()), "MR": float(miss.mean())}
    if p is not None:
        pb = p[rows, best]
        penalty = np.minimum(-np.log(np.maximum(pb, np.finfo(np.float64).tiny)), -np.log(LOW_PROB))
        out.update(
            {
                "p-minADE": float((min_ade + penalty).mean()),
                "p-minFDE": float((min_fde + penalty).mean()),
                "p-MR": float(np.where(miss, 1.0, 1.0 - pb).mean()),
                "brier-minADE": float((min_ade + (1.0 - pb) ** 2).mean()),
                "brier-minFDE": float((min_fde + (1.0 - pb) ** 2).mean()),
            }
        )
    return out
