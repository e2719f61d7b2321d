"""VQA accuracy with the official rules, from result files or from a trained model.

From files (official formats):
    python projects/vqa/evaluate.py --questions Q.json --annotations A.json --results R.json
From a trained model (writes results_<split>.json, and a leaderboard submission with --submission):
    python projects/vqa/evaluate.py --checkpoint runs/x/model_final.pt --split test [--submission NAME]
Prints JSON: overall, perQuestionType, perAnswerType (percent, 2 decimals).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from mmllm.console import print_report
from mmllm.errors import DataError
from mmllm_vqa import metrics
from mmllm_vqa.data import load_json_records
from mmllm_vqa.results import read_results, write_submission


def _question_ids(records: list, path: str, what: str) -> list:
    ids = []
    for n, record in enumerate(records):
        qid = record.get("question_id") if isinstance(record, dict) else None
        if not isinstance(qid, int) or isinstance(qid, bool):
            raise DataError(f"{path}: {what} record {n} has question_id {qid!r}, expected an int")
        ids.append(qid)
    return ids


def from_files(questions: str, annotations: str, results: str) -> dict:
    """The official evaluation of one result file: questions, annotations and results must cover the
    same question ids, each once (the official ``VQA.loadRes`` asserts the same)."""
    qids = _question_ids(load_json_records(questions, "questions"), questions, "question")
    if not qids:
        raise DataError(f"{questions}: the question list is empty, there is nothing to evaluate")
    dup = sorted(q for q, n in Counter(qids).items() if n > 1)
    if dup:
        raise DataError(f"{questions}: {len(dup)} question id(s) listed more than once, e.g. {dup[:5]}")
    anns = load_json_records(annotations, "annotations")
    annotated = set(_question_ids(anns, annotations, "annotation"))
    unannotated = sorted(set(qids) - annotated)
    if unannotated:
        raise DataError(
            f"{len(unannotated)} question(s) of {questions} have no annotation in {annotations}, e.g. {unannotated[:5]}"
        )
    extra = sorted(annotated - set(qids))
    if extra:
        raise DataError(
            f"{annotations} annotates {len(extra)} question(s) not in {questions}, e.g. {extra[:5]}: "
            "the official evaluation scores every annotated question, give matching files"
        )
    return metrics.evaluate(anns, read_results(results, set(qids)), source=annotations)


def from_checkpoint(checkpoint: str, split: str, out_dir: str | None, submission: str | None) -> dict:
    """The official report of a trained run on ``split`` (``mmllm evaluate --run`` with this script's
    report: results file, official accuracy dict, and with ``submission`` a test-dev submission file)."""
    from mmllm.engine.evaluation import evaluate_run
    from mmllm.jsonio import write_json

    def use_run_vocab(cfg):  # the answer vocabulary the model was trained with
        vocab_file = Path(checkpoint).parent / "answer_vocab.json"
        if vocab_file.is_file():
            cfg.datasets.mmllm_vqa.answer_vocab = str(vocab_file)  # written by METER's classifier only

    def official_report(task, model, dataset, split, out_dir):
        answers = task.predictions(model, dataset, f"eval {split}")  # any model of the VQA benchmark
        write_json(
            out_dir / f"results_{split}.json", [{"question_id": q, "answer": a} for q, a in sorted(answers.items())]
        )
        out = {}
        if submission:
            out["submission"] = str(
                write_submission(answers, task.data_cfg.splits[split].questions, out_dir, submission)
            )
        if dataset.split.annotations:
            out.update(metrics.evaluate(dataset.split.annotation_list(), answers))
        return out

    from mmllm.engine.registry import all_tasks

    vqa = tuple(name for name, entry in all_tasks().items() if entry.benchmark_name == "mmllm_vqa")
    return evaluate_run(checkpoint, split, out_dir, tasks=vqa, edit=use_run_vocab, score=official_report)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions")
    parser.add_argument("--annotations")
    parser.add_argument("--results")
    parser.add_argument("--checkpoint")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out-dir")
    parser.add_argument("--submission", metavar="METHOD", help="also write a VQAv2 test-dev submission file")
    args = parser.parse_args(argv)
    if args.checkpoint:
        return print_report(lambda: from_checkpoint(args.checkpoint, args.split, args.out_dir, args.submission))
    if args.questions and args.annotations and args.results:
        return print_report(lambda: from_files(args.questions, args.annotations, args.results))
    parser.error("give --questions, --annotations and --results, or --checkpoint")


if __name__ == "__main__":
    sys.exit(main())
