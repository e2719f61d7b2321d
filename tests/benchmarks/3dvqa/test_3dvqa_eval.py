"""3D VQA evaluator: EM@1/EM@10, SQA3D's refined match and question types, on hand-worked cases."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from mmllm.errors import DataError
from mmllm_3dvqa import eval3d, task

EVALUATE = str(ROOT / "projects/3dvqa/evaluate.py")

# question, answers, ranked predictions; the hits are worked out by hand in the comments
CASES = [
    # q1 what: exact at 1 after lower-casing and stripping ("Brown " -> "brown")
    ("What color is the chair?", ["brown", "dark brown"], ["Brown ", "black"]),
    # q2 is ("Isn't" counts as is): miss at 1, exact hit at rank 3 (fewer than 10 answers); refined@1 "no"/"yes": miss
    ("Isn't the door open?", ["yes"], ["no", "maybe", "yes"]),
    # q3 how (leading spaces stripped): "two chairs" is not "two", but "twochairs" contains "two" (refined, gt in pred)
    ("  how many chairs?", ["two"], ["two chairs"]),
    # q4 others: "table" is contained in "onthetable" (refined, pred in gt); runs of spaces in the answer
    ("Where is the lamp?", ["on the  table"], ["table"]),
    # q5 which: "leftside" equals "left side" with spaces removed (refined only)
    ("Which way is the exit?", ["left side"], ["leftside"]),
    # q6 can: miss at 1, exact at rank 3; refined@1 "yes" vs "no": miss
    ("Can I sit on the bed?", ["no"], ["yes", "maybe", "no"]),
    # q7 what: whitespace runs collapse: "coffee   mug" == "Coffee mug"
    ("What is on the table?", ["coffee   mug"], ["Coffee mug", "cup"]),
]


def _refs_preds():
    refs = {f"q{i}": {"question": q, "answers": a} for i, (q, a, _) in enumerate(CASES, 1)}
    preds = {f"q{i}": p for i, (_, _, p) in enumerate(CASES, 1)}
    return refs, preds


def test_hand_worked_scores():
    report = eval3d.score(*_refs_preds())
    assert report["em1"] == 28.57  # q1, q7: 2/7
    assert report["em10"] == 57.14  # q1, q2, q6, q7: 4/7
    assert report["em1_refined"] == 71.43  # q1, q3, q4, q5, q7: 5/7
    assert report["em10_refined"] == 100.0  # every question
    assert report["per_type"] == {"what": 100.0, "is": 0.0, "how": 0.0, "can": 0.0, "which": 0.0, "others": 0.0}
    assert report["per_type_count"] == {"what": 2, "is": 1, "how": 1, "can": 1, "which": 1, "others": 1}


def test_rules_one_by_one():
    assert eval3d.normalize_answer("  Dark \t Brown \n") == "dark brown"
    # refined match in both directions, and space-free comparison
    assert eval3d.refined_match("two chairs", ["two"]) and not eval3d.exact_match("two chairs", ["two"])
    assert eval3d.refined_match("table", ["on the table"]) and not eval3d.exact_match("table", ["on the table"])
    assert eval3d.refined_match("leftside", ["left side"])
    assert not eval3d.refined_match("chair", ["table"])
    # an empty prediction matches nothing (it would be "contained" in every answer)
    assert not eval3d.refined_match("  ", ["yes"]) and not eval3d.exact_match("", ["yes"])
    # SQA3D's plain prefix test
    assert eval3d.question_type("Isn't it open?") == "is"
    assert eval3d.question_type("Island in the kitchen: what colour?") == "is"
    assert eval3d.question_type("   WHICH way?") == "which"
    assert eval3d.question_type("Where is it?") == "others"
    assert eval3d.question_type("Howdy") == "how"


def test_at_most_ten_predictions_count(tmp_path):
    refs = {"a": {"question": "What?", "answers": ["x"]}}
    # the answer at rank 10 counts for EM@10
    assert eval3d.score(refs, {"a": [f"w{i}" for i in range(9)] + ["x"]})["em10"] == 100.0
    results = tmp_path / "r.json"
    results.write_text(json.dumps([{"question_id": "a", "answer_top10": [f"w{i}" for i in range(11)]}]))
    with pytest.raises(DataError, match="at most 10"):
        eval3d.load_predictions(results)


def _write(path, data):
    path.write_text(json.dumps(data))
    return str(path)


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def run(capsys):
    """The evaluation command in this process (importing mmllm takes seconds per subprocess)."""

    def call(*args):
        code = task.main(list(args))
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return call


def test_cli_scanqa_layout(tmp_path):
    """The script run by path, as a user runs it."""
    anns = _write(
        tmp_path / "ScanQA_v1.0_val.json",
        [
            {
                "question_id": f"val-scene0000-{i}",
                "question": q,
                "answers": a,
                "scene_id": "scene0000_00",
                "object_ids": [1],
                "object_names": ["chair"],
            }
            for i, (q, a, _) in enumerate(CASES)
        ],
    )
    results = _write(
        tmp_path / "r.json",
        [{"question_id": f"val-scene0000-{i}", "answer_top10": p} for i, (_, _, p) in enumerate(CASES)],
    )
    proc = subprocess.run(
        [sys.executable, EVALUATE, "--annotations", anns, "--results", results],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["em1"], report["em10"], report["em1_refined"], report["em10_refined"]) == (
        28.57,
        57.14,
        71.43,
        100.0,
    )


def test_cli_sqa3d_pair_and_errors(tmp_path, run):
    questions = _write(
        tmp_path / "q.json",
        {
            "questions": [
                {
                    "scene_id": "scene0000_00",
                    "situation": "I am sitting on the bed.",
                    "alternative_situation": [],
                    "question": "Is the door on my left?",
                    "question_id": 220602000002,
                },
                {
                    "scene_id": "scene0000_00",
                    "situation": "I am facing the sink.",
                    "alternative_situation": [],
                    "question": "What color is the towel?",
                    "question_id": 220602000017,
                },
            ]
        },
    )
    annotations = _write(
        tmp_path / "a.json",
        {
            "annotations": [
                {
                    "scene_id": "scene0000_00",
                    "question_type": "N/A",
                    "answer_type": "other",
                    "question_id": 220602000002,
                    "answers": [{"answer": "left", "answer_confidence": "yes", "answer_id": 1}],
                    "rotation": {"_x": 0, "_y": 0, "_z": 0, "_w": 1},
                    "position": {"x": 0.5, "y": -1.0, "z": 0},
                },
                {
                    "scene_id": "scene0000_00",
                    "question_type": "N/A",
                    "answer_type": "other",
                    "question_id": 220602000017,
                    "answers": [{"answer": "white", "answer_confidence": "yes", "answer_id": 1}],
                    "rotation": {"_x": 0, "_y": 0, "_z": 1, "_w": 0},
                    "position": {"x": 1.0, "y": 1.0, "z": 0},
                },
            ]
        },
    )
    results = _write(
        tmp_path / "r.json",
        [
            {"question_id": 220602000002, "answer_top10": ["right", "left"]},
            {"question_id": 220602000017, "answer_top10": ["white"]},
        ],
    )
    proc = run("--questions", questions, "--annotations", annotations, "--results", results)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["em1"] == 50.0 and report["em10"] == 100.0
    assert report["per_type"] == {"what": 100.0, "is": 0.0}
    # an annotated question without a prediction: an error naming it
    partial = _write(tmp_path / "p.json", [{"question_id": 220602000002, "answer_top10": ["left"]}])
    proc = run("--questions", questions, "--annotations", annotations, "--results", partial)
    assert proc.returncode == 2 and "220602000017" in proc.stderr and "no prediction" in proc.stderr
    # a prediction for a question that does not exist: an error naming it
    extra = _write(
        tmp_path / "e.json",
        json.loads((tmp_path / "r.json").read_text()) + [{"question_id": 999, "answer_top10": ["x"]}],
    )
    proc = run("--questions", questions, "--annotations", annotations, "--results", extra)
    assert proc.returncode == 2 and "999" in proc.stderr
    # SQA3D annotations without their questions file
    proc = run("--annotations", annotations, "--results", results)
    assert proc.returncode == 2 and "--questions" in proc.stderr
    # a duplicated prediction
    dup = _write(tmp_path / "d.json", json.loads((tmp_path / "r.json").read_text()) * 2)
    proc = run("--questions", questions, "--annotations", annotations, "--results", dup)
    assert proc.returncode == 2 and "more than once" in proc.stderr
