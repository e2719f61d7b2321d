"""Run tracking: a 2-step run's TensorBoard events hold the JSONL's curves; summary.json records what the
leaderboard needs; run.max_eval_samples and the --quick preset; --log-level."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT
from test_engine import clean_env
from tiny_vqa import tiny_config, write_images_and_qa


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_images_and_qa(tmp_path_factory.mktemp("trackdata"))


def mmllm(*args):
    return subprocess.run(
        [sys.executable, "-m", "mmllm.cli", *args],
        env=clean_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_step_run_writes_tensorboard_curves_equal_to_the_jsonl(data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    cfg = tiny_config(data, out, max_epoch=1, max_steps=2, log_every=1, max_eval_samples=10)
    proc = mmllm("--log-level", "info", "train", "--config", str(cfg))
    assert "INFO mmllm.engine.trainer: training mmllm_vqa: 2 steps" in proc.stderr
    assert "| 2/2 [" in proc.stderr  # the progress bar totals the steps that run (max_steps), not the epoch's 9
    assert json.loads(proc.stdout)["test_accuracy"] >= 0  # results stay JSON on stdout

    train = [r for r in records(out) if r.get("split") == "train"]
    assert [r["step"] for r in train] == [1, 2]
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/grad_norm", "train/sec_per_step", "val/accuracy", "test/accuracy"} <= set(
        scalars
    )
    for key in ("loss", "lr", "grad_norm"):
        logged = events.Scalars(f"train/{key}")
        assert [e.step for e in logged] == [1, 2]
        assert [e.value for e in logged] == pytest.approx([r[key] for r in train], rel=1e-6)  # float32 in the events
    assert train[0]["lr"] == 0.0 and train[1]["lr"] == pytest.approx(1e-3 / 2)  # warm-up of 2 steps: 0, then 1/2

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["seed"] == 0 and summary["max_eval_samples"] == 10
    assert 0 < summary["trainable_params"] < summary["total_params"]  # the frozen block counts in the total only
    assert summary["seconds_per_step"] > 0 and summary["wall_seconds"] >= summary["train_seconds"]
    assert len(summary["config_sha256"]) == 16 and "git_commit" in summary and summary["device"].startswith("cpu")
    assert len(json.loads((out / "results_test.json").read_text())) == 10  # only the first 10 questions
    val = [r for r in records(out) if r.get("split") == "val"]
    assert len(val) == 1 and val[0]["step"] == 2  # a run shorter than its epoch is still validated


def test_quick_preset_and_quiet_log_level(data, tmp_path):
    out = tmp_path / "full"
    cfg = tiny_config(data, out, max_epoch=3)
    proc = mmllm("train", "--config", str(cfg), "--quick", "--log-level", "warning", "--options", "run.max_steps=1")
    assert "INFO" not in proc.stderr
    quick = tmp_path / "full_quick"
    assert not out.exists() and (quick / "summary.json").is_file()  # never in the full run's folder
    summary = json.loads((quick / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["max_eval_samples"] == 64  # --options win over the preset


def test_max_eval_samples_is_refused_before_training_where_a_split_cannot_be_cut(data, tmp_path):
    """A dataset without head(n) is not silently evaluated in full under run.max_eval_samples; --quick's
    preset (eval_limit_optional) evaluates it in full and records null."""
    from omegaconf import OmegaConf

    from mmllm.engine.registry import get_task
    from mmllm.engine.trainer import Trainer
    from mmllm.errors import ConfigError

    cfg = OmegaConf.load(tiny_config(data, tmp_path / "cut", max_eval_samples=5))
    for optional in (False, True):
        trainer = Trainer(cfg, get_task(cfg.run.task).build(cfg), eval_limit_optional=optional)
        trainer.datasets = {"train": list(range(40)), "val": list(range(20)), "test": list(range(3))}  # lists: no head
        if optional:
            trainer._resolve_splits()
            assert trainer.eval_cut is None
        else:
            with pytest.raises(ConfigError, match=r"max_eval_samples: the 'val' dataset .*\(list\) has no head"):
                trainer._resolve_splits()

    class Unsized:  # like the retrieval eval set: images and captions, no length and no head(n)
        pass

    for optional in (False, True):
        trainer = Trainer(cfg, get_task(cfg.run.task).build(cfg), eval_limit_optional=optional)
        trainer.datasets = {"train": list(range(40)), "val": list(range(3)), "test": Unsized()}
        if optional:
            trainer._resolve_splits()
            assert trainer.eval_cut is None
        else:
            with pytest.raises(ConfigError, match=r"max_eval_samples: the 'test' dataset .*\(Unsized\) has no head"):
                trainer._resolve_splits()
