"""The evaluate.py scripts on bad inputs: one ``error:`` line on stderr naming the file, exit 2, no
traceback and nothing on stdout, instead of a silently wrong score."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from mmllm.console import print_report
from mmllm.errors import DataError


def _script(project: str):
    path = ROOT / f"projects/{project}/evaluate.py"
    spec = importlib.util.spec_from_file_location(f"{project}_evaluate_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _one_error_line(capsys, code: int, *needles: str) -> str:
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------------------- retrieval


def _retrieval_files(tmp_path, i2t=None, t2i=None):
    """3 images with 2, 1, 1 captions -> texts 0,1 | 2 | 3; perfect scores unless given."""
    ann = [
        {"image": "a.png", "caption": ["a red circle", "a circle"]},
        {"image": "b.png", "caption": "a square"},
        {"image": "c.png", "caption": ["a star"]},
    ]
    (tmp_path / "test.json").write_text(json.dumps(ann))
    truth = np.zeros((3, 4))
    truth[[0, 0, 1, 2], [0, 1, 2, 3]] = 1.0
    np.savez(
        tmp_path / "scores.npz", scores_i2t=truth if i2t is None else i2t, scores_t2i=truth.T if t2i is None else t2i
    )
    return ["--scores", str(tmp_path / "scores.npz"), "--annotation", str(tmp_path / "test.json")]


def test_retrieval_script_scores_a_hand_made_case(tmp_path, capsys):
    # image 0 ranks texts 2, 3, 1, 0: its best caption (text 1) is 3rd -> text R@1 = 2/3, R@5 = R@10 = 1;
    # text 3 ranks image 0 before its own image 2 -> image R@1 = 3/4, R@5 = 1
    i2t = np.array([[0.1, 0.2, 0.9, 0.8], [0, 0, 1, 0], [0, 0, 0, 1]])
    t2i = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0.9, 0, 0.5]])
    code = _script("retrieval").main(_retrieval_files(tmp_path, i2t, t2i))
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads(out)
    assert report["txt_r1"] == pytest.approx(200 / 3) and report["txt_r5"] == 100.0 and report["txt_r10"] == 100.0
    assert report["img_r1"] == 75.0 and report["img_r5"] == 100.0
    assert report["r_mean"] == pytest.approx(1625 / 18)  # ((200/3 + 200) / 3 + 275 / 3) / 2


@pytest.mark.parametrize(
    "case,needles",
    [
        ("nan_but_true_pairs", ["scores.npz against", "scores_i2t has 8 non-finite entries of 12 (8 NaN, 0 inf)"]),
        ("all_nan", ["scores_i2t has 12 non-finite entries of 12 (12 NaN, 0 inf)"]),
        ("inf_t2i", ["scores_t2i has 1 non-finite entry of 12 (0 NaN, 1 inf)"]),
        ("empty_annotation", ["test.json: the annotation lists no image"]),
        ("transposed", ["scores_i2t has shape (4, 3), the annotation implies (3, 4) [images x texts]"]),
        ("missing_scores", ["nowhere.npz: not a readable .npz file"]),
        ("missing_annotation", ["annotation file", "nowhere.json does not exist"]),
        ("invalid_json", ["test.json: malformed JSON"]),
        ("dict_annotation", ["test.json: expected a JSON list"]),
        ("npy_not_npz", ["scores.npz: a single array"]),
        ("lacks_key", ["scores.npz: lacks ['scores_t2i']"]),
        ("not_a_zip", ["scores.npz: not a readable .npz file"]),
    ],
)
def test_retrieval_script_refuses(tmp_path, capsys, case, needles):
    args = _retrieval_files(tmp_path)
    truth = np.load(tmp_path / "scores.npz")["scores_i2t"]
    if case == "nan_but_true_pairs":
        nan = np.where(truth == 1, 1.0, np.nan)
        args = _retrieval_files(tmp_path, nan, nan.T)
    elif case == "all_nan":
        args = _retrieval_files(tmp_path, np.full((3, 4), np.nan), np.full((4, 3), np.nan))
    elif case == "inf_t2i":
        t2i = truth.T.copy()
        t2i[1, 2] = np.inf
        args = _retrieval_files(tmp_path, None, t2i)
    elif case == "empty_annotation":
        (tmp_path / "test.json").write_text("[]")
        np.savez(tmp_path / "scores.npz", scores_i2t=np.zeros((0, 0)), scores_t2i=np.zeros((0, 0)))
    elif case == "transposed":
        args = _retrieval_files(tmp_path, truth.T, truth.T)
    elif case == "missing_scores":
        args[1] = str(tmp_path / "nowhere.npz")
    elif case == "missing_annotation":
        args[3] = str(tmp_path / "nowhere.json")
    elif case == "invalid_json":
        (tmp_path / "test.json").write_text('[{"image": "a.png", ')
    elif case == "dict_annotation":
        (tmp_path / "test.json").write_text('{"images": []}')
    elif case == "npy_not_npz":
        with open(tmp_path / "scores.npz", "wb") as handle:
            np.save(handle, truth)
    elif case == "lacks_key":
        np.savez(tmp_path / "scores.npz", scores_i2t=truth)
    elif case == "not_a_zip":
        (tmp_path / "scores.npz").write_text("scores")
    code = _script("retrieval").main(args)
    _one_error_line(capsys, code, *needles)


def test_retrieval_script_exit_code_without_traceback(tmp_path):
    nan = np.full((3, 4), np.nan)
    args = _retrieval_files(tmp_path, nan, nan.T)
    out = subprocess.run(
        [sys.executable, str(ROOT / "projects/retrieval/evaluate.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr and "scores_i2t" in out.stderr


# ---------------------------------------------------------------------------------------------- VQA


def _answers(text, n=10):
    return [{"answer": text, "answer_confidence": "yes", "answer_id": i + 1} for i in range(n)]


def _vqa_files(tmp_path, qids=(1, 2, 3, 4, 5), ann_qids=(1, 2, 3, 4, 5), res_qids=(1, 2, 3, 4, 5)):
    """Questions 1..4 annotated 'yes', 5 annotated 'no'; every result says 'yes' -> overall 80.0."""
    qs = [{"question_id": q, "image_id": q, "question": "is it?"} for q in qids]
    anns = [
        {
            "question_id": q,
            "question_type": "is it",
            "answer_type": "yes/no",
            "answers": _answers("no" if q == 5 else "yes"),
        }
        for q in ann_qids
    ]
    (tmp_path / "q.json").write_text(json.dumps({"questions": qs}))
    (tmp_path / "a.json").write_text(json.dumps({"annotations": anns}))
    (tmp_path / "r.json").write_text(json.dumps([{"question_id": q, "answer": "yes"} for q in res_qids]))
    return [
        "--questions",
        str(tmp_path / "q.json"),
        "--annotations",
        str(tmp_path / "a.json"),
        "--results",
        str(tmp_path / "r.json"),
    ]


def test_vqa_script_reference(tmp_path, capsys):
    code = _script("vqa").main(_vqa_files(tmp_path))
    assert code == 0 and json.loads(capsys.readouterr().out)["overall"] == 80.0


def _edit(path, field, change):
    data = json.loads(path.read_text())
    change(data[field])
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "case,needles",
    [
        # used to score 66.67 (q5 counted twice)
        ("duplicated_annotation", ["a.json: 1 duplicated annotation record(s)", "[5]"]),
        # used to score 100.0 over the annotated q1..q4 only
        ("annotations_cover_some_questions", ["1 question(s) of", "q.json have no annotation in", "a.json", "[5]"]),
        # used to score 100.0 over q1..q4, ignoring the annotated q5
        ("results_cover_some_annotated", ["a.json annotates 1 question(s) not in", "q.json", "[5]"]),
        ("empty_answers", ["a.json: question 2: answers is [], expected a non-empty list"]),
        ("empty_questions", ["q.json: the question list is empty"]),
        ("duplicated_question", ["q.json: 1 question id(s) listed more than once, e.g. [3]"]),
        ("duplicated_result", ["r.json: question 1 answered twice"]),
        ("annotation_without_id", ["a.json: annotation record 0 has question_id None"]),
        ("missing_questions", ["questions file", "nowhere.json does not exist"]),
        ("missing_annotations", ["annotations file", "nowhere.json does not exist"]),
        ("missing_results", ["results file", "nowhere.json does not exist"]),
        ("invalid_questions", ["q.json: malformed JSON"]),
        ("invalid_annotations", ["a.json: malformed JSON"]),
        ("invalid_results", ["r.json: malformed JSON"]),
        ("results_dict", ["r.json: the official result format is a JSON list"]),
        ("annotations_list", ["a.json: expected a JSON object with a list under 'annotations'"]),
    ],
)
def test_vqa_script_refuses(tmp_path, capsys, case, needles):
    args = _vqa_files(tmp_path)
    q, a, r = (tmp_path / n for n in ("q.json", "a.json", "r.json"))
    if case == "duplicated_annotation":
        _edit(a, "annotations", lambda anns: anns.append(dict(anns[4])))
    elif case == "annotations_cover_some_questions":
        args = _vqa_files(tmp_path, ann_qids=(1, 2, 3, 4))
    elif case == "results_cover_some_annotated":
        args = _vqa_files(tmp_path, qids=(1, 2, 3, 4), res_qids=(1, 2, 3, 4))
    elif case == "empty_answers":
        _edit(a, "annotations", lambda anns: anns[1].update(answers=[]))
    elif case == "empty_questions":
        args = _vqa_files(tmp_path, qids=())
    elif case == "duplicated_question":
        _edit(q, "questions", lambda qs: qs.append(dict(qs[2])))
    elif case == "duplicated_result":
        r.write_text(json.dumps([{"question_id": n, "answer": "yes"} for n in (1, 1, 2, 3, 4, 5)]))
    elif case == "annotation_without_id":
        _edit(a, "annotations", lambda anns: anns[0].pop("question_id"))
    elif case.startswith("missing_"):
        args[{"questions": 1, "annotations": 3, "results": 5}[case[len("missing_") :]]] = str(tmp_path / "nowhere.json")
    elif case.startswith("invalid_"):
        {"questions": q, "annotations": a, "results": r}[case[len("invalid_") :]].write_text('{"x": [')
    elif case == "results_dict":
        r.write_text(json.dumps({str(n): "yes" for n in range(1, 6)}))
    elif case == "annotations_list":
        a.write_text(json.dumps(json.loads(a.read_text())["annotations"]))
    code = _script("vqa").main(args)
    _one_error_line(capsys, code, *needles)


def test_vqa_script_exit_code_without_traceback(tmp_path):
    args = _vqa_files(tmp_path, ann_qids=(1, 2, 3, 4))
    out = subprocess.run(
        [sys.executable, str(ROOT / "projects/vqa/evaluate.py"), *args], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr and "have no annotation" in out.stderr


# ------------------------------------------------------------------------------------- print_report


def test_print_report_refuses_non_finite_report(capsys):
    """json.dumps would print the invalid-JSON token NaN with exit 0."""
    code = print_report(lambda: {"r_mean": float("nan")})
    _one_error_line(capsys, code, "non-finite")


def test_print_report_one_line_for_os_errors_and_multiline_messages(capsys):
    def missing():
        raise FileNotFoundError(2, "No such file or directory", "/nowhere/x.json")

    _one_error_line(capsys, print_report(missing), "/nowhere/x.json")

    def multiline():
        raise DataError("a.json: inconsistent records\nfirst detail\nsecond detail")

    _one_error_line(capsys, print_report(multiline), "a.json: inconsistent records first detail second detail")
