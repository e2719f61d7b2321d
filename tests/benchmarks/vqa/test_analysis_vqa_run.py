"""`mmllm analyze` end to end on METER VQA over the real easy-VQA data: a 2-step `mmllm train` run of the
shipped config, then the §6 maps of the block on the fused vision stream (CLS + 4×4 patches) and the CLS
attention of the open_clip ViT's last resblock, scored against the shapes' exact foregrounds."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT

DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")
CONFIG = ROOT / "configs/vqa/easyvqa_meter_smollm2.yaml"


def env():
    out = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    out.update(DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    out.setdefault("OMP_NUM_THREADS", "1")
    return out


def mmllm(*args):
    # the config's data paths are relative to the repository root
    return subprocess.run(
        [sys.executable, "-m", "mmllm.cli", *map(str, args)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if not (ROOT / "data/easy_vqa/images/test/0.png").is_file():
        pytest.skip("easy-VQA is not converted (mmllm assets prepare, or one training run of the config)")
    out = tmp_path_factory.mktemp("analysis_vqa") / "run"
    done = mmllm(
        "train",
        "--config",
        CONFIG,
        "--options",
        f"run.output_dir={out}",
        "run.max_steps=2",
        "run.batch_size_train=8",
        "run.batch_size_eval=16",
        "run.max_eval_samples=16",
        "run.checkpoint_every=0",
        "run.evaluate_val=false",
        "run.precision=fp32",
        "model.llm_block.dtype=float32",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_vqa_analysis_reports_block_and_encoder_attention_maps(run):
    done = mmllm("analyze", "--run", run, "--num", 6, "--figures", 1)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((run / "analysis" / "analysis.json").read_text())
    assert report["images"] == 6 and report["background"] == "plain"
    assert report["cls_attention"] == "backbone.vision.visual.transformer.resblocks.3.attn"  # 4 layers in the config
    for kind in ("magnitude_before", "magnitude_after", "frequency_before", "frequency_after", "cls_attention"):
        assert 0.0 <= report[f"miou_{kind}"] <= 100.0
    assert (run / "analysis" / "maps_000.png").stat().st_size > 0


def test_vqa_inputs_first_question_of_each_image_and_exact_masks(run):
    from PIL import Image

    from mmllm.analysis.run import _call_hook
    from mmllm.engine.evaluation import load_trained
    from mmllm.errors import ConfigError
    from mmllm_vqa.analysis import analysis_inputs

    task, model, datasets = load_trained(run / "model_final.pt", run)
    test = datasets["test"]
    inputs = analysis_inputs(task, model, test, 3)
    questions = json.loads((ROOT / "data/easy_vqa/test_questions.json").read_text())["questions"]
    firsts = {}
    for q in questions:
        firsts.setdefault(q["image_id"], q)
    assert inputs.masks.shape == (3, 64, 64) and inputs.display.shape == (3, 64, 64, 3)
    for i, image_id in enumerate(list(firsts)[:3]):
        pixels = np.asarray(Image.open(ROOT / f"data/easy_vqa/images/test/{image_id}.png").convert("RGB"))
        # independent of the border rule: the top-left pixel is background in easy-VQA's first images
        background = pixels[0, 0].astype(int)
        expected = np.abs(pixels.astype(int) - background).max(-1) > 8
        assert torch.equal(inputs.masks[i], torch.from_numpy(expected))
        assert 0 < expected.sum() < 64 * 64
    seen = []
    handle = model.backbone.text.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        inputs.forward(model.eval())
    handle.remove()
    expected_ids = task.tokenizer(
        [firsts[k]["question"] for k in list(firsts)[:3]],
        padding="longest",
        truncation=True,
        max_length=task.data_cfg.max_text_len,
    )["input_ids"]
    assert seen[0].tolist() == expected_ids
    with pytest.raises(ConfigError, match="no background option"):  # easy-VQA keeps its own solid backgrounds
        _call_hook(analysis_inputs, task, model, test, 3, "textured")
