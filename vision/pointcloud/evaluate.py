"""Point-cloud classification metrics: overall accuracy (OA) and mean class accuracy (mAcc), in percent.

OA = correct / samples; mAcc = the mean over classes of each class's accuracy (Point-BERT and
ScanObjectNN report both; mAcc weighs a rare class as much as a common one). Classes with no
ground-truth sample have no accuracy and are left out of the mean.

CLI (one JSON object on stdout; bad input -> one line on stderr, exit 2)::

    python -m vision.pointcloud.evaluate --annotations annotations_test.json --results results_test.json \
        [--classes shape_names.txt]

``annotations``: a JSON list of ``{"id", "label"}``; ``results``: a JSON list of ``{"id", "pred"}``
(the files a run writes next to its summary). Labels/predictions are class names or class indices;
with ``--classes`` every one must be in the class list.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

from mmllm.console import print_report
from mmllm.errors import DataError
from mmllm.jsonio import read_json


def classification_metrics(labels: Sequence[Hashable], preds: Sequence[Hashable]) -> dict[str, Any]:
    """``{"oa", "macc", "num_samples", "per_class"}`` (percent) of predictions against labels."""
    if len(labels) != len(preds):
        raise DataError(f"{len(labels)} labels but {len(preds)} predictions")
    if not labels:
        raise DataError("no samples to score")
    hits: dict[Hashable, list[int]] = {}
    for label, pred in zip(labels, preds):
        counts = hits.setdefault(label, [0, 0])
        counts[0] += int(pred == label)
        counts[1] += 1
    per_class = {label: 100.0 * c / n for label, (c, n) in hits.items()}
    correct = sum(c for c, _ in hits.values())
    return {
        "oa": 100.0 * correct / len(labels),
        "macc": sum(per_class.values()) / len(per_class),
        "num_samples": len(labels),
        "per_class": {str(k): v for k, v in sorted(per_class.items(), key=str)},
    }


def _records(data: Any, key: str, where: str) -> dict[Hashable, Any]:
    if not isinstance(data, list) or not data:
        raise DataError(f"{where}: expected a non-empty JSON list of {{'id', '{key}'}} records")
    out: dict[Hashable, Any] = {}
    for n, record in enumerate(data):
        if not isinstance(record, dict) or "id" not in record or key not in record:
            raise DataError(f"{where}: record {n} is not an object with 'id' and '{key}': {record!r}")
        rid, value = record["id"], record[key]
        if not isinstance(rid, (str, int)) or isinstance(rid, bool):
            raise DataError(f"{where}: record {n} has id {rid!r}; ids are strings or integers")
        if rid in out:
            raise DataError(f"{where}: id {rid!r} appears more than once")
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise DataError(f"{where}: {key} of id {rid!r} is {value!r}; expected a class name or index")
        out[rid] = value
    return out


def _to_class(value: Any, classes: list[str] | None, where: str, rid: Hashable) -> Hashable:
    if classes is None:
        return value
    if isinstance(value, int):
        if not 0 <= value < len(classes):
            raise DataError(
                f"{where}: id {rid!r} has class index {value}, outside the class list (0..{len(classes) - 1})"
            )
        return classes[value]
    if value not in classes:
        raise DataError(f"{where}: id {rid!r} has class {value!r}, which is not in the class list")
    return value


def evaluate_files(annotations: str | Path, results: str | Path, classes: str | Path | None = None) -> dict[str, Any]:
    """Score a results file against an annotation file (every annotated id needs exactly one prediction)."""
    names = None
    if classes is not None:
        from .data import read_class_names

        names = read_class_names(classes)
    truth = _records(read_json(annotations, "annotation file"), "label", str(annotations))
    preds = _records(read_json(results, "results file"), "pred", str(results))
    unknown = [rid for rid in preds if rid not in truth]
    if unknown:
        raise DataError(f"{results}: predictions for ids not in the annotations, e.g. {unknown[:3]}")
    missing = [rid for rid in truth if rid not in preds]
    if missing:
        raise DataError(f"{results}: no prediction for {len(missing)} annotated id(s), e.g. {missing[:3]}")
    ids = list(truth)
    labels = [_to_class(truth[i], names, str(annotations), i) for i in ids]
    guesses = [_to_class(preds[i], names, str(results), i) for i in ids]
    if names is None and {type(v) for v in labels + guesses} == {str, int}:
        raise DataError("labels and predictions mix class names and indices: pass --classes to map them")
    return classification_metrics(labels, guesses)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vision.pointcloud.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--annotations", required=True, help="JSON list of {id, label}")
    parser.add_argument("--results", required=True, help="JSON list of {id, pred}")
    parser.add_argument("--classes", default=None, help="class-name file, one per line (label order)")
    args = parser.parse_args(argv)
    return print_report(lambda: evaluate_files(args.annotations, args.results, args.classes))


if __name__ == "__main__":
    sys.exit(main())
