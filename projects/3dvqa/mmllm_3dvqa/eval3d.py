"""3D VQA metrics: EM@1 / EM@10 (ScanQA, Azuma et al., CVPR 2022) and SQA3D's refined match and
question types (Ma et al., ICLR 2023).

* Answers are compared lower-cased, stripped, with runs of whitespace collapsed to one space.
* A question counts at k if any of its first k predicted answers matches any ground-truth answer.
* Refined match (LEO's, as it scores SQA3D; not SQA3D's own metric): both sides first go through :func:`clean_answer`, LEO's answer
  normalisation (``data/data_utils.py``, function ``clean_answer``, github.com/embodied-generalist/embodied-generalist;
  used by its ``evaluator/sqa3d_eval.py``), then it is a hit when they are equal, or when the prediction with all
  spaces removed contains, or is contained in, a ground-truth answer with its spaces removed. An empty prediction never matches
  (it would be "contained" in every answer); an empty ground-truth answer is refused as bad input.
* Question type (LEO's ``get_sqa_question_type``; SQA3D's own script takes the whole first word): after stripping leading spaces, the question's first characters,
  lower-cased, are ``what``, ``is``, ``how``, ``can`` or ``which`` (a plain prefix test, so
  "Isn't ..." counts as ``is``), else ``others``.

Annotations come in ScanQA's layout (a list of ``{question_id, question, answers: [...]}``) or as
SQA3D's pair of files (questions + annotations); results in ScanQA's submission layout
``[{"question_id", "answer_top10": [...]}]`` (at most 10 ranked answers, fewer allowed).
Question ids are compared as strings (SQA3D uses ints, ScanQA strings).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mmllm.errors import DataError
from mmllm.jsonio import read_json

QUESTION_TYPES = ("what", "is", "how", "can", "which")
TOP_K = 10
_SPACES = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
    """Lower-cased, stripped, runs of whitespace collapsed to one space."""
    return _SPACES.sub(" ", str(text).lower()).strip()


# LEO's clean_answer rules, in its order (the rules are restated here, not copied):
_CLEAN_TRIM = [
    (r"[ ]+$", ""),
    (r"^[ ]+", ""),
    (r" {2,}", " "),
    (r"\.[ ]{2,}", ". "),
    (r"[^a-zA-Z0-9,'\s\-:]+", ""),
]  # drops every other character (so "ç" and "\u2019" are gone here)
_CLEAN_WORDS = {
    "letf": "left",
    "let": "left",
    "tehre": "there",
    "rigth": "right",
    "rght": "right",
    "behine": "behind",
    "tv": "TV",
    "chai": "chair",
    "wasing": "washing",
    "waslked": "walked",
    "oclock": "o'clock",
}
_NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]


def clean_answer(text: str) -> str:
    """LEO's answer normalisation (Huang et al., ICML 2024; github.com/embodied-generalist/embodied-generalist,
    ``data/data_utils.py``, function ``clean_answer``), rule for rule in its order:

    lower-case; trim leading/trailing spaces; collapse runs of spaces; drop characters other than letters,
    digits, ``, ' - :`` and whitespace; fix a list of typos (``letf``/``let`` -> left, ``rigth``/``rght`` ->
    right, ``tv`` -> ``TV`` (upper case, as LEO has it), ``oclock``/``o' clock`` -> o'clock, ...); numbers
    0-20 and 23 as words, ``none`` -> zero; a digit glued to the end of a word is dropped (``mat2`` -> mat);
    the articles a / an / the before a word are dropped; ``backwards`` -> backward.
    """
    data = str(text).lower()
    for pattern, repl in _CLEAN_TRIM:
        data = re.sub(pattern, repl, data)
    for word, repl in _CLEAN_WORDS.items():
        data = re.sub(rf"\b{word}\b", repl, data)
    data = re.sub(r"\bo'[ ]+clock\b", "o'clock", data)
    data = re.sub(r"\bnone\b", "zero", data)
    for n, word in enumerate(_NUMBER_WORDS):
        data = re.sub(rf"\b{n}\b", word, data)
    data = re.sub(r"\b23\b", "twenty-three", data)
    data = re.sub(r"\b([a-zA-Z]+)([0-9])\b", r"\g<1>", data)
    for article in ("a", "an", "the"):
        data = re.sub(rf"\b{article}\b ([a-zA-Z]+)", r"\g<1>", data)
    return re.sub(r"\bbackwards\b", "backward", data)


def question_type(question: str) -> str:
    """LEO's prefix rule for SQA3D's types: ``what|is|how|can|which`` by plain prefix of the lower-cased question, else ``others``."""
    head = str(question).lstrip(" ").lower()
    for prefix in QUESTION_TYPES:
        if head.startswith(prefix):
            return prefix
    return "others"


def exact_match(prediction: str, answers: Iterable[str]) -> bool:
    pred = normalize_answer(prediction)
    return bool(pred) and any(pred == normalize_answer(a) for a in answers)


def refined_match(prediction: str, answers: Iterable[str]) -> bool:
    """SQA3D's refined match as LEO scores it (``evaluator/scanqa_eval.py``, ``answer_match``, after
    :func:`clean_answer` on both sides): equal, or one space-free string contains the other."""
    pred = "".join(clean_answer(prediction).split())
    if not pred:
        return False
    for answer in answers:
        gt = "".join(clean_answer(answer).split())
        if gt and (pred in gt or gt in pred):
            return True
    return False


def score(
    references: Mapping[str, dict[str, Any]], predictions: Mapping[str, Sequence[str]], source: str = "annotations"
) -> dict[str, Any]:
    """EM@1/EM@10 (plain and refined, percent, 2 decimals) and EM@1 per SQA3D question type.

    ``references``: question id (str) -> ``{"question": str, "answers": [str, ...]}``;
    ``predictions``: question id (str) -> ranked answers (1 to 10). Both must cover the same ids.
    """
    if not references:
        raise DataError(f"{source}: no questions to evaluate")
    missing = [q for q in references if q not in predictions]
    if missing:
        raise DataError(f"{len(missing)} question(s) of {source} have no prediction, e.g. {missing[:5]}")
    unknown = [q for q in predictions if q not in references]
    if unknown:
        raise DataError(f"{len(unknown)} prediction(s) for question(s) not in {source}, e.g. {unknown[:5]}")
    hits = Counter()
    per_type_hits: Counter = Counter()
    per_type_count: Counter = Counter()
    for qid, ref in references.items():
        answers = ref["answers"]
        ranked = list(predictions[qid])
        qtype = question_type(ref.get("question", ""))
        per_type_count[qtype] += 1
        at1 = exact_match(ranked[0], answers)
        hits["em1"] += at1
        hits["em10"] += any(exact_match(p, answers) for p in ranked[:TOP_K])
        hits["em1_refined"] += refined_match(ranked[0], answers)
        hits["em10_refined"] += any(refined_match(p, answers) for p in ranked[:TOP_K])
        per_type_hits[qtype] += at1
    n = len(references)
    out: dict[str, Any] = {k: round(100.0 * hits[k] / n, 2) for k in ("em1", "em10", "em1_refined", "em10_refined")}
    order = [*QUESTION_TYPES, "others"]
    out["per_type"] = {t: round(100.0 * per_type_hits[t] / per_type_count[t], 2) for t in order if per_type_count[t]}
    out["per_type_count"] = {t: per_type_count[t] for t in order if per_type_count[t]}
    out["num_questions"] = n
    return out


# ---------------------------------------------------------------------- reading the files
def _qid(record: Any, path: str | Path, n: int, what: str) -> str:
    if not isinstance(record, dict):
        raise DataError(f"{path}: {what} {n} is a {type(record).__name__}, expected an object")
    qid = record.get("question_id")
    if isinstance(qid, bool) or not isinstance(qid, (int, str)) or (isinstance(qid, str) and not qid.strip()):
        raise DataError(f"{path}: {what} {n} has question_id {qid!r}, expected an int or a non-empty string")
    return str(qid)


def _answers(raw: Any, path: str | Path, qid: str) -> list[str]:
    """Answers as strings from ScanQA's ``[str]`` or SQA3D's ``[{answer, answer_confidence, answer_id}]``."""
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{path}: question {qid} has answers {raw!r}, expected a non-empty list")
    out = []
    for a in raw:
        text = a.get("answer") if isinstance(a, dict) else a
        if not isinstance(text, str):
            raise DataError(f"{path}: question {qid} has an answer {a!r} that is not a string")
        if not normalize_answer(text):
            raise DataError(f"{path}: question {qid} has an empty ground-truth answer")
        out.append(text)
    return out


def _unique(ids: list[str], path: str | Path, what: str) -> None:
    dup = sorted(q for q, c in Counter(ids).items() if c > 1)
    if dup:
        raise DataError(f"{path}: {len(dup)} {what} question id(s) listed more than once, e.g. {dup[:5]}")


def _records(data: Any, path: str | Path, field: str) -> list:
    if isinstance(data, dict) and isinstance(data.get(field), list):
        return data[field]
    raise DataError(f"{path}: expected a JSON object with a list under {field!r} (SQA3D format)")


def load_references(annotations: str | Path, questions: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Question id -> ``{question, answers}`` from ScanQA's list or SQA3D's questions + annotations pair."""
    data = read_json(annotations, "annotations file")
    if questions is None:
        if isinstance(data, dict) and "annotations" in data:
            raise DataError(f"{annotations} is an SQA3D annotations file: give its questions file with --questions")
        if not isinstance(data, list):
            raise DataError(
                f"{annotations}: expected a JSON list of {{question_id, question, answers}} (ScanQA layout)"
            )
        ids = [_qid(r, annotations, n, "record") for n, r in enumerate(data)]
        _unique(ids, annotations, "annotated")
        refs = {}
        for qid, record in zip(ids, data):
            if not isinstance(record.get("question"), str):
                raise DataError(f"{annotations}: question {qid} has no 'question' text")
            if "answers" not in record:
                raise DataError(
                    f"{annotations}: question {qid} has no 'answers' (a test file without answers cannot be scored)"
                )
            refs[qid] = {"question": record["question"], "answers": _answers(record["answers"], annotations, qid)}
        return refs
    q_records = _records(read_json(questions, "questions file"), questions, "questions")
    a_records = _records(data, annotations, "annotations")
    q_ids = [_qid(r, questions, n, "question") for n, r in enumerate(q_records)]
    a_ids = [_qid(r, annotations, n, "annotation") for n, r in enumerate(a_records)]
    _unique(q_ids, questions, "question")
    _unique(a_ids, annotations, "annotated")
    texts = {}
    for qid, record in zip(q_ids, q_records):
        if not isinstance(record.get("question"), str):
            raise DataError(f"{questions}: question {qid} has no 'question' text")
        texts[qid] = record["question"]
    annotated = set(a_ids)
    unannotated = [q for q in q_ids if q not in annotated]
    if unannotated:
        raise DataError(
            f"{len(unannotated)} question(s) of {questions} have no annotation in {annotations}, e.g. {unannotated[:5]}"
        )
    orphan = [q for q in a_ids if q not in texts]
    if orphan:
        raise DataError(f"{annotations} annotates {len(orphan)} question(s) not in {questions}, e.g. {orphan[:5]}")
    return {
        qid: {"question": texts[qid], "answers": _answers(r.get("answers"), annotations, qid)}
        for qid, r in zip(a_ids, a_records)
    }


def load_predictions(results: str | Path) -> dict[str, list[str]]:
    """Question id -> ranked answers from ScanQA's submission layout ``[{question_id, answer_top10}]``."""
    data = read_json(results, "results file")
    if not isinstance(data, list):
        raise DataError(f"{results}: expected a JSON list of {{question_id, answer_top10}} (ScanQA submission layout)")
    ids = [_qid(r, results, n, "result") for n, r in enumerate(data)]
    _unique(ids, results, "predicted")
    out = {}
    for qid, record in zip(ids, data):
        ranked = record.get("answer_top10")
        if not isinstance(ranked, list) or not ranked or not all(isinstance(a, str) for a in ranked):
            raise DataError(
                f"{results}: question {qid} needs 'answer_top10': a non-empty list of strings, got {ranked!r}"
            )
        if len(ranked) > TOP_K:
            raise DataError(f"{results}: question {qid} has {len(ranked)} answers in answer_top10 (at most {TOP_K})")
        out[qid] = ranked
    return out


def evaluate_files(annotations: str | Path, results: str | Path, questions: str | Path | None = None) -> dict[str, Any]:
    """The report of ``evaluate.py``: one result file scored against ScanQA or SQA3D annotations."""
    return score(load_references(annotations, questions), load_predictions(results), source=str(annotations))
