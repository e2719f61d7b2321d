"""Point-cloud metrics on hand-computed cases, the evaluate CLI, and a 2-step training through `mmllm train`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from tiny_llms import random_llama_block

from mmllm.errors import DataError
from vision.pointcloud.evaluate import classification_metrics, evaluate_files
from vision.pointcloud.evaluate import main as evaluate_main

ROOT = Path(__file__).resolve().parents[3]
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def test_metrics_hand_computed():
    # class 0: 2 of 3 right, class 1: 1 of 1, class 2: 1 of 2 -> OA 4/6 = 66.67, mAcc (66.67 + 100 + 50) / 3 = 72.22
    m = classification_metrics([0, 0, 0, 1, 2, 2], [0, 0, 1, 1, 2, 0])
    assert m["oa"] == pytest.approx(400 / 6)
    assert m["macc"] == pytest.approx((200 / 3 + 100 + 50) / 3)
    assert m["per_class"] == pytest.approx({"0": 200 / 3, "1": 100.0, "2": 50.0})
    # a class that is only predicted, never a label, has no accuracy of its own: mAcc over labelled classes
    m = classification_metrics(["a", "a", "b"], ["a", "c", "c"])
    assert (m["oa"], m["macc"]) == (pytest.approx(100 / 3), pytest.approx(25.0))
    with pytest.raises(DataError, match="no samples"):
        classification_metrics([], [])


def write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_evaluate_cli_and_bad_inputs(tmp_path, capsys):
    ann = write(
        tmp_path / "a.json", [{"id": "x", "label": "duck"}, {"id": "y", "label": "mug"}, {"id": "z", "label": 1}]
    )
    res = write(tmp_path / "r.json", [{"id": "z", "pred": "mug"}, {"id": "x", "pred": 0}, {"id": "y", "pred": "duck"}])
    classes = tmp_path / "names.txt"
    classes.write_text("duck\nmug\n")
    # duck: x right (index 0 = duck); mug: y wrong, z right -> OA 2/3, mAcc (100 + 50) / 2 = 75
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vision.pointcloud.evaluate",
            "--annotations",
            str(ann),
            "--results",
            str(res),
            "--classes",
            str(classes),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["oa"] == pytest.approx(200 / 3) and report["macc"] == pytest.approx(75.0)
    assert report["per_class"] == pytest.approx({"duck": 100.0, "mug": 50.0})
    with pytest.raises(DataError, match="mix class names and indices"):
        evaluate_files(ann, res)
    cases = {
        "dup": ([{"id": "x", "pred": "duck"}, {"id": "x", "pred": "mug"}], "appears more than once"),
        "missing": ([{"id": "x", "pred": "duck"}], r"no prediction for 2 annotated id\(s\)"),
        "unknown": (
            [
                {"id": "x", "pred": "duck"},
                {"id": "y", "pred": "duck"},
                {"id": "z", "pred": "duck"},
                {"id": "w", "pred": "duck"},
            ],
            "ids not in the annotations",
        ),
        "range": ([{"id": "x", "pred": 2}, {"id": "y", "pred": 0}, {"id": "z", "pred": 0}], "class index 2, outside"),
        "name": ([{"id": "x", "pred": "cow"}, {"id": "y", "pred": 0}, {"id": "z", "pred": 0}], "'cow', which is not"),
        "float": ([{"id": "x", "pred": 0.5}], "expected a class name or index"),
    }
    for name, (records, message) in cases.items():
        with pytest.raises(DataError, match=message):
            evaluate_files(ann, write(tmp_path / f"{name}.json", records), classes)
    capsys.readouterr()
    assert evaluate_main(["--annotations", str(ann), "--results", str(tmp_path / "dup.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "appears more than once" in err and err.count("\n") == 1


def write_split(path, n, rng, classes=3, points=64):
    # class c: a sphere of radius 0.3 + 0.3 c (a learnable but irrelevant-here signal)
    labels = np.arange(n) % classes
    data = rng.normal(size=(n, points, 3))
    data = data / np.linalg.norm(data, axis=2, keepdims=True) * (0.3 + 0.3 * labels)[:, None, None]
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data.astype(np.float32))
        f.create_dataset("label", data=labels.astype(np.int64))


def test_two_steps_through_mmllm_train(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("test", 6), ("test_hard", 5)):
        write_split(tmp_path / f"{split}.h5", n, rng)
    (tmp_path / "shape_names.txt").write_text("small\nmedium\nlarge\n")
    cfg = {
        "model": {
            "num_groups": 8,
            "group_size": 8,
            "dim": 16,
            "depth": 2,
            "num_heads": 2,
            "tokenizer_hidden": 8,
            "pos_hidden": 8,
            "head_hidden": 8,
            "insert_after": 1,
            "llm_block": random_llama_block(),
        },
        "datasets": {
            "mmllm_pointcloud_cls": {
                "root": str(tmp_path),
                "num_points": 32,
                "up_axis": "z",
                "splits": {"train": "train.h5", "test": "test.h5", "test_hard": "test_hard.h5"},
            }
        },
        "run": {
            "task": "mmllm_pointcloud_cls",
            "output_dir": str(tmp_path / "run"),
            "max_steps": 2,
            "batch_size_train": 4,
            "batch_size_eval": 4,
            "precision": "fp32",
            "log_every": 1,
        },
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update(DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mmllm.cli", "train", "--config", str(tmp_path / "cfg.yaml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["task"] == "mmllm_pointcloud_cls"
    losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in losses if m.get("split") == "train"] == [1, 2]
    # the run's own result files, re-scored by the evaluate CLI's code, give the summary's numbers
    for split, key in (("test", "test"), ("test_hard", "test_hard")):
        again = evaluate_files(
            run / f"annotations_{split}.json", run / f"results_{split}.json", tmp_path / "shape_names.txt"
        )
        assert again["oa"] == pytest.approx(summary[f"{key}_oa"]) and again["macc"] == pytest.approx(
            summary[f"{key}_macc"]
        )
        assert again["num_samples"] == {"test": 6, "test_hard": 5}[split]
