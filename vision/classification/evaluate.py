"""Top-k accuracy and corrupted-set accuracy; evaluate a trained run or a predictions file.

    python -m vision.classification.evaluate --checkpoint runs/x/model_final.pt [--split test]
    python -m vision.classification.evaluate --predictions P.npz [--labels DIR | labels.npy | labels.txt]

A predictions file is a NumPy ``.npz`` with ``logits`` (float [N, C], any scores whose order
ranks the classes) and either ``labels`` (int [N]) or ``paths`` (str [N], each image's path
relative to an ImageFolder split, e.g. ``"7/00017.png"``) to be matched against ``--labels DIR``;
``--labels`` may instead be a ``.npy`` or a text file of N integer labels in the logits' order.
Training writes ``predictions_<split>.npz`` in this format (with ``labels``, ``paths`` and ``classes``).
Prints one JSON object; bad input is one line on stderr and exit status 2.

Ties: a sample whose true class shares its score with other classes gets the expected credit
of a uniformly random order among the tied classes, so the result does not depend on how a
sort breaks ties (a constant classifier scores chance, not 100%).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from mmllm.errors import DataError

TOPK = (1, 5)


def check_logits(logits: np.ndarray, labels: np.ndarray, what: str = "predictions") -> tuple[np.ndarray, np.ndarray]:
    """``(logits float64 [N, C], labels int64 [N])`` or a DataError saying what is wrong."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] < 2:
        raise DataError(f"{what}: logits must be [N, C] with N >= 1 and C >= 2, got shape {logits.shape}")
    if not np.issubdtype(logits.dtype, np.number) or np.issubdtype(logits.dtype, np.complexfloating):
        raise DataError(f"{what}: logits must be real numbers, got dtype {logits.dtype}")
    bad = ~np.isfinite(logits)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise DataError(f"{what}: {len(rows)} row(s) of logits hold NaN/inf (first rows {rows[:5].tolist()})")
    if labels.ndim != 1 or len(labels) != len(logits):
        raise DataError(f"{what}: {len(logits)} logit rows but labels of shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if not (
            np.issubdtype(labels.dtype, np.floating)
            and np.all(np.isfinite(labels))
            and np.all(labels == np.round(labels))
        ):
            raise DataError(f"{what}: labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    outside = (labels < 0) | (labels >= logits.shape[1])
    if outside.any():
        raise DataError(
            f"{what}: {int(outside.sum())} label(s) outside the class list 0..{logits.shape[1] - 1} "
            f"(e.g. {sorted(set(labels[outside].tolist()))[:5]})"
        )
    return logits.astype(np.float64), labels


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, ks: Iterable[int] = TOPK) -> dict[str, float]:
    """``{"top1": %, "top5": %}`` (percent). A k is reported only when k < C (top-C is always 100%).

    A sample scores ``clip(k - g, 0, e + 1) / (e + 1)`` where g classes score strictly higher
    than the true class and e others tie with it: its expected top-k hit under random tie order.
    """
    logits, labels = check_logits(logits, labels)
    true = logits[np.arange(len(labels)), labels][:, None]
    greater = (logits > true).sum(axis=1)
    tied = (logits == true).sum(axis=1)  # includes the true class itself
    out = {}
    for k in ks:
        if k < logits.shape[1]:
            credit = np.clip(k - greater, 0, tied) / tied
            out[f"top{k}"] = float(100.0 * credit.mean())
    return out


def corruption_summary(top1: Mapping[tuple[str, int], float]) -> dict[str, float]:
    """Per-corruption accuracy (mean over its severities) and their mean, as ImageNet-C averages
    over severities then corruptions: ``corrupted_<name>_top1`` and ``corrupted_top1``."""
    if not top1:
        return {}
    names = sorted({name for name, _ in top1})
    per = {name: float(np.mean([v for (n, _), v in top1.items() if n == name])) for name in names}
    out = {f"corrupted_{name}_top1": value for name, value in per.items()}
    out["corrupted_top1"] = float(np.mean(list(per.values())))
    return out


# ------------------------------------------------------------------ predictions files
def read_predictions(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a predictions ``.npz`` (``logits`` required; ``labels``/``paths``/``classes`` optional)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"predictions file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz of arrays (object arrays are refused): {exc}") from exc
    if "logits" not in arrays:
        raise DataError(f"{path} has no 'logits' array (found {sorted(arrays)})")
    unknown = sorted(set(arrays) - {"logits", "labels", "paths", "classes"})
    if unknown:
        raise DataError(f"{path}: unknown arrays {unknown}; expected logits and labels or paths (classes optional)")
    return arrays


def labels_for_paths(paths: np.ndarray, folder: str | Path, classes: np.ndarray | None = None) -> np.ndarray:
    """Labels of ``paths`` (relative to the ImageFolder split ``folder``); every image of the folder
    must be predicted exactly once."""
    from .data import ImageFolderSplit

    split = ImageFolderSplit(folder, what="--labels")
    if classes is not None and list(map(str, classes)) != split.classes:
        raise DataError(
            f"the predictions' classes {list(map(str, classes))[:10]} differ from the class folders "
            f"of {folder} {split.classes[:10]}"
        )
    truth = dict(zip(split.keys, split.targets))
    keys = [Path(str(p)).as_posix() for p in paths]
    seen: set[str] = set()
    duplicated = [k for k in keys if k in seen or seen.add(k)]
    if duplicated:
        raise DataError(f"predictions: {len(duplicated)} duplicated path(s), e.g. {duplicated[:3]}")
    unknown = [k for k in keys if k not in truth]
    if unknown:
        raise DataError(f"predictions: {len(unknown)} path(s) not in {folder}, e.g. {unknown[:3]}")
    missing = sorted(set(truth) - seen)
    if missing:
        raise DataError(
            f"predictions cover {len(keys)} of the {len(truth)} images of {folder}; missing e.g. {missing[:3]}"
        )
    return np.array([truth[k] for k in keys], dtype=np.int64)


def read_label_file(path: str | Path) -> np.ndarray:
    """Integer labels from a ``.npy`` or a text file (one integer per line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labels file {path} does not exist")
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(f"{path}: not a readable .npy: {exc}") from exc
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    try:
        return np.array([int(line) for line in lines], dtype=np.int64)
    except ValueError as exc:
        raise DataError(f"{path}: every line must be one integer label ({exc})") from exc


def evaluate_predictions(predictions: str | Path, labels: str | Path | None = None) -> dict[str, float]:
    arrays = read_predictions(predictions)
    if labels is not None and Path(labels).is_dir():
        if "paths" not in arrays:
            raise DataError(f"--labels {labels} is a folder: {predictions} needs a 'paths' array to match images")
        truth = labels_for_paths(arrays["paths"], labels, arrays.get("classes"))
    elif labels is not None:
        truth = read_label_file(labels)
    elif "labels" in arrays:
        truth = arrays["labels"]
    else:
        raise DataError(f"{predictions} has no 'labels' array: pass --labels (an ImageFolder split or a labels file)")
    logits, truth = check_logits(arrays["logits"], truth, str(predictions))
    return {**topk_accuracy(logits, truth), "num_samples": int(len(truth)), "num_classes": int(logits.shape[1])}


def evaluate_checkpoint(
    checkpoint: str | Path, split: str = "test", out_dir: str | Path | None = None
) -> dict[str, float]:
    """Rebuild a finished run from its model file and evaluate ``split`` (files go to ``out_dir``,
    default: the run's folder): ``mmllm evaluate --run`` for this task's runs."""
    from mmllm.engine.evaluation import evaluate_run

    return evaluate_run(checkpoint, split, out_dir, tasks=("mmllm_image_cls",))


def main(argv: list[str] | None = None) -> int:
    from mmllm.console import print_report

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="model_final.pt of a run (rebuilds the task from its stored config)")
    source.add_argument("--predictions", help=".npz with logits and labels or paths")
    parser.add_argument("--labels", default=None, help="ImageFolder split folder, or a .npy / text file of labels")
    parser.add_argument("--split", default="test", help="with --checkpoint: the split to evaluate")
    parser.add_argument("--out", default=None, help="with --checkpoint: where result files go (default: the run)")
    args = parser.parse_args(argv)
    if args.checkpoint:
        if args.labels:
            parser.error("--labels goes with --predictions")
        return print_report(lambda: evaluate_checkpoint(args.checkpoint, args.split, args.out))
    return print_report(lambda: evaluate_predictions(args.predictions, args.labels))


if __name__ == "__main__":
    raise SystemExit(main())
