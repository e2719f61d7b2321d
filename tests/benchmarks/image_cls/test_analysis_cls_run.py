"""`mmllm analyze` end to end on image classification: a 2-step `mmllm train` run, then the three §6 maps
(magnitude, frequency, CLS attention of the ViT's last block) on digits composited onto a texture, and the
command's refusals (Pang et al., ICLR 2024, §6)."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT
from test_image_cls import TINY_VIT, image_tree
from tiny_llms import save_tiny

DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


def env():
    out = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    out.update(DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    out.setdefault("OMP_NUM_THREADS", "1")  # a 2-core machine: two thread pools per core only slow each other
    return out


def mmllm(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "mmllm.cli", *map(str, args)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


def train(tmp, name, block):
    config = {
        "model": {"vit": "vit_tiny_patch16_224", "vit_kwargs": TINY_VIT, "llm_block": block},
        "datasets": {
            "mmllm_image_cls": {
                "root": str(tmp / "data"),
                "augment": False,
                "mean": [0.5] * 3,
                "std": [0.5] * 3,
                "crop_pct": 1.0,
            }
        },
        "run": {
            "task": "mmllm_image_cls",
            "output_dir": str(tmp / name),
            "max_steps": 2,
            "batch_size_train": 4,
            "batch_size_eval": 8,
            "precision": "fp32",
            "init_lr": 1e-3,
            "checkpoint_every": 0,
            "deepspeed_config": str(ROOT / "configs/deepspeed/zero0.json"),
        },
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    done = mmllm("train", "--config", path, cwd=tmp)
    assert done.returncode == 0, done.stderr[-2000:]
    return tmp / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analysis_cls")
    image_tree(tmp / "data")
    save_tiny("llama", tmp / "llm")
    block = train(tmp, "block", {"kind": "llm_block", "source": str(tmp / "llm"), "dtype": "float32"})
    return tmp, block


def test_textured_analysis_reports_all_three_maps(runs):
    tmp, run = runs
    done = mmllm(
        "analyze", "--run", run, "--num", 6, "--figures", 2, "--background", "textured", "--out", tmp / "an", cwd=tmp
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp / "an" / "analysis.json").read_text())
    assert report["images"] == 6 and report["background"] == "textured"
    assert report["cls_attention"] == "vit.blocks.3.attn"  # TINY_VIT has 4 blocks: the last one's attention
    for kind in (
        "magnitude_before",
        "magnitude_after",
        "frequency_before",
        "frequency_after",
        "cls_attention",
        "random",
    ):  # random: the chance level of the same scoring
        assert 0.0 <= report[f"miou_{kind}"] <= 100.0
    assert json.loads(done.stdout) == report
    assert sorted(p.name for p in (tmp / "an").glob("maps_*.png")) == ["maps_000.png", "maps_001.png"]


def test_textured_inputs_keep_the_clean_masks(runs):
    from mmllm.engine.evaluation import load_trained
    from vision.classification.analysis import analysis_inputs, texture

    _, run = runs
    task, model, datasets = load_trained(run / "model_final.pt", run)
    plain = analysis_inputs(task, model, datasets["test"], 3)
    textured = analysis_inputs(task, model, datasets["test"], 3, background="textured")
    assert torch.equal(plain.masks, textured.masks)
    assert (plain.background, textured.background) == ("plain", "textured")
    # a pixel the clean image leaves black shows image i's texture, one of full ink stays white
    black = plain.display == 0
    assert black.any()
    expected = torch.stack([texture(16, 16, seed=i) for i in range(3)])
    torch.testing.assert_close(textured.display[black], expected[black])
    assert 0.0 <= textured.display.min() and textured.display.max() <= 1.0 + 1e-6


def test_bad_requests_are_refused(runs):
    from mmllm.analysis.run import analyse
    from mmllm.errors import ConfigError

    tmp, run = runs
    done = mmllm("analyze", "--run", run, "--out", tmp / "bad", "--background", "stripes", cwd=tmp)
    assert done.returncode == 2 and "'plain', 'textured'" in done.stderr, done.stderr[-2000:]
    with pytest.raises(ConfigError, match="--num must be at least 1"):
        analyse(run, num=0, out=tmp / "bad")
    with pytest.raises(ConfigError, match="'nope' is not among"):
        analyse(run, split="nope", out=tmp / "bad")
    assert not (tmp / "bad" / "analysis.json").exists()


def test_run_without_block_is_analysed_from_the_tokens_before_the_head(runs):
    """The paper's comparison needs the no-block arm: its maps come from the tokens where the block would sit
    (tests/core/test_analysis_compare.py checks them against a hook on the head's input)."""
    from mmllm.analysis.run import analyse

    tmp, _ = runs
    run = train(tmp, "none", {"kind": "none"})
    report = analyse(run)
    assert report["block"] == "none" and report["miou_magnitude_after"] == report["miou_magnitude_before"]
