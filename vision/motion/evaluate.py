"""Score forecasts with the Argoverse 1 metrics: ``python -m vision.motion.evaluate --forecasts F.npz``.

``F.npz`` holds ``forecasts`` [N, K, T, 2] and ``gt`` [N, T, 2] (the same frame for both:
city or agent-centric, distances do not care), optionally ``probabilities`` [N, K] (each row
summing to 1). It prints one JSON object: ``minADE``, ``minFDE``, ``MR`` (a fraction) and,
with probabilities, ``brier-minFDE``, ``brier-minADE``, ``p-minADE``, ``p-minFDE``, ``p-MR``
(definitions in :mod:`vision.motion.metrics`), plus ``num_sequences`` and ``num_modes``.
A training run writes such a file per split (``forecasts_test.npz``). Bad input: one line on
stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

import numpy as np

from mmllm.console import print_report
from mmllm.errors import DataError

from .metrics import MISS_THRESHOLD, forecasting_metrics


def load_forecasts(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a forecasts ``.npz`` (``forecasts``, ``gt``, optional ``probabilities``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"forecasts file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz ({exc})") from None
    if "forecasts" not in arrays:
        raise DataError(f"{path}: missing array 'forecasts' (found {sorted(arrays)})")
    if "gt" not in arrays:
        raise DataError(
            f"{path}: missing array 'gt': no ground-truth futures, so nothing to score (found "
            f"{sorted(arrays)}; a split without futures, e.g. Argoverse's test set, is not scored here)"
        )
    return arrays


def evaluate_file(
    path: str | Path, max_guesses: int | None = None, miss_threshold: float = MISS_THRESHOLD
) -> dict[str, float]:
    """The metrics of a forecasts file (what the CLI prints)."""
    arrays = load_forecasts(path)
    try:
        metrics = forecasting_metrics(
            arrays["forecasts"],
            arrays["gt"],
            arrays.get("probabilities"),
            max_guesses=max_guesses,
            miss_threshold=miss_threshold,
        )
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    n, k = arrays["forecasts"].shape[:2]
    return {**metrics, "num_sequences": int(n), "num_modes": int(min(k, max_guesses or k))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--forecasts", required=True, help=".npz with forecasts [N,K,T,2], gt [N,T,2], optional probabilities [N,K]"
    )
    parser.add_argument(
        "--max-guesses",
        type=int,
        default=None,
        help="modes scored per sequence (default: all K in the file; Argoverse 1 used 6 and 1)",
    )
    parser.add_argument("--miss-threshold", type=float, default=MISS_THRESHOLD, help="metres (default 2.0)")
    args = parser.parse_args(argv)
    return print_report(lambda: evaluate_file(args.forecasts, args.max_guesses, args.miss_threshold))


if __name__ == "__main__":
    sys.exit(main())
