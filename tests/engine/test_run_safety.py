"""Bad run settings are errors that name the key; an output folder holding another run is never
silently resumed or overwritten; checkpoints are never lost (damaged ones are skipped, not trusted)."""

import errno
import json
import os
import subprocess
import sys

import pytest
import torch
import toy_task  # noqa: F401 - registers toy_tokens
from conftest import ROOT
from omegaconf import OmegaConf
from test_registry import env, toy_config

from mmllm.config import load_config
from mmllm.engine.checkpoint import LATEST, MANIFEST, CheckpointStore
from mmllm.engine.launch import task_for
from mmllm.engine.rundir import prepare_output_dir
from mmllm.errors import CheckpointError, ConfigError
from mmllm.model_file import save_model_file


def build(tmp_path, *options, **run):
    return task_for(load_config(toy_config(tmp_path, **run), list(options)))


@pytest.mark.parametrize(
    "option,message",
    [
        ("run.max_stpes=3", r"run\.max_stpes: unknown key \(did you mean 'max_steps'\?\)"),
        ("model.widht=3", r"model\.widht: unknown key \(did you mean 'width'\?\)"),
        ("run.max_steps=-5", r"run\.max_steps: Input should be greater than 0"),
        ("run.max_steps=abc", r"run\.max_steps: Input should be a valid integer"),
        ("run.batch_size_train=0", r"run\.batch_size_train: Input should be greater than 0"),
        ("run.precision=bf32", r"run\.precision: Input should be 'auto', 'bf16' or 'fp32'"),
        (
            "datasets.toy_tokenz.num_train=3",
            r"datasets\.toy_tokenz: no registered task reads this section \(did you mean 'toy_tokens'\?\)",
        ),
        ("run.task=toy_tokenz", r"'toy_tokenz' is not a registered task \(did you mean 'toy_tokens'\?\)"),
    ],
)
def test_bad_settings_name_the_key(tmp_path, option, message):
    with pytest.raises(ConfigError, match=message):
        build(tmp_path, option)


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown top-level section\(s\) \['extra'\]"):
        build(tmp_path, "extra.foo=1")


def test_cli_error_is_one_line_not_a_traceback(tmp_path):
    for cmd in (
        [
            "-m",
            "mmllm.cli",
            "train",
            "--import",
            "toy_task",
            "--config",
            str(toy_config(tmp_path)),
            "--options",
            "run.max_stpes=3",
        ],
        ["-m", "mmllm.lavis.train", "--cfg-path", str(toy_config(tmp_path)), "--options", "run.task=nope"],
        ["-m", "mmllm.cli", "config", "--show", str(tmp_path / "missing.yaml")],
    ):
        out = subprocess.run([sys.executable, *cmd], env=env(), capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert out.returncode == 2, out.stderr[-2000:]
        lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]


def test_config_show_fills_defaults(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mmllm.cli", "config", "--import", "toy_task", "--show", str(toy_config(tmp_path))],
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    import yaml

    shown = yaml.safe_load(out.stdout)
    assert shown["run"]["max_steps"] == 2 and shown["run"]["warmup_ratio"] == 0.1  # given, and a default
    assert shown["datasets"]["toy_tokens"]["tokens"] == 5


# ---------------------------------------------------------------- output folders
def _stored_run(tmp_path, task):
    out = tmp_path / "run"
    out.mkdir(exist_ok=True)
    (out / "config.json").write_text(json.dumps(OmegaConf.to_container(task.cfg)))
    (out / "summary.json").write_text("{}")
    return out


def _resolve(raw):
    return task_for(OmegaConf.create(raw)).resolved_config()


def test_same_settings_resume_different_ones_are_refused(tmp_path):
    first = build(tmp_path)
    out = _stored_run(tmp_path, first)
    assert prepare_output_dir(out, build(tmp_path, "run.num_workers=0", "run.log_every=5"), _resolve) == "resume"
    with pytest.raises(
        ConfigError,
        match=r"already holds a run with different settings: run\.init_lr: 0\.01 -> 0\.5.*--resume.*--overwrite",
    ):
        prepare_output_dir(out, build(tmp_path, "run.init_lr=0.5"), _resolve)
    assert prepare_output_dir(out, build(tmp_path, "run.init_lr=0.5", "run.resume=always"), _resolve) == "resume"
    with pytest.raises(ConfigError, match="run.resume=never"):
        prepare_output_dir(out, build(tmp_path, "run.resume=never"), _resolve)
    assert prepare_output_dir(out, build(tmp_path, "run.init_lr=0.5", "run.overwrite=true"), _resolve) == "new"
    assert not (out / "summary.json").exists() and not (out / "config.json").exists()


def test_folder_with_a_run_but_no_config_is_refused(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError, match="without its config.json"):
        prepare_output_dir(tmp_path / "run", build(tmp_path), _resolve)


def test_rerun_with_new_settings_through_the_cli(tmp_path):
    cfg = toy_config(tmp_path)
    train = [sys.executable, "-m", "mmllm.cli", "train", "--import", "toy_task", "--config", str(cfg)]
    assert subprocess.run(train, env=env(), capture_output=True, timeout=600).returncode == 0
    before = (tmp_path / "run" / "model_final.pt").read_bytes()
    out = subprocess.run(
        [*train, "--options", "run.init_lr=0.5"], env=env(), capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 2 and "different settings" in out.stderr
    assert (tmp_path / "run" / "model_final.pt").read_bytes() == before  # the old run is untouched
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["run"]["init_lr"] == 0.01


# ---------------------------------------------------------------- checkpoints
def _tag(folder, step, files=None, manifest=True):
    tag = folder / f"step{step}"
    tag.mkdir(parents=True)
    files = files or {"mp_rank_00_model_states.pt": b"x" * 100}
    for name, data in files.items():
        (tag / name).write_bytes(data)
    if manifest:
        (tag / MANIFEST).write_text(json.dumps({"files": {n: len(d) for n, d in files.items()}}))
    return tag


def test_latest_naming_a_missing_tag_falls_back_to_the_newest_intact(tmp_path):
    store = CheckpointStore(tmp_path)
    _tag(tmp_path, 100)
    _tag(tmp_path, 200)
    (tmp_path / LATEST).write_text("step300")
    with pytest.warns(UserWarning, match="step300.*does not exist"):
        assert store.latest_tag() == "step200"


def test_truncated_and_unfinished_tags_are_skipped(tmp_path):
    store = CheckpointStore(tmp_path)
    _tag(tmp_path, 100)
    bad = _tag(tmp_path, 200)
    (bad / "mp_rank_00_model_states.pt").write_bytes(b"x" * 10)  # truncated after the manifest was written
    _tag(tmp_path, 300, manifest=False)  # a save that never finished
    (tmp_path / LATEST).write_text("step200")
    with pytest.warns(UserWarning) as caught:
        assert store.latest_tag() == "step100"
    text = " ".join(str(w.message) for w in caught)
    assert "truncated (10 of 100 bytes)" in text and "no mmllm_manifest.json" in text


def test_prune_never_deletes_a_tag_this_run_did_not_write(tmp_path):
    store = CheckpointStore(tmp_path, keep_last=2)
    _tag(tmp_path, 300)
    _tag(tmp_path, 400)
    for step in (100, 200, 250):
        _tag(tmp_path, step)
        store.written.add(f"step{step}")
        store._prune(keep=f"step{step}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step200", "step250", "step300", "step400"]


class _Engine:
    global_rank = 0

    def save_checkpoint(self, folder, tag, **kwargs):
        path = os.path.join(folder, tag)
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "mp_rank_00_model_states.pt"), "wb") as handle:
            handle.write(b"x" * 1000)
        raise RuntimeError("[enforce fail at inline_container.cc:603] . basic_ios::clear: iostream error")


def test_disk_full_during_a_checkpoint_says_so_and_leaves_no_partial_files(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10 << 30, 10 << 30, 1 << 20))
    store = CheckpointStore(tmp_path / "checkpoints")
    with pytest.raises(CheckpointError, match=r"disk full \(1 MB free"):
        store.save(_Engine(), 5, {})
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_disk_full_writing_the_final_model(tmp_path, monkeypatch):
    def partial_save(obj, path):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", partial_save)
    with pytest.raises(CheckpointError, match="disk full"):
        save_model_file(tmp_path / "model_final.pt", {}, {}, {})
    assert list(tmp_path.iterdir()) == []


def test_truncated_model_file_is_named(tmp_path):
    from mmllm.model_file import read_model_file

    path = tmp_path / "model_final.pt"
    save_model_file(path, {"w": torch.ones(1000)}, {}, {"run": {}})
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=r"model_final\.pt is truncated or corrupt"):
        read_model_file(path)


def test_a_nan_training_loss_stops_the_run_naming_the_step(tmp_path, monkeypatch):
    """A loss that turns NaN (a diverged run, a NaN input) stops training with the step, not a NaN-trained model."""
    from mmllm.engine.launch import train_config
    from mmllm.errors import TrainingError

    calls = []

    def loss_nan_at_step_2(self, model, batch):
        calls.append(1)
        loss = torch.nn.functional.cross_entropy(model(batch["tokens"]).float(), batch["labels"])
        return (loss * float("nan") if len(calls) == 2 else loss), {}

    monkeypatch.setattr(toy_task.ToyTask, "training_loss", loss_nan_at_step_2)
    cfg = load_config(str(toy_config(tmp_path, max_steps=3)))
    with pytest.raises(TrainingError, match=r"training loss is nan at step 2: .*refusing to train on"):
        train_config(cfg)
    assert len(calls) == 2 and not (tmp_path / "run" / "model_final.pt").exists()
    assert not (tmp_path / "run" / "summary.json").exists()


def test_model_file_holding_nan_is_named(tmp_path):
    """A model file edited by hand or written by another tool: NaN weights would score every sample NaN."""
    from mmllm.model_file import read_model_file

    path = tmp_path / "model_final.pt"
    save_model_file(path, {"w": torch.ones(3), "head.bias": torch.tensor([0.0, float("nan")])}, {}, {"run": {}})
    with pytest.raises(CheckpointError, match=r"model_final\.pt: tensor\(s\) \['head\.bias'\] hold NaN or inf"):
        read_model_file(path)
    save_model_file(path, {"w": torch.ones(3), "step": torch.tensor(7)}, {}, {"run": {}})
    assert read_model_file(path)["state_dict"]["step"] == 7  # integer tensors are not checked
