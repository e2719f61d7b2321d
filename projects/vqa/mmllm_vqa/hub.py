"""VQAv2 from the hub: a hub split read into the same :class:`~.data.VQASplit` the JSON files give.

One layout, ``vqav2``: one question per row with ``question_id``, ``question``, ``image_id``, the image
itself (``image``) and, on annotated splits, ``answers`` (ten annotator records {answer,
answer_confidence, answer_id}), ``question_type``, ``answer_type`` (``multiple_choice_answer`` is kept
when present). lmms-lab/VQAv2 and the parquet conversion of HuggingFaceM4/VQAv2 both have it. A split
whose rows all lack answers (test, test-dev) is unannotated, as a questions file without annotations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mmllm.data.hub_datasets import HubSplitSpec, column_names, iter_rows, open_hub_split
from mmllm.data.images import ImageSource
from mmllm.errors import DataError

from .data import VQASplit

QUESTION_COLUMNS = ("question_id", "question", "image_id")
ANNOTATION_COLUMNS = ("question_type", "answer_type")
LAYOUTS = ("vqav2",)


def load_hub_vqa_split(name: str, spec: HubSplitSpec) -> VQASplit:
    """Split ``name`` from ``spec``'s hub split: questions in row order, each image shared by its
    questions (one source per ``image_id``), annotations when the split has answers."""
    if spec.layout not in LAYOUTS:
        raise DataError(f"{spec.describe()}: unknown VQA layout {spec.layout!r} (known: {list(LAYOUTS)})")
    what = spec.describe()
    table = open_hub_split(spec, QUESTION_COLUMNS, "image")
    present = column_names(table)
    extra = [c for c in ("answers", *ANNOTATION_COLUMNS, "multiple_choice_answer") if c in present]
    questions: list[dict[str, Any]] = []
    answered: dict[int, dict[str, Any]] = {}
    images: dict[Any, ImageSource] = {}
    seen: set[int] = set()
    for row in iter_rows(table, (*QUESTION_COLUMNS, *extra), "image", what):
        qid = _question_id(row, what)
        if qid in seen:
            raise DataError(f"{what}: question {qid} appears twice (question ids must be unique)")
        seen.add(qid)
        image = images.setdefault(row["image_id"], row["image"])
        questions.append(_question(row, qid, image, what))
        if row.get("answers"):
            answered[qid] = _annotation(row, qid, what)
    return VQASplit(name, questions, _annotations(questions, answered, present, what))


def _question_id(row: Mapping[str, Any], what: str) -> int:
    qid = row["question_id"]
    if not isinstance(qid, int) or isinstance(qid, bool):
        raise DataError(f"{what}: question_id {qid!r} is not an integer")
    return qid


def _question(row: Mapping[str, Any], qid: int, image: ImageSource, what: str) -> dict[str, Any]:
    """The questions-file record, with the image as a source instead of a file."""
    if not isinstance(row["question"], str) or not row["question"].strip():
        raise DataError(f"{what}: question {qid} has no question text")
    return {
        "question_id": qid,
        "image_id": row["image_id"],
        "question": row["question"],
        "image_source": image,
        "image_path": f"{what} image {row['image_id']}",
    }


def _annotation(row: Mapping[str, Any], qid: int, what: str) -> dict[str, Any]:
    """The annotations-file record: answers as annotator records (plain strings are accepted too)."""
    answers = [_answer(a, k, qid, what) for k, a in enumerate(row["answers"], start=1)]
    kept = {k: row[k] for k in (*ANNOTATION_COLUMNS, "multiple_choice_answer") if k in row}
    return {"question_id": qid, "image_id": row["image_id"], "answers": answers, **kept}


def _answer(value: Any, k: int, qid: int, what: str) -> dict[str, Any]:
    if isinstance(value, str):
        value = {"answer": value, "answer_id": k}
    if not isinstance(value, Mapping) or not isinstance(value.get("answer"), str):
        raise DataError(f"{what}: question {qid}: answer {value!r} has no string 'answer'")
    return dict(value)


def _annotations(
    questions: list[dict[str, Any]], answered: dict[int, dict[str, Any]], present: list[str], what: str
) -> dict[int, dict[str, Any]] | None:
    """The split's annotations: none when no row has answers, else every question's (the official
    evaluator scores annotated questions only, so a partly answered split is refused)."""
    if not answered:
        return None
    unanswered = [q["question_id"] for q in questions if q["question_id"] not in answered]
    if unanswered:
        raise DataError(
            f"{what}: {len(unanswered)} question(s) have empty answers in an annotated split, e.g. {unanswered[:5]}"
        )
    missing = [c for c in ANNOTATION_COLUMNS if c not in present]
    if missing:
        raise DataError(f"{what} has answers but lacks column(s) {missing} (the official accuracy needs them)")
    return answered
