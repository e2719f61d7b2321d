"""Official VQA result files: reading them with clear errors, writing leaderboard submissions."""

from __future__ import annotations

from pathlib import Path

from mmllm.errors import DataError
from mmllm.jsonio import read_json, write_json


def read_results(path: str | Path, question_ids: set[int] | None = None) -> dict[int, str]:
    """``[{"question_id": int, "answer": str}, ...]`` -> {question_id: answer}, validated."""
    path = Path(path)
    rows = read_json(path, "results file")
    if not isinstance(rows, list):
        raise DataError(f"{path}: the official result format is a JSON list of {{question_id, answer}}")
    out: dict[int, str] = {}
    for n, row in enumerate(rows):
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("question_id"), int)
            or not isinstance(row.get("answer"), str)
        ):
            raise DataError(f"{path}: entry {n} is not {{'question_id': int, 'answer': str}}: {row!r}")
        if row["question_id"] in out:
            raise DataError(f"{path}: question {row['question_id']} answered twice")
        out[row["question_id"]] = row["answer"]
    if question_ids is not None:
        unknown = set(out) - question_ids
        missing = question_ids - set(out)
        if unknown:
            raise DataError(
                f"{path}: {len(unknown)} answer(s) to questions not in the question file, e.g. {sorted(unknown)[:5]}"
            )
        if missing:
            raise DataError(f"{path}: {len(missing)} question(s) unanswered, e.g. {sorted(missing)[:5]}")
    return out


def write_submission(
    answers: dict[int, str], questions_file: str | Path, out_dir: str | Path, method: str, subset: str = "test-dev2015"
) -> Path:
    """The file the VQAv2 evaluation server takes: one answer for every question of ``questions_file``,
    named ``vqa_OpenEnded_mscoco_<subset>_<method>_results.json``."""
    from .data import load_json_records

    qids = [q["question_id"] for q in load_json_records(questions_file, "questions")]
    missing = [q for q in qids if q not in answers]
    if missing:
        raise DataError(f"{len(missing)} question(s) of {questions_file} have no answer, e.g. {missing[:5]}")
    if not method.replace("-", "").replace("_", "").isalnum():
        raise DataError(f"method name {method!r}: use letters, digits, '-' and '_' only")
    path = Path(out_dir) / f"vqa_OpenEnded_mscoco_{subset}_{method}_results.json"
    write_json(path, [{"question_id": q, "answer": answers[q]} for q in qids])
    return path
