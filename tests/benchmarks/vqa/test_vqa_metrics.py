"""VQA accuracy against cases worked out by hand from the official evaluation's rules."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from mmllm.errors import DataError
from mmllm_vqa.metrics import evaluate, normalize_answer, question_accuracy


def answers(*pairs):
    """answers(("red", 2), ("blue", 8)) -> 10 annotator records with distinct answer_ids."""
    out = []
    for text, n in pairs:
        out += [{"answer": text, "answer_confidence": "yes"} for _ in range(n)]
    return [dict(a, answer_id=i + 1) for i, a in enumerate(out)]


@pytest.mark.parametrize(
    "result,gt,expected",
    [
        ("yes", answers(("yes", 10)), 1.0),
        ("Yes.", answers(("yes", 10)), 1.0),  # result is normalised: case, period
        # 2 of 10 say red: held-out red -> 1 match (1/3), held-out blue -> 2 matches (2/3): (2/3 + 16/3) / 10
        ("red", answers(("red", 2), ("blue", 8)), 0.6),
        # 3 of 10: held-out red -> 2/3, held-out blue -> 3/3: (3*2/3 + 7) / 10
        ("red", answers(("red", 3), ("blue", 7)), 0.9),
        ("red", answers(("red", 1), ("blue", 9)), 0.1 * (9 * 1 / 3)),
        ("green", answers(("red", 5), ("blue", 5)), 0.0),
        ("two", answers(("2", 10)), 1.0),  # number words -> digits in the result
        ("2", answers(("two", 10)), 0.0),  # unanimous ground truth is not normalised (official quirk)
        ("the dog", answers(("dog", 10)), 1.0),  # articles dropped
        ("dont know", answers(("don't know", 10)), 1.0),  # contraction restored
        # annotators disagree -> punctuation rule on ground truth: 'hot-dog' -> 'hot dog'
        ("hot dog", answers(("hot-dog", 4), ("hot dog", 6)), 1.0),
        ("hot dog", answers(("hot-dog", 10)), 0.0),  # unanimous: 'hot-dog' stays, never matches
        ("1,000", answers(("1000", 10)), 1.0),  # digit-comma-digit: punctuation deleted, not spaced
        ("3.5", answers(("3.5", 10)), 1.0),  # a period before a digit stays
    ],
)
def test_question_accuracy(result, gt, expected):
    assert question_accuracy(result, gt) == pytest.approx(expected)


def test_identical_answer_records_are_all_held_out():
    """The official code removes every record *equal* to the held-out one; without answer_ids
    ten identical records leave nothing to match."""
    assert question_accuracy("yes", [{"answer": "yes"}] * 10) == 0.0


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Two dogs.", "2 dogs"),
        ("a-b", "b"),
        ("Isnt it?", "isn't it"),
        ("e.g. 3.5", "eg 3.5"),
        ("none", "0"),
        ("(left)", "left"),
        ("yes !", "yes"),
        ("  red\tcar\n", "red car"),
    ],
)
def test_normalization(text, expected):
    assert normalize_answer(text) == expected


def _files(tmp_path):
    anns = [
        {"question_id": 1, "question_type": "is this", "answer_type": "yes/no", "answers": answers(("yes", 10))},
        {
            "question_id": 2,
            "question_type": "what color",
            "answer_type": "other",
            "answers": answers(("red", 2), ("blue", 8)),
        },
        {"question_id": 3, "question_type": "what color", "answer_type": "other", "answers": answers(("red", 10))},
    ]
    qs = [{"question_id": i, "image_id": i, "question": "?"} for i in (1, 2, 3)]
    (tmp_path / "a.json").write_text(json.dumps({"annotations": anns}))
    (tmp_path / "q.json").write_text(json.dumps({"questions": qs}))
    (tmp_path / "r.json").write_text(
        json.dumps(
            [
                {"question_id": 1, "answer": "yes"},
                {"question_id": 2, "answer": "red"},
                {"question_id": 3, "answer": "blue"},
            ]
        )
    )
    return anns


def test_overall_and_per_type_rounding(tmp_path):
    anns = _files(tmp_path)
    acc = evaluate(anns, {1: "yes", 2: "red", 3: "blue"})
    # (1 + 0.6 + 0) / 3 = 53.333.. ; 'what color': (0.6 + 0) / 2 = 30.0
    assert acc == {
        "overall": 53.33,
        "perQuestionType": {"is this": 100.0, "what color": 30.0},
        "perAnswerType": {"yes/no": 100.0, "other": 30.0},
    }


def test_evaluate_script_on_official_format_files(tmp_path):
    _files(tmp_path)
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "projects/vqa/evaluate.py"),
            "--questions",
            str(tmp_path / "q.json"),
            "--annotations",
            str(tmp_path / "a.json"),
            "--results",
            str(tmp_path / "r.json"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["overall"] == 53.33


@pytest.mark.parametrize(
    "results,message",
    [
        ('[{"question_id": 1, "answer": "yes"}]', "unanswered"),
        ('[{"question_id": 1, "answer": "yes"}, {"question_id": 1, "answer": "no"}]', "answered twice"),
        ('[{"question_id": "1", "answer": "yes"}]', "is not"),
        ('{"1": "yes"}', "JSON list"),
        ("[{", "malformed JSON"),
        (
            '[{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "x"}, {"question_id": 3, "answer": "x"}, {"question_id": 9, "answer": "x"}]',
            "not in the question file",
        ),
    ],
)
def test_evaluate_script_rejects_bad_results(tmp_path, capsys, results, message):
    import importlib.util

    spec = importlib.util.spec_from_file_location("vqa_evaluate_script", ROOT / "projects/vqa/evaluate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    _files(tmp_path)
    (tmp_path / "r.json").write_text(results)
    code = script.main(
        [
            "--questions",
            str(tmp_path / "q.json"),
            "--annotations",
            str(tmp_path / "a.json"),
            "--results",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 2 and message in capsys.readouterr().err


def _five_questions():
    """q1..q4 answered right (accuracy 1), q5 wrong (0): overall 4/5 = 80.0."""
    anns = [
        {"question_id": q, "question_type": "is this", "answer_type": "yes/no", "answers": answers(("yes", 10))}
        for q in (1, 2, 3, 4)
    ]
    anns.append({"question_id": 5, "question_type": "is this", "answer_type": "yes/no", "answers": answers(("no", 10))})
    return anns, {q: "yes" for q in range(1, 6)}


def test_five_questions_reference():
    anns, results = _five_questions()
    assert evaluate(anns, results)["overall"] == 80.0


def test_duplicated_annotation_record_is_refused():
    """Counted twice, q5 used to turn 80.0 into (4 + 0 + 0) / 6 = 66.67."""
    anns, results = _five_questions()
    with pytest.raises(DataError, match=r"a\.json: 1 duplicated annotation record\(s\), e\.g\. question\(s\) \[5\]"):
        evaluate(anns + [dict(anns[4])], results, source="a.json")


def test_results_must_cover_exactly_the_annotated_questions():
    """The official VQA.loadRes asserts set(resQuesIds) == set(getQuesIds()), both ways."""
    anns, results = _five_questions()
    with pytest.raises(DataError, match=r"1 annotated question\(s\) of annotations have no result, e\.g\. \[5\]"):
        evaluate(anns, {q: a for q, a in results.items() if q != 5})
    with pytest.raises(DataError, match=r"1 result\(s\) answer questions not annotated in annotations, e\.g\. \[6\]"):
        evaluate(anns, {**results, 6: "yes"})
    with pytest.raises(DataError, match=r"2 result\(s\) answer questions not annotated"):
        evaluate(anns[:3], results)  # annotations covering only some of the answered questions


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"answers": []}, r"a\.json: question 5: answers is \[\], expected a non-empty list"),
        ({"answers": None}, r"question 5: answers is None"),
        ({"answers": [{"answer_id": 1}]}, r"question 5: annotator record .* has no string 'answer'"),
        ({"question_type": None}, r"question 5: question_type is None"),
        ({"answer_type": 3}, r"question 5: answer_type is 3"),
        ({"question_id": "5"}, r"annotation 4 has question_id '5', expected an int"),
    ],
)
def test_malformed_annotation_is_named(bad, message):
    anns, results = _five_questions()
    anns[4].update(bad)
    with pytest.raises(DataError, match=message):
        evaluate(anns, results, source="a.json")


def test_empty_annotations_and_empty_answer_list():
    with pytest.raises(DataError, match="a.json: no annotated question"):
        evaluate([], {}, source="a.json")
    with pytest.raises(DataError, match="no annotator answer"):
        question_accuracy("yes", [])
