"""Two training steps of the motion task through ``mmllm train`` on tiny simulated data; the forecasts file
it writes re-scores to the summary's numbers with the evaluation script's code."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import ROOT
from tiny_llms import random_llama_block

from vision.motion.evaluate import evaluate_file
from vision.motion.simulate import write_dataset

DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


def test_two_steps_through_mmllm_train(tmp_path):
    data = write_dataset(tmp_path / "sim", {"train": 8, "val": 3, "test": 5}, seed=4)
    cfg = {
        "model": {
            "hidden_dim": 16,
            "dim": 16,
            "num_heads": 2,
            "num_modes": 6,
            "llm_block": random_llama_block(),
        },
        "datasets": {"mmllm_motion": {"root": str(data), "max_lanes": 8, "lane_radius": 30.0}},
        "run": {
            "task": "mmllm_motion",
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
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["task"] == "mmllm_motion"
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in logged if m.get("split") == "train"]
    assert [m["step"] for m in train] == [1, 2] and all(np.isfinite(m["loss"]) for m in train)
    with np.load(run / "forecasts_test.npz") as npz:
        assert npz["forecasts"].shape == (5, 6, 30, 2) and npz["gt"].shape == (5, 30, 2)
        assert npz["probabilities"].sum(1) == pytest.approx(np.ones(5), abs=1e-5)
        assert npz["seq_ids"].tolist() == ["1", "2", "3", "4", "5"]
    again = evaluate_file(run / "forecasts_test.npz")
    for key in ("minADE", "minFDE", "MR", "brier-minFDE"):
        assert again[key] == pytest.approx(summary[f"test_{key}"])
    assert 0.0 <= summary["test_MR"] <= 1.0
