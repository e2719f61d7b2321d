"""Issue 24: no wrong evaluation with exit 0, no stuck run folders, no tracebacks from our own paths.

Evaluators refuse a checkpoint of another task; re-running a finished run leaves its summary alone;
a failed set-up leaves no config that blocks the corrected re-run; bad output folders, a bad video read
in a loader worker and Ctrl-C end in one line (Ctrl-C: exit 130 and where to resume); every split's
ModelNet files are checked before the first step. Runs go through ``mmllm train`` in this process."""

import importlib.util
import json
import os
import re
import signal

import numpy as np
import pytest
import toy_task
import yaml
from conftest import ROOT
from omegaconf import OmegaConf
from test_registry import BLOCK, toy_config

from mmllm.cli import main as mmllm
from mmllm.engine.cli import task_for
from mmllm.engine.rundir import prepare_output_dir


def train(config, *options):
    argv = ["train", "--config", str(config)]
    return mmllm([*argv, "--options", *options] if options else argv)


def error_lines(err: str) -> list[str]:
    """The ``error:`` messages (one may follow the unfinished progress bar on its line)."""
    return re.findall(r"error: [^\r\n]*", err)


def load_script(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def toy_run(tmp_path, capsys):
    """A finished 2-step toy run; (config, output folder)."""
    config = toy_config(tmp_path)
    assert train(config) == 0
    capsys.readouterr()
    return config, tmp_path / "run"


# ------------------------------------------------------------------ evaluating another task's checkpoint
def test_every_evaluator_refuses_a_checkpoint_of_another_task(toy_run, tmp_path, capsys):
    from mmllm.engine.evaluation import load_trained
    from mmllm_3dvqa.task import main as eval_3dvqa
    from vision.action.evaluate import main as eval_action
    from vision.classification.evaluate import main as eval_cls

    checkpoint = str(toy_run[1] / "model_final.pt")
    evaluators = {  # before: the first three printed the toy run's accuracy with exit 0, VQA an AttributeError
        "mmllm_retrieval": load_script(ROOT / "projects/retrieval/evaluate.py", "retrieval_evaluate").main,
        "mmllm_image_cls": eval_cls,
        "mmllm_vqa": load_script(ROOT / "projects/vqa/evaluate.py", "vqa_evaluate").main,
        "mmllm_action": eval_action,
        "mmllm_3dvqa": eval_3dvqa,
    }
    for task, evaluate in evaluators.items():
        code = evaluate(["--checkpoint", checkpoint, "--split", "test"])
        out, err = capsys.readouterr()
        lines = error_lines(err)
        assert code == 2 and out == "", (task, code, out, err[-2000:])  # no metrics of the wrong task
        assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
        assert "a checkpoint of task 'toy_tokens'" in lines[0] and task in lines[0] and checkpoint in lines[0]
        if task == "mmllm_retrieval":  # it scores both retrieval tasks
            assert "mmllm_retrieval, mmllm_retrieval_vlap" in lines[0]
    # a run's own task is rebuilt as before
    task, model, datasets = load_trained(checkpoint, tmp_path / "again", tasks=("toy_tokens",))
    assert task.name == "toy_tokens" and set(datasets) == {"train", "test"}


# ------------------------------------------------------------------ a finished run re-run
def test_rerunning_a_finished_run_keeps_its_summary(toy_run, capsys):
    config, out = toy_run
    summary, model = (out / "summary.json").read_bytes(), (out / "model_final.pt").read_bytes()
    stored = json.loads(summary)
    assert stored["seconds_per_step"] is not None and stored["steps"] == 2

    assert train(config) == 0  # the same command again
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"test_accuracy": stored["test_accuracy"]}  # reported as finished ...
    assert (out / "summary.json").read_bytes() == summary  # ... its summary untouched
    assert (out / "model_final.pt").read_bytes() == model

    # the run's resolved config is stored beside config.json: a key added since (absent from it) is no
    # difference, so the finished record stands; a changed default is a different run, refused, not reported
    resolved_file = out / "resolved_config.json"
    resolved = resolved_file.read_bytes()
    as_older = json.loads(resolved)
    del as_older["datasets"]["toy_tokens"]["tokens"]  # as if an older version had no such key
    resolved_file.write_text(json.dumps(as_older))
    assert train(config) == 0
    assert json.loads(capsys.readouterr().out) == {"test_accuracy": stored["test_accuracy"]}
    assert (out / "summary.json").read_bytes() == summary and not (out / "reevaluation.json").exists()
    as_older["model"]["width"] = 17  # the default it ran with is not today's
    resolved_file.write_text(json.dumps(as_older))
    assert train(config) == 2
    assert "model.width: 17 -> 16" in capsys.readouterr().err
    # a folder of a version that stored no resolved config: only the summary's hash tells; under other
    # defaults (another hash) a changed default cannot be told from an added key, so it is evaluated again
    resolved_file.unlink()
    edited = summary.replace(stored["config_sha256"].encode(), b"0" * 16)
    assert edited != summary
    (out / "summary.json").write_bytes(edited)
    assert train(config) == 0
    capsys.readouterr()
    assert (out / "reevaluation.json").exists() and (out / "model_final.pt").read_bytes() == model
    (out / "reevaluation.json").unlink()
    (out / "summary.json").write_bytes(summary)
    resolved_file.write_bytes(resolved)

    # other evaluation settings (harmless keys resume the run): evaluated again, written beside the summary
    assert train(config, "run.batch_size_eval=3") == 0
    capsys.readouterr()
    assert (out / "summary.json").read_bytes() == summary and (out / "model_final.pt").read_bytes() == model
    again = json.loads((out / "reevaluation.json").read_text())
    assert again["steps"] == 2 and again["test_accuracy"] == stored["test_accuracy"]  # same weights, same score


# ------------------------------------------------------------------ set-up failures and output folders
def test_failed_setup_leaves_no_config_and_the_corrected_rerun_trains(tmp_path, capsys):
    config = toy_config(tmp_path)
    assert train(config, "run.batch_size_train=100") == 2  # 16 training samples: fails in set-up
    assert "too small for batch 100" in capsys.readouterr().err
    assert not (tmp_path / "run" / "config.json").exists()
    assert train(config) == 0  # the corrected command is not refused as "a different run"
    capsys.readouterr()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2
    assert json.loads((tmp_path / "run" / "config.json").read_text())["run"]["batch_size_train"] == 8


def test_a_folder_left_by_a_failed_setup_is_not_a_run(tmp_path):
    """Older versions wrote config.json before set-up: a folder holding only that file trained nothing."""
    old = task_for(OmegaConf.load(toy_config(tmp_path, batch_size_train=100)))
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(OmegaConf.to_container(old.cfg)))
    resolve = lambda raw: task_for(OmegaConf.create(raw)).resolved_config()  # noqa: E731
    assert prepare_output_dir(out, task_for(OmegaConf.load(toy_config(tmp_path))), resolve) == "new"
    (out / "metrics.jsonl").write_text("{}\n")  # it did train: still refused
    with pytest.raises(Exception, match="different settings: run.batch_size_train: 100 -> 8"):
        prepare_output_dir(out, task_for(OmegaConf.load(toy_config(tmp_path))), resolve)


def test_output_dir_that_is_a_file_or_cannot_be_made(tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    for output_dir, message in (
        (blocker, "is a file, not a folder"),
        (blocker / "run", "cannot be created or written"),
    ):
        assert train(toy_config(tmp_path), f"run.output_dir={output_dir}") == 2
        lines = error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and f"run.output_dir {output_dir} {message}" in lines[0], lines
    assert blocker.read_text() == "not a folder"


# ------------------------------------------------------------------ a bad video read in a loader worker
def action_config(tmp_path, num_workers):
    from vision.action import clips

    root = clips.generate(tmp_path / "clips", clips.ClipSettings(train=4, val=0, test=2, seed=3))
    for video in (root / "videos").iterdir():
        if video.stem in {r["id"] for r in json.loads((root / "train.json").read_text())}:
            video.write_bytes(b"")  # zero-byte training videos
    split = lambda name: {"annotation": str(root / f"{name}.json"), "video_root": str(root / "videos")}  # noqa: E731
    cfg = {
        "model": {
            "num_classes": 10,
            "img_size": 32,
            "num_frames": 8,
            "patch_size": 16,
            "tubelet_size": 2,
            "embed_dim": 16,
            "depth": 1,
            "num_heads": 2,
            "insert_after": 0,
            "llm_block": BLOCK,
        },
        "datasets": {
            "mmllm_action": {
                "labels": str(root / "labels.json"),
                "video_ext": "mp4",
                "num_frames": 8,
                "input_size": 32,
                "splits": {"train": split("train"), "test": split("test")},
            }
        },
        "run": {
            "task": "mmllm_action",
            "output_dir": str(tmp_path / f"run{num_workers}"),
            "max_steps": 1,
            "batch_size_train": 2,
            "batch_size_eval": 2,
            "precision": "fp32",
            "num_workers": num_workers,
        },
    }
    path = tmp_path / f"action{num_workers}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_data_error_in_a_loader_worker_is_the_same_one_line(tmp_path, capsys):
    lines = {}
    for workers in (0, 1):
        assert train(action_config(tmp_path, workers)) == 2
        err = capsys.readouterr().err
        lines[workers] = error_lines(err)
        assert len(lines[workers]) == 1 and "Traceback" not in err and "DataLoader worker" not in err, err[-3000:]
    assert lines[1] == lines[0]  # the worker's error reads as the main process's own
    assert lines[0][0].startswith("error: video ") and ".mp4 does not decode" in lines[0][0]


# ------------------------------------------------------------------ Ctrl-C
def interrupt_at(monkeypatch, step):
    calls = []
    original = toy_task.ToyTask.training_loss

    def training_loss(self, model, batch):
        calls.append(1)
        if len(calls) == step:
            raise KeyboardInterrupt
        return original(self, model, batch)

    monkeypatch.setattr(toy_task.ToyTask, "training_loss", training_loss)


def test_ctrl_c_says_where_to_resume_and_exits_130(tmp_path, capsys, monkeypatch):
    config = toy_config(tmp_path, max_steps=6, max_epoch=3, checkpoint_every=1)  # 2 steps per epoch
    out = tmp_path / "run"
    for step, expected in (
        (1, f"interrupted at step 0; no checkpoint yet in {out / 'checkpoints'}"),
        (
            5,
            f"interrupted at step 4; re-run the same command to resume from checkpoint {out / 'checkpoints' / 'step4'}",
        ),
    ):
        with monkeypatch.context() as patch:
            interrupt_at(patch, step)
            try:
                code = train(config)
            except KeyboardInterrupt:
                pytest.fail("Ctrl-C ended in a KeyboardInterrupt traceback")
        err = capsys.readouterr().err
        assert code == 130 and expected in err and "Traceback" not in err, err[-2000:]
    assert train(config) == 0  # the same command resumes where the message said
    capsys.readouterr()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("event") == "resumed"] == [4]
    assert json.loads((out / "summary.json").read_text())["steps"] == 6


class SendsCtrlCWhenCollected:
    """Like a finished epoch's loader iterator, whose workers are shut down in ``__del__``: Python drops a
    KeyboardInterrupt raised there (prints "Exception ignored"), so Ctrl-C at that moment used to be lost."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)


@pytest.fixture
def default_sigint():
    """Python's own Ctrl-C handler during the test: a process a non-interactive shell starts in the background
    inherits SIGINT ignored (POSIX), and then no Ctrl-C could reach the run."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_a_finaliser_is_not_lost(tmp_path, capsys, monkeypatch, default_sigint):
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    original = toy_task.ToyTask.training_loss
    calls = []

    def training_loss(self, model, batch):
        calls.append(1)
        if len(calls) == 3:
            SendsCtrlCWhenCollected()  # collected at once: the signal arrives inside its __del__
        return original(self, model, batch)

    monkeypatch.setattr(toy_task.ToyTask, "training_loss", training_loss)
    try:
        code = train(toy_config(tmp_path, max_steps=6, max_epoch=3))
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C ended in a KeyboardInterrupt traceback")
    err = capsys.readouterr().err
    assert code == 130 and "interrupted at step 3; re-run the same command to resume from checkpoint" in err, err[
        -2000:
    ]
    assert len(calls) == 3 and not (tmp_path / "run" / "summary.json").exists()  # stopped at the next batch
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the run's handler is gone again


# ------------------------------------------------------------------ ModelNet: every split checked before step 1
def test_missing_modelnet_test_cloud_is_found_before_training(tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "modelnet40_shape_names.txt").write_text("airplane\nchair\n")
    ids = {
        "train": [f"{c}_{i:04d}" for c in ("airplane", "chair") for i in range(1, 5)],
        "test": ["airplane_0101", "chair_0102"],
    }
    for split, names in ids.items():
        (tmp_path / f"modelnet40_{split}.txt").write_text("\n".join(names) + "\n")
        for sid in names:
            (tmp_path / sid.rpartition("_")[0]).mkdir(exist_ok=True)
            np.savetxt(tmp_path / sid.rpartition("_")[0] / f"{sid}.txt", rng.normal(size=(32, 6)), delimiter=",")
    missing = tmp_path / "chair" / "chair_0102.txt"
    missing.unlink()
    cfg = {
        "model": {
            "num_groups": 8,
            "group_size": 8,
            "dim": 16,
            "depth": 1,
            "num_heads": 2,
            "tokenizer_hidden": 8,
            "pos_hidden": 8,
            "head_hidden": 8,
            "insert_after": 0,
            "llm_block": BLOCK,
        },
        "datasets": {
            "mmllm_pointcloud_cls": {
                "root": str(tmp_path),
                "format": "modelnet_txt",
                "num_points": 32,
                "splits": {"train": "modelnet40_train.txt", "test": "modelnet40_test.txt"},
            }
        },
        "run": {
            "task": "mmllm_pointcloud_cls",
            "output_dir": str(tmp_path / "run"),
            "max_steps": 2,
            "batch_size_train": 4,
            "batch_size_eval": 4,
            "precision": "fp32",
        },
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert train(tmp_path / "cfg.yaml") == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and f"ModelNet cloud {missing} " in lines[0] and "does not exist" in lines[0], lines
    run = tmp_path / "run"
    assert not any((run / name).exists() for name in ("metrics.jsonl", "checkpoints", "model_final.pt", "config.json"))
