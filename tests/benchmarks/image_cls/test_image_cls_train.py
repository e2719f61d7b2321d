"""Image classification through the shared engine: 2 training steps with `mmllm train`, then the
evaluate CLI on the saved model gives the run's own test numbers."""

import json
import os
import subprocess
import sys

import yaml
from conftest import ROOT
from test_image_cls import TINY_VIT, image_tree
from tiny_llms import save_tiny

from vision.classification.corruptions import corrupt_folder

DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


def clean_env():
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env["DS_ACCELERATOR"] = "cpu"
    return env


def test_two_steps_through_mmllm_train_then_evaluate_checkpoint(tmp_path):
    root = image_tree(tmp_path / "data")
    corrupt_folder(root / "test", root / "corrupted", names=("contrast",))
    llm = tmp_path / "llm"
    save_tiny("llama", llm)
    out = tmp_path / "run"
    config = {
        "model": {
            "vit": "vit_tiny_patch16_224",
            "vit_kwargs": TINY_VIT,
            "insert_after": 1,
            "llm_block": {"kind": "llm_block", "source": str(llm), "dtype": "float32"},
        },
        "datasets": {
            "mmllm_image_cls": {
                "root": str(root),
                "corrupted": "corrupted",
                "augment": False,
                "mean": [0.5] * 3,
                "std": [0.5] * 3,
                "crop_pct": 1.0,
            }
        },
        "run": {
            "task": "mmllm_image_cls",
            "output_dir": str(out),
            "max_steps": 2,
            "batch_size_train": 4,
            "batch_size_eval": 8,
            "precision": "fp32",
            "init_lr": 1e-3,
            "deepspeed_config": str(ROOT / "configs/deepspeed/zero0.json"),
        },
    }
    path = tmp_path / "cls.yaml"
    path.write_text(yaml.safe_dump(config))
    subprocess.run(
        [sys.executable, "-m", "mmllm.cli", "train", "--config", str(path)],
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
        cwd=tmp_path,
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "mmllm_image_cls" and summary["steps"] == 2
    assert set(summary) >= {"test_top1", "test_corrupted_top1", "test_corrupted_contrast_top1"}
    assert (out / "predictions_test.npz").is_file()
    evaluated = subprocess.run(
        [
            sys.executable,
            "-m",
            "vision.classification.evaluate",
            "--checkpoint",
            str(out / "model_final.pt"),
            "--out",
            str(tmp_path / "eval"),
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
        cwd=tmp_path,
    )
    report = json.loads(evaluated.stdout)
    assert report["top1"] == summary["test_top1"]
    assert report["corrupted_top1"] == summary["test_corrupted_top1"]
    # the information-filtering analysis of the same run: maps before/after the block, overlays, mIoU
    analysed = subprocess.run(
        [sys.executable, "-m", "mmllm.cli", "analyze", "--run", str(out), "--num", "4", "--out", str(tmp_path / "an")],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert analysed.returncode == 0, analysed.stderr[-2000:]
    result = json.loads((tmp_path / "an" / "analysis.json").read_text())
    assert result["images"] == 4
    for key in ("miou_magnitude_before", "miou_magnitude_after", "miou_frequency_before", "miou_frequency_after"):
        assert 0.0 <= result[key] <= 100.0
    assert (tmp_path / "an" / "maps_000.png").stat().st_size > 0
    missing = subprocess.run(
        [sys.executable, "-m", "mmllm.cli", "analyze", "--run", str(tmp_path)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert missing.returncode == 2 and "model_final.pt" in missing.stderr
