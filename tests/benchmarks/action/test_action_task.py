"""Action recognition through the engine: the registered variants' configs, config consistency, and two
training steps through ``mmllm train`` whose score file and checkpoint re-score to the summary's numbers."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import ROOT
from tiny_llms import random_llama_block

from mmllm.config import load_config
from mmllm.engine.registry import get_task
from mmllm.errors import ConfigError
from vision.action import clips
from vision.action.evaluate import from_checkpoint, from_scores

DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


def test_registered_variants_validate():
    entry = get_task("mmllm_action")
    assert (entry.metric, entry.higher_is_better, entry.model_arch) == ("top1", True, "mmllm_videovit_cls")
    assert set(entry.variants) == {"block", "no_block", "single_frame"}
    for name, overrides in entry.variants.items():
        task = entry.build(load_config(entry.default_config, list(overrides)))
        assert task.model_cfg.num_frames == task.data_cfg.num_frames == (1 if name == "single_frame" else 8)
        assert (task.model_cfg.llm_block["kind"] == "none") == (name == "no_block")
    with pytest.raises(ConfigError, match=r"model.num_frames \(1\) must equal datasets.mmllm_action.num_frames \(8\)"):
        entry.build(load_config(entry.default_config, ["model.num_frames=1", "model.tubelet_size=1"]))


def test_label_smoothing_is_a_model_option_as_in_every_classifier():
    """One place for the loss's smoothing (model.label_smoothing, as image and point-cloud classification); the
    loss uses it: cross-entropy against smoothed targets, computed by hand."""
    import torch

    entry = get_task("mmllm_action")
    task = entry.build(load_config(entry.default_config, ["model.label_smoothing=0.2"]))
    assert task.model_cfg.label_smoothing == 0.2
    with pytest.raises(ConfigError, match="run.label_smoothing moved to model.label_smoothing"):
        entry.build(load_config(entry.default_config, ["run.label_smoothing=0.1"]))
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])

    class Fixed(torch.nn.Module):
        def forward(self, video):
            return logits

    loss, _ = task.training_loss(Fixed(), {"video": torch.zeros(2), "labels": torch.tensor([0, 2])})
    k, eps = 3, 0.2
    target = torch.full((2, k), eps / k)
    target[0, 0] += 1 - eps
    target[1, 2] += 1 - eps
    assert loss.item() == pytest.approx(-(target * logits.log_softmax(-1)).sum(-1).mean().item(), rel=1e-6)


def test_two_steps_through_mmllm_train(tmp_path):
    root = clips.generate(tmp_path / "clips", clips.ClipSettings(train=8, val=2, test=6, seed=2))
    split = lambda name: {"annotation": str(root / f"{name}.json"), "video_root": str(root / "videos")}  # noqa: E731
    cfg = {
        "model": {
            "num_classes": 10,
            "img_size": 32,
            "num_frames": 8,
            "patch_size": 16,
            "tubelet_size": 2,
            "embed_dim": 16,
            "depth": 2,
            "num_heads": 2,
            "insert_after": 0,
            "llm_block": random_llama_block(),
        },
        "datasets": {
            "mmllm_action": {
                "labels": str(root / "labels.json"),
                "video_ext": "mp4",
                "num_frames": 8,
                "input_size": 32,
                "splits": {"train": split("train"), "test": split("test")},
                "test_num_clips": 2,
                "test_num_crops": 1,
                "train_crop_scale": [0.7, 1.0],
            }
        },
        "run": {
            "task": "mmllm_action",
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
    assert summary["steps"] == 2 and summary["task"] == "mmllm_action"
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in logged if m.get("split") == "train"]
    assert [m["step"] for m in train] == [1, 2] and all(np.isfinite(m["loss"]) for m in train)
    with np.load(run / "scores_test.npz") as npz:
        assert npz["logits"].shape == (6, 2, 10) and npz["labels"].shape == (6,)
        assert not np.allclose(npz["logits"][:, 0], npz["logits"][:, 1])  # the 2 clips: even and odd frames
        assert npz["labels"].tolist() == [
            clips.TEMPLATES.index(r["template"]) for r in json.loads((root / "test.json").read_text())
        ]
    again = from_scores(run / "scores_test.npz")
    assert again["top1"] == summary["test_top1"] and again["top5"] == summary["test_top5"]
    assert again["num_views"] == 2
    rebuilt = from_checkpoint(str(run / "model_final.pt"), "test", str(tmp_path / "re"))
    assert rebuilt["top1"] == summary["test_top1"]
