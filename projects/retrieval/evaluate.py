"""Retrieval Recall@1/5/10 (text and image retrieval, their means, and the overall mean).

From a saved score file (rows/columns ordered as the annotation's images / captions):
    python projects/retrieval/evaluate.py --scores scores.npz --annotation test.json
From a trained model:
    python projects/retrieval/evaluate.py --checkpoint runs/x/model_final.pt [--split test]
        [--rerank-score blip|albef|margin_sim] [--full-itm]   (METER's protocol too: every pair by ITM)
``scores.npz`` holds ``scores_i2t`` [images x texts] and ``scores_t2i`` [texts x images].
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

import numpy as np

from mmllm.console import print_report
from mmllm.data.captions import load_karpathy
from mmllm.errors import DataError
from mmllm_retrieval.metrics import caption_index, retrieval_metrics


def from_scores(scores: str, annotation: str) -> dict:
    items = load_karpathy(annotation, Path(annotation).parent, check_images=False)
    if not items:
        raise DataError(f"{annotation}: the annotation lists no image, there is nothing to rank")
    img2txt, txt2img = caption_index([len(i.captions) for i in items])
    try:
        data = np.load(scores)  # allow_pickle=False: object arrays are refused
    except (OSError, ValueError) as exc:
        raise DataError(f"{scores}: not a readable .npz file: {exc}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise DataError(f"{scores}: a single array, expected an .npz archive with scores_i2t and scores_t2i")
    with data:
        missing = {"scores_i2t", "scores_t2i"} - set(data.files)
        if missing:
            raise DataError(f"{scores}: lacks {sorted(missing)}")
        try:
            i2t, t2i = data["scores_i2t"], data["scores_t2i"]
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise DataError(f"{scores}: unreadable score array: {exc}") from exc
    try:
        return retrieval_metrics(i2t, t2i, img2txt, txt2img)
    except DataError as exc:
        raise DataError(f"{scores} against {annotation}: {exc}") from exc


def from_checkpoint(
    checkpoint: str, split: str, out_dir: str | None, rerank_score: str | None = None, full_itm: bool = False
) -> dict:
    """``mmllm evaluate --run`` for retrieval runs; ``--rerank-score``/``--full-itm`` are evaluation-only
    run settings (the weights are the run's), passed as config overrides."""
    from mmllm.engine.evaluation import evaluate_run

    options = [f"run.rerank_score={rerank_score}"] if rerank_score is not None else []
    if full_itm:
        options.append("run.full_itm=true")
    from mmllm.engine.registry import all_tasks

    models = tuple(name for name, entry in all_tasks().items() if entry.benchmark_name == "mmllm_retrieval")
    return evaluate_run(checkpoint, split, out_dir, options=options, tasks=models)  # any model of the benchmark


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scores")
    parser.add_argument("--annotation")
    parser.add_argument("--checkpoint")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out-dir")
    parser.add_argument(
        "--rerank-score",
        choices=["blip", "albef", "margin_sim"],
        help="with --checkpoint: the re-ranking score (default: the run's run.rerank_score)",
    )
    parser.add_argument(
        "--full-itm",
        action="store_true",
        help="with --checkpoint: also score every pair with ITM (METER's protocol), full_itm_*",
    )
    args = parser.parse_args(argv)
    if args.checkpoint:
        return print_report(
            lambda: from_checkpoint(args.checkpoint, args.split, args.out_dir, args.rerank_score, args.full_itm)
        )
    if args.scores and args.annotation:
        return print_report(lambda: from_scores(args.scores, args.annotation))
    parser.error("give --scores and --annotation, or --checkpoint")


if __name__ == "__main__":
    sys.exit(main())
