"""VQAv2 from the hub layout (HuggingFaceM4/VQAv2, lmms-lab/VQAv2): small parquet files written here in
that layout, read through ``datasets.mmllm_vqa.splits.<name>.hub`` offline, never downloaded."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT
from datasets import Dataset, Features, Image, List, Value
from PIL import Image as PILImage
from torchvision.transforms import PILToTensor

from mmllm.config import load_config
from mmllm.data.images import load_image
from mmllm.engine.evaluation import PredictionSet
from mmllm.engine.registry import build_task
from mmllm.errors import ConfigError, DataError

FEATURES = Features(
    {
        "question_type": Value("string"),
        "multiple_choice_answer": Value("string"),
        "answers": List({"answer": Value("string"), "answer_confidence": Value("string"), "answer_id": Value("int64")}),
        "image_id": Value("int64"),
        "answer_type": Value("string"),
        "question_id": Value("int64"),
        "question": Value("string"),
        "image": Image(),
    }
)


def picture(seed: int, mode: str = "RGB") -> PILImage.Image:
    channels = len(mode)
    pixels = np.random.default_rng(seed).integers(0, 256, (5, 7, channels), dtype=np.uint8)
    return PILImage.fromarray(pixels, mode)


def annotators(*answers: str) -> list[dict]:
    return [{"answer": a, "answer_confidence": "yes", "answer_id": k} for k, a in enumerate(answers, start=1)]


def rows() -> list[dict]:
    """Four questions on three images (image 7 asked twice: its image repeated, as in the hub files)."""
    return [
        {
            "question_id": 7001,
            "image_id": 7,
            "question": "What color is the car?",
            "question_type": "what color is the",
            "answer_type": "other",
            "multiple_choice_answer": "blue",
            "answers": annotators(*["red"] * 2, *["blue"] * 8),
            "image": picture(7),
        },
        {
            "question_id": 7002,
            "image_id": 7,
            "question": "Is it raining?",
            "question_type": "is it",
            "answer_type": "yes/no",
            "multiple_choice_answer": "yes",
            "answers": annotators(*["yes"] * 10),
            "image": picture(7),
        },
        {
            "question_id": 8001,
            "image_id": 8,
            "question": "Is there a dog?",
            "question_type": "is there a",
            "answer_type": "yes/no",
            "multiple_choice_answer": "yes",
            "answers": annotators(*["yes"] * 10),
            "image": picture(8, "RGBA"),
        },
        {
            "question_id": 9001,
            "image_id": 9,
            "question": "How many cats?",
            "question_type": "how many",
            "answer_type": "number",
            "multiple_choice_answer": "2",
            "answers": annotators(*["2"] * 9, "3"),
            "image": picture(9),
        },
    ]


def write_split(folder, split: str, records: list[dict], features: Features | None = FEATURES) -> None:
    """``<folder>/data/<split>-00000-of-00001.parquet``: the file name the hub gives a split."""
    columns = {k: [r[k] for r in records] for k in (features or records[0])}
    (folder / "data").mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(columns, features=features).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))


def hub_bench(tmp_path, folder, streaming=False, split="validation", **hub):
    cfg = load_config(ROOT / "configs/vqa/easyvqa_meter_smollm2.yaml", [f"run.output_dir={tmp_path / 'run'}"])
    spec = {"path": str(folder), "split": split, "layout": "vqav2", "streaming": streaming, **hub}
    cfg.datasets.mmllm_vqa = {"splits": {"val": {"hub": {"cache_dir": str(tmp_path / "cache"), **spec}}}}
    return build_task(cfg).bench


def pixels(image) -> np.ndarray:
    return PILToTensor()(image).numpy()


@pytest.fixture
def vqav2(tmp_path):
    folder = tmp_path / "VQAv2"
    write_split(folder, "validation", rows())
    return folder


@pytest.mark.parametrize("streaming", [False, True])
def test_records_equal_what_the_hub_files_hold(tmp_path, vqav2, streaming):
    split = hub_bench(tmp_path, vqav2, streaming).split("val")
    written = rows()
    assert [q["question_id"] for q in split.questions] == [r["question_id"] for r in written]
    assert [q["question"] for q in split.questions] == [r["question"] for r in written]
    assert [q["image_id"] for q in split.questions] == [r["image_id"] for r in written]
    assert split.annotations is not None
    for r in written:
        ann = split.annotations[r["question_id"]]
        assert ann["answers"] == r["answers"]
        assert (ann["question_type"], ann["answer_type"]) == (r["question_type"], r["answer_type"])
        assert ann["multiple_choice_answer"] == r["multiple_choice_answer"]
    # one image source per image id: the questions on image 7 share it
    assert split.questions[0]["image_source"] is split.questions[1]["image_source"]


@pytest.mark.parametrize("streaming", [False, True])
def test_hub_images_take_the_same_preprocessing_as_files(tmp_path, vqav2, streaming):
    from mmllm_vqa.benchmark import VQAQuestions

    items = VQAQuestions(hub_bench(tmp_path, vqav2, streaming).split("val"), PILToTensor())
    for n, r in enumerate(rows()):
        file = tmp_path / f"{r['image_id']}.png"
        r["image"].save(file)
        item = items[n]
        assert item["question_id"] == r["question_id"] and item["question"] == r["question"]
        assert item["answers"] == [a["answer"] for a in r["answers"]]
        assert np.array_equal(item["image"].numpy(), pixels(load_image(file)))  # RGBA onto white, as a file
    assert np.array_equal(items[0]["image"].numpy(), pixels(picture(7)))  # the pixels written


def test_streaming_yields_the_same_split_and_prepares_nothing(tmp_path, vqav2):
    stored = hub_bench(tmp_path / "map", vqav2).split("val")
    streamed = hub_bench(tmp_path / "stream", vqav2, streaming=True).split("val")
    assert [{k: v for k, v in q.items() if k != "image_source"} for q in streamed.questions] == [
        {k: v for k, v in q.items() if k != "image_source"} for q in stored.questions
    ]
    assert streamed.annotations == stored.annotations
    for a, b in zip(stored.questions, streamed.questions):
        assert np.array_equal(pixels(load_image(a["image_source"])), pixels(load_image(b["image_source"])))
    assert list((tmp_path / "map" / "cache").rglob("*.arrow"))  # the map-style split was prepared ...
    assert not list((tmp_path / "stream" / "cache").rglob("*.arrow"))  # ... the streamed one never


def test_official_accuracy_of_a_hand_built_case_through_the_benchmark(tmp_path, vqav2):
    bench = hub_bench(tmp_path, vqav2)
    split = bench.split("val")
    # 7001: "red" from 2 of 10 annotators: leave-one-out mean of min(1, n/3) = (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    # 7002: "yes" from all 10 -> 1; 8001: "no" from none -> 0; 9001: "two" normalises to "2", 9 of 10 -> 1
    answers = {7001: "red", 7002: "Yes", 8001: "no", 9001: "two"}

    class Items:
        def __init__(self, s):
            self.split = s

    out = tmp_path / "out"
    out.mkdir()
    metrics = bench.score(PredictionSet(list(answers), answers.items()), Items(split), "val", out)
    assert metrics["accuracy"] == pytest.approx(round(100 * (0.6 + 1 + 0 + 1) / 4, 2))
    assert metrics["acc_other"] == pytest.approx(60.0)
    assert metrics["acc_yes/no"] == pytest.approx(50.0)
    assert metrics["acc_number"] == pytest.approx(100.0)
    written = json.loads((out / "results_val.json").read_text())
    assert {r["question_id"]: r["answer"] for r in written} == answers


def test_a_split_without_answers_is_unannotated(tmp_path):
    folder = tmp_path / "VQAv2"
    test_rows = [{**r, "answers": None, "question_type": None, "answer_type": None} for r in rows()]
    write_split(folder, "test", test_rows)
    split = hub_bench(tmp_path, folder, split="test").split("val")
    assert split.annotations is None and len(split.questions) == 4


def test_limit_and_eval_limit_cut_a_hub_split(tmp_path, vqav2):
    assert [q["question_id"] for q in hub_bench(tmp_path, vqav2, limit=2).split("val").questions] == [7001, 7002]
    streamed = hub_bench(tmp_path / "s", vqav2, streaming=True, limit=3).split("val")
    assert [q["question_id"] for q in streamed.questions] == [7001, 7002, 8001]


def test_refusals_name_what_is_wrong(tmp_path):
    def bench_of(records, features=FEATURES, name="d", **hub):
        folder = tmp_path / name
        write_split(folder, "validation", records, features)
        return hub_bench(tmp_path / name, folder, **hub)

    no_question = Features({k: v for k, v in FEATURES.items() if k != "question"})
    with pytest.raises(DataError, match=r"lacks column\(s\) \['question'\]"):
        bench_of(rows(), no_question, "missing").split("val")
    no_types = Features({k: v for k, v in FEATURES.items() if k not in ("question_type", "answer_type")})
    with pytest.raises(DataError, match=r"has answers but lacks column\(s\) \['question_type', 'answer_type'\]"):
        bench_of(rows(), no_types, "types").split("val")
    twice = rows()
    twice[2]["question_id"] = 7001
    with pytest.raises(DataError, match="question 7001 appears twice"):
        bench_of(twice, name="dup").split("val")
    empty = rows()
    empty[3]["answers"] = []
    with pytest.raises(DataError, match=r"1 question\(s\) have empty answers .*\[9001\]"):
        bench_of(empty, name="empty").split("val")
    with pytest.raises(DataError, match="has no rows"):
        bench_of(rows(), name="where", where={"answer_type": "colour"}).split("val")
    with pytest.raises(DataError, match="has no rows"):
        bench_of([], name="zero").split("val")
    with pytest.raises(DataError, match="unknown VQA layout 'vqa_v3'"):
        bench_of(rows(), name="layout", layout="vqa_v3").split("val")
    with pytest.raises(DataError, match="split 'train'.*cannot be loaded"):
        bench_of(rows(), name="split", split="train").split("val")


def test_a_split_names_files_or_a_hub_split_never_both(tmp_path, vqav2):
    cfg = load_config(ROOT / "configs/vqa/easyvqa_meter_smollm2.yaml", [f"run.output_dir={tmp_path / 'run'}"])
    hub = {"path": str(vqav2), "split": "validation", "layout": "vqav2"}
    cfg.datasets.mmllm_vqa = {"splits": {"val": {"hub": hub, "questions": "q.json"}}}
    with pytest.raises(ConfigError, match="either questions .* or hub"):
        build_task(cfg)
