"""The shared training engine: loss falls, resume after a kill, ZeRO stages, 2 processes, two stages."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT
from tiny_vqa import tiny_config, write_images_and_qa

TRAIN = str(ROOT / "projects/vqa/train.py")
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")


def free_port() -> str:
    """A port nobody listens on now: fixed ports collide with the previous launcher's lingering socket."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def clean_env():
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env["DS_ACCELERATOR"] = "cpu"
    return env


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def final_state(out):
    return torch.load(out / "model_final.pt", map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_images_and_qa(tmp_path_factory.mktemp("tinyvqa"))


def run_train(cfg, *options, check=True):
    return subprocess.run(
        [sys.executable, TRAIN, "--config", str(cfg), "--options", *options],
        env=clean_env(),
        capture_output=True,
        text=True,
        check=check,
        timeout=600,
    )


def test_tiny_training_loss_falls_and_evaluates(data, tmp_path):
    out = tmp_path / "run"
    run_train(tiny_config(data, out, max_epoch=6, init_lr=3e-3))
    train = [m for m in metrics(out) if m.get("split") == "train"]
    first, last = sum(m["loss"] for m in train[:5]) / 5, sum(m["loss"] for m in train[-5:]) / 5
    assert last < 0.75 * first, (first, last)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 * (72 // 8)
    assert summary["test_accuracy"] > 40  # above the 33.33 of answering every question the same way
    results = json.loads((out / "results_test.json").read_text())
    assert len(results) == 72 and set(results[0]) == {"question_id", "answer"}
    # the checkpoint leaves the frozen LLM weights out; the final model file too
    state = final_state(out)
    assert not any(k.startswith("backbone.llm_block.layers.") for k in state)
    assert "backbone.llm_block.adapter_in.weight" in state
    # evaluating the saved model (frozen block reloaded from its source) gives the run's own numbers
    evaluated = subprocess.run(
        [
            sys.executable,
            str(ROOT / "projects/vqa/evaluate.py"),
            "--checkpoint",
            str(out / "model_final.pt"),
            "--split",
            "test",
            "--out-dir",
            str(tmp_path / "eval"),
            "--submission",
            "tiny",
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(evaluated.stdout)
    assert report["overall"] == summary["test_accuracy"]
    assert report["submission"].endswith("vqa_OpenEnded_mscoco_test-dev2015_tiny_results.json")


def test_resume_after_kill_matches_uninterrupted_run(data, tmp_path):
    opts = ("run.max_epoch=3", "run.checkpoint_every=3")
    straight = tmp_path / "straight"
    run_train(tiny_config(data, straight), *opts)

    killed = tmp_path / "killed"
    cfg = tiny_config(data, killed)
    proc = subprocess.Popen(
        [sys.executable, TRAIN, "--config", str(cfg), "--options", *opts],
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and int(latest.read_text().strip().removeprefix("step")) >= 6:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = int(latest.read_text().strip().removeprefix("step"))
    assert killed_at < 27 and not (killed / "model_final.pt").exists()

    run_train(cfg, *opts)  # same command resumes
    resumed = [m for m in metrics(killed) if m.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["step"] == killed_at
    a, b = final_state(straight), final_state(killed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert json.loads((killed / "summary.json").read_text())["steps"] == 27
    # DeepSpeed checkpoints leave the frozen LLM weights out
    saved = torch.load(
        next((killed / "checkpoints").glob("step*/mp_rank_00_model_states.pt")), map_location="cpu", weights_only=False
    )
    assert not any("llm_block.layers" in k for k in saved["module"]) and any(
        "llm_block.adapter_in" in k for k in saved["module"]
    )


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stages(data, tmp_path, stage):
    out = tmp_path / f"zero{stage}"
    run_train(tiny_config(data, out, max_epoch=1, deepspeed_config=str(ROOT / f"configs/deepspeed/zero{stage}.json")))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 9 and "test_accuracy" in summary
    assert "backbone.vqa_head" not in final_state(out) and "vqa_head.3.weight" in final_state(out)


def test_two_process_deepspeed_launcher(data, tmp_path):
    out = tmp_path / "ddp"
    cfg = tiny_config(data, out, max_epoch=1)
    deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    proc = subprocess.run(
        [deepspeed, "--num_nodes", "1", "--num_gpus", "2", "--master_port", free_port(), TRAIN, "--config", str(cfg)],
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    if (os.cpu_count() or 1) <= 2:  # the launcher case that is slower than one process on a small CPU machine
        assert "slower than one process" in proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["steps"] == 72 // (8 * 2)  # each step consumes one micro-batch per process
    assert len(json.loads((out / "results_test.json").read_text())) == 72  # every question once


def test_pretrain_then_finetune(data, tmp_path):
    pre = tmp_path / "pre"
    run_train(tiny_config(data, pre, task="mmllm_itm_mlm", max_epoch=2))
    pre_metrics = [m for m in metrics(pre) if m.get("split") == "val"]
    assert {"mlm_acc", "itm_acc"} <= set(pre_metrics[-1])
    fine = tmp_path / "fine"
    cfg = tiny_config(
        data,
        fine,
        max_epoch=1,
        init_from=str(pre / "model_final.pt"),
        init_prefixes=["backbone."],
        max_steps=1,
        init_lr=1e-12,
    )
    run_train(cfg)
    before, after = final_state(pre), final_state(fine)
    shared = [k for k in before if k.startswith("backbone.")]
    assert shared and all(k in after for k in shared)
    for k in shared:  # 1 step at lr 1e-12: the fine-tuned backbone is the pretrained one
        torch.testing.assert_close(after[k], before[k], atol=1e-6, rtol=0)
