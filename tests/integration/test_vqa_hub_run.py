"""A whole ``mmllm train`` run on VQA splits read from a local folder in the hub layout (lmms-lab/VQAv2's
columns and file names), offline: the toy model (tests/toy_vqa_model.py) trains and is scored, and the
results it wrote, re-scored from the original JSON files by the official-format evaluator, give the accuracy
of the run's summary."""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import yaml
from datasets import Dataset, Features, Image, List, Value
from PIL import Image as PILImage
from test_task_contract import BLOCK, RUN
from tiny_vqa import write_images_and_qa

from mmllm.jsonio import read_json

FEATURES = Features(
    {
        "question_id": Value("int64"),
        "question": Value("string"),
        "image_id": Value("int64"),
        "image": Image(),
        "answers": List({"answer": Value("string"), "answer_confidence": Value("string"), "answer_id": Value("int64")}),
        "question_type": Value("string"),
        "answer_type": Value("string"),
    }
)


def to_hub_layout(data, hub, split: str) -> None:
    """The tiny VQAv2 files as one parquet file of the hub layout (each row holds its image)."""
    questions = read_json(data / "questions.json", "questions")["questions"]
    annotations = {a["question_id"]: a for a in read_json(data / "annotations.json", "annotations")["annotations"]}
    columns: dict[str, list] = {k: [] for k in FEATURES}
    for q in questions:
        a = annotations[q["question_id"]]
        for key in ("question_id", "question", "image_id"):
            columns[key].append(q[key])
        with PILImage.open(data / "images" / f"{q['image_id']}.png") as image:
            columns["image"].append(image.copy())  # the image's bytes in the row, as on the hub
        for key in ("answers", "question_type", "answer_type"):
            columns[key].append(a[key])
    (hub / "data").mkdir(parents=True, exist_ok=True)
    file = hub / "data" / f"{split}-00000-of-00001.parquet"
    Dataset.from_dict(columns, features=FEATURES).to_parquet(str(file))
    assert pq.read_table(file).column("image")[0].as_py()["path"] is None  # no path back to the image files


def test_a_run_trains_and_scores_on_a_hub_layout_folder(tmp_path, capsys):
    from mmllm.cli import main as mmllm
    from mmllm_vqa.metrics import evaluate

    data = write_images_and_qa(tmp_path / "data", n_images=12)
    hub = tmp_path / "VQAv2"
    for split in ("train", "validation"):
        to_hub_layout(data, hub, split)
    cache = str(tmp_path / "cache")
    splits = {
        "train": {"hub": {"path": str(hub), "split": "train", "layout": "vqav2", "cache_dir": cache}},
        "test": {"hub": {"path": str(hub), "split": "validation", "layout": "vqav2", "streaming": True}},
    }
    config = {
        "model": {"arch": "toy_vqa", "width": 16, "answers": 5, "llm_block": BLOCK},
        "datasets": {"mmllm_vqa": {"splits": splits}},
        "run": {**RUN, "task": "mmllm_vqa", "output_dir": str(tmp_path / "run"), "max_steps": 20},
    }
    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump(config))
    assert mmllm(["train", "--config", str(path), "--import", "toy_vqa_model"]) == 0, capsys.readouterr().err[-3000:]
    out = tmp_path / "run"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 20 and math.isfinite(summary["test_accuracy"])
    results = {r["question_id"]: r["answer"] for r in json.loads((out / "results_test.json").read_text())}
    annotations = read_json(data / "annotations.json", "annotations")["annotations"]
    assert sorted(results) == sorted(a["question_id"] for a in annotations)  # every question once
    assert evaluate(annotations, results)["overall"] == summary["test_accuracy"]
