"""Action-recognition metrics: top-1/top-5 accuracy after averaging the softmax over a video's views.

VideoMAE (Tong et al., NeurIPS 2022) reports multi-view accuracy: every test video is scored on
``clips x crops`` views and the view scores are averaged before the top-k test. We average the softmax
probabilities of the views (from logits), or the given probabilities.

From a score file (``.npz``):
    python -m vision.action.evaluate --scores S.npz
      labels [N] int; logits [N, V, K] or [N, K] (softmax taken per view), or probs [N, V, K] / [N, K]
From a trained model:
    python -m vision.action.evaluate --checkpoint runs/x/model_final.pt [--split test]
Prints JSON: top1, top5 (percent, 2 decimals; top5 only when there are at least 5 classes),
num_videos, num_views. Bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from mmllm.errors import DataError

TOPK = (1, 5)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64 (shifted by the row maximum)."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _as_views(scores: np.ndarray, name: str) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim == 2:
        scores = scores[:, None, :]
    if scores.ndim != 3 or 0 in scores.shape:
        raise DataError(f"{name} must be [N, K] or [N, V, K] with N, V, K > 0, got shape {scores.shape}")
    if not np.issubdtype(scores.dtype, np.number) or not np.isfinite(scores).all():
        raise DataError(f"{name} holds NaN/inf or non-numbers: refusing to score it")
    return scores.astype(np.float64)


def aggregate_views(logits: np.ndarray | None = None, probs: np.ndarray | None = None) -> np.ndarray:
    """[N, K]: the mean over views of each view's class probabilities (exactly one of logits/probs)."""
    if (logits is None) == (probs is None):
        raise DataError("give exactly one of logits or probs")
    if logits is not None:
        return softmax(_as_views(logits, "logits")).mean(axis=1)
    p = _as_views(probs, "probs")
    if (p < 0).any() or not np.allclose(p.sum(axis=-1), 1.0, atol=1e-3):
        raise DataError("probs must be non-negative and sum to 1 over the classes of each view")
    return p.mean(axis=1)


def topk_accuracy(probs: np.ndarray, labels: np.ndarray, ks=TOPK) -> dict[str, float]:
    """Percent of videos whose label is among the k highest scores (ties: the lower class index ranks first);
    top-k for k larger than the number of classes is left out."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or len(probs) == 0:
        raise DataError(f"scores must be [N, K] with N > 0, got {probs.shape}")
    if labels.shape != (len(probs),):
        raise DataError(f"labels must be [N] = [{len(probs)}], got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be integers, got {labels.dtype}")
    num_classes = probs.shape[1]
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if len(bad):
        raise DataError(f"labels outside the class list 0..{num_classes - 1}: {sorted(set(bad.tolist()))[:5]}")
    order = np.argsort(-probs, axis=1, kind="stable")
    rank = np.argmax(order == labels[:, None], axis=1)  # 0 = best
    return {f"top{k}": round(float((rank < k).mean() * 100.0), 2) for k in ks if k <= num_classes}


def action_metrics(labels, logits=None, probs=None) -> dict[str, float]:
    """top-1/top-5 of view-averaged probabilities, with the counts that were scored."""
    views = _as_views(logits if logits is not None else probs, "logits" if logits is not None else "probs")
    out = topk_accuracy(aggregate_views(logits=logits, probs=probs), np.asarray(labels))
    return {**out, "num_videos": int(views.shape[0]), "num_views": int(views.shape[1])}


def from_scores(path: str | Path) -> dict[str, float]:
    """Metrics of a ``.npz`` with ``labels`` and ``logits`` or ``probs`` (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"score file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError) as exc:
        raise DataError(f"{path} is not a readable .npz: {exc}") from exc
    if "labels" not in arrays:
        raise DataError(f"{path} has no 'labels' array (found {sorted(arrays)})")
    given = [k for k in ("logits", "probs") if k in arrays]
    if len(given) != 1:
        raise DataError(f"{path} needs exactly one of 'logits' or 'probs' (found {sorted(arrays)})")
    try:
        return action_metrics(arrays["labels"], **{given[0]: arrays[given[0]]})
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None


def from_checkpoint(checkpoint: str, split: str = "test", out_dir: str | None = None) -> dict[str, float]:
    """Rebuild a finished run and evaluate ``split`` as training did (writes scores_<split>.npz):
    ``mmllm evaluate --run`` for this task's runs."""
    from mmllm.engine.evaluation import evaluate_run

    return evaluate_run(checkpoint, split, out_dir, tasks=("mmllm_action",))


def main(argv: list[str] | None = None) -> int:
    from mmllm.console import print_report

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--scores", help=".npz with labels and logits/probs")
    source.add_argument("--checkpoint", help="model_final.pt of a finished run")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out-dir", default=None, help="where --checkpoint writes its score file (default: the run)")
    args = parser.parse_args(argv)
    if args.scores:
        return print_report(lambda: from_scores(args.scores))
    return print_report(lambda: from_checkpoint(args.checkpoint, args.split, args.out_dir))


if __name__ == "__main__":
    sys.exit(main())
