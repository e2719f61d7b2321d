"""A model added to the VQA benchmark as one module (tests/toy_vqa_model.py) and one config: it trains through
``mmllm train --import`` and through LAVIS's runner (run.task = the benchmark, model.arch = the model), and is
scored by the benchmark: its results file, re-scored by the official-format file evaluator, gives the same
accuracy as the run's summary."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import yaml
from conftest import ROOT
from test_task_contract import BLOCK, RUN
from tiny_vqa import write_images_and_qa


def _config(tmp_path, **run) -> dict:
    data = write_images_and_qa(tmp_path / "data", n_images=12)
    split = {
        "questions": str(data / "questions.json"),
        "annotations": str(data / "annotations.json"),
        "image_root": str(data / "images"),
    }
    return {
        "model": {"arch": "toy_vqa", "width": 16, "answers": 5, "llm_block": BLOCK},
        "datasets": {"mmllm_vqa": {"image_pattern": "{image_id}.png", "splits": {"train": split, "test": split}}},
        "run": {
            **RUN,
            "task": "mmllm_vqa",
            "output_dir": str(tmp_path / "run"),
            "max_steps": 40,
            "batch_size_train": 8,
            "init_lr": 0.05,
            "warmup_ratio": 0.0,
            **run,
        },
    }


def test_toy_model_on_the_vqa_benchmark_trains_through_mmllm_train(tmp_path, capsys):
    from mmllm.cli import main as mmllm

    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path)))
    assert mmllm(["train", "--config", str(path), "--import", "toy_vqa_model"]) == 0, capsys.readouterr().err[-3000:]
    out = tmp_path / "run"
    summary = json.loads((out / "summary.json").read_text())
    # run.task named the benchmark, model.arch the model: the pair that ran is recorded
    assert summary["task"] == "toy_vqa_pair" and summary["steps"] == 40
    assert json.loads((out / "config.json").read_text())["run"]["task"] == "toy_vqa_pair"
    losses = [
        json.loads(line)["loss"]
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if json.loads(line).get("split") == "train"
    ]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    # the benchmark's result file, every question once, scored by the official-format evaluator on its own
    data = tmp_path / "data"
    results = json.loads((out / "results_test.json").read_text())
    questions = json.loads((data / "questions.json").read_text())["questions"]
    assert sorted(r["question_id"] for r in results) == sorted(q["question_id"] for q in questions)
    official = subprocess.run(
        [
            sys.executable,
            str(ROOT / "projects/vqa/evaluate.py"),
            "--questions",
            str(data / "questions.json"),
            "--annotations",
            str(data / "annotations.json"),
            "--results",
            str(out / "results_test.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert official.returncode == 0, official.stderr[-2000:]
    assert json.loads(official.stdout)["overall"] == summary["test_accuracy"]
    # 12 images, 3 questions each (colour, a wrong "is it", the right "is it"): beyond always answering "yes"
    assert summary["test_accuracy"] > 100 / 3 + 1


def test_toy_model_on_the_vqa_benchmark_trains_through_the_lavis_runner(tmp_path):
    import toy_vqa_model  # noqa: F401 - registers the model in this process, as --import does

    from mmllm.lavis.train import main as lavis_main

    cfg = _config(tmp_path, runner="runner_deepspeed", max_epoch=1, max_steps=2)
    cfg["model"].update(
        arch="mmllm_toy_vqa", model_type="default"
    )  # LAVIS's name of the model: run.task stays the benchmark's
    path = tmp_path / "lavis.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert lavis_main(["--cfg-path", str(path)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["task"] == "toy_vqa_pair" and summary["steps"] == 2 and math.isfinite(summary["test_accuracy"])
