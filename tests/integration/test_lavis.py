"""LAVIS integration: the import path, registry names, bad configs, and LAVIS task configs that
train and evaluate through LAVIS's Config -> setup_task -> build_datasets -> build_model ->
runner.train() path, with our DeepSpeed runner and with LAVIS's own runner."""

import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT
from test_engine import clean_env, free_port
from tiny_vqa import tiny_config, write_images_and_qa

from mmllm.errors import ConfigError

LAVIS_RUN = {
    "lr_sched": "linear_warmup_cosine_lr",
    "min_lr": 0.0,
    "warmup_lr": 1e-6,
    "warmup_steps": 2,
    "resume_ckpt_path": None,
    "evaluate": False,
    "world_size": 1,
    "dist_url": "env://",
    "distributed": True,
    "num_workers": 0,
    "accum_grad_iters": 1,
}
ARCH = {
    "mmllm_vqa": "mmllm_meter_vqa",
    "mmllm_retrieval": "mmllm_meter_retrieval",
    "mmllm_itm_mlm": "mmllm_meter_pretrain",
}
DATA = {"mmllm_vqa": "mmllm_vqa", "mmllm_retrieval": "mmllm_retrieval", "mmllm_itm_mlm": "mmllm_captions"}


def lavis_config(data, out, task, runner, **run):
    cfg = yaml.safe_load(tiny_config(data, out, task=task).read_text())
    cfg["model"].update(arch=ARCH[task], model_type="default")
    cfg["datasets"] = {DATA[task]: cfg["datasets"][DATA[task]]}
    splits = list(cfg["datasets"][DATA[task]]["splits"])
    cfg["run"].update(
        LAVIS_RUN,
        runner=runner,
        max_epoch=2,
        train_splits=["train"],
        valid_splits=[s for s in splits if s == "val"],
        test_splits=[s for s in splits if s == "test"],
        **run,
    )
    path = out.parent / f"{out.name}_lavis.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def printed_json(stdout: str) -> dict:
    """The JSON object the entry point prints last (launchers print their own lines around it)."""
    lines = stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")
    end = next(i for i in range(start, len(lines)) if lines[i] == "}")
    return json.loads("\n".join(lines[start : end + 1]))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_images_and_qa(tmp_path_factory.mktemp("lavisdata"))


def lavis_train(cfg, launcher=(), check=True):
    cmd = [*launcher] if launcher else [sys.executable]
    run = subprocess.run(
        [*cmd, "-m", "mmllm.lavis.train", "--cfg-path", str(cfg)],
        env=clean_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    # the tail of stderr, not CalledProcessError's elided repr: a rank's own message is what says why
    assert not check or run.returncode == 0, f"exit {run.returncode}:\n{run.stderr[-6000:]}"
    return run


def test_framework_imports_without_the_model_zoo_and_patches_hold():
    from mmllm.lavis.compat import FRAMEWORK_MODULES, import_lavis, lavis_root, patch_runner_for_cpu

    registry = import_lavis().registry
    patch_runner_for_cpu()
    assert all(m in sys.modules for m in FRAMEWORK_MODULES)
    assert not any(m.startswith("lavis.models.blip") for m in sys.modules)  # the zoo was not imported
    assert {"linear_warmup_cosine_lr", "linear_warmup_step_lr"} <= set(registry.mapping["lr_scheduler_name_mapping"])
    runner_base = sys.modules["lavis.runners.runner_base"]
    assert (
        runner_base.PrefetchLoader.__qualname__.endswith("PrefetchLoader")
        and runner_base.PrefetchLoader.__module__ == "mmllm.lavis.compat"
    )
    assert sys.modules["lavis.common.dist_utils"].init_distributed_mode.__module__ == "mmllm.lavis.compat"
    assert (
        sys.modules["lavis.common.logger"].SmoothedValue.synchronize_between_processes.__module__
        == "mmllm.lavis.compat"
    )
    assert "runner_base" in registry.mapping["runner_name_mapping"]
    from lavis.models import load_model, load_model_and_preprocess, load_preprocess  # LAVIS's own, without the zoo
    from lavis.processors import load_processor

    for fn in (load_model, load_model_and_preprocess, load_preprocess, load_processor):
        assert fn.__code__.co_filename.startswith(str(lavis_root()))


def test_registry_names_resolve():
    from mmllm.lavis.adapters import register_all
    from mmllm.lavis.compat import import_lavis

    entries = register_all()
    registry = import_lavis().registry
    base_model = sys.modules["lavis.models.base_model"].BaseModel
    base_task = sys.modules["lavis.tasks.base_task"].BaseTask
    for task, arch in ARCH.items():
        assert issubclass(registry.get_model_class(arch), base_model)
        assert issubclass(registry.get_task_class(task), base_task)
        assert registry.get_builder_class(DATA[task]) is not None
        assert os.path.isfile(registry.get_model_class(arch).default_config_path("default"))
    assert registry.get_runner_class("runner_deepspeed").__name__ == "DeepSpeedRunner"
    assert set(ARCH) <= {e.name for e in entries}  # every registered task, from the one registry
    assert {"mmllm_image_cls", "mmllm_pointcloud_cls", "mmllm_action", "mmllm_motion", "mmllm_3dvqa"} <= {
        e.name for e in entries
    }
    for e in entries:
        assert issubclass(registry.get_task_class(e.name), base_task)
        assert issubclass(registry.get_model_class(e.model_arch), base_model)
        assert registry.get_builder_class(e.dataset) is not None
        for kind in ("image_train", "image_eval", "text"):  # processors derived from every entry
            assert registry.get_processor_class(f"{e.model_arch}_{kind}") is not None


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda c: c["model"].update(arch="blip2_opt"), "model.arch 'blip2_opt' is not registered"),
        (lambda c: c.update(datasets={"coco_vqa": {}}), "dataset 'coco_vqa' is not registered"),
        (lambda c: c["run"].update(task="vqa_v3"), "run.task 'vqa_v3' is not registered"),
        (lambda c: c["run"].update(runner="runner_tpu"), "run.runner 'runner_tpu' is not registered"),
        (lambda c: c.pop("datasets"), r"missing section\(s\) \['datasets'\]"),
    ],
)
def test_bad_configs_say_what_is_wrong(data, tmp_path, edit, message, capsys):
    from mmllm.lavis import train

    cfg = lavis_config(data, tmp_path / "bad", "mmllm_vqa", "runner_deepspeed")
    content = yaml.safe_load(cfg.read_text())
    edit(content)
    cfg.write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError, match=message):
        train._main(["--cfg-path", str(cfg)])
    assert train.main(["--cfg-path", str(cfg)]) == 2  # the entry point: one line, exit 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err


def test_missing_dataset_key_is_named(data, tmp_path):
    cfg = lavis_config(data, tmp_path / "nosplits", "mmllm_vqa", "runner_deepspeed")
    content = yaml.safe_load(cfg.read_text())
    del content["datasets"]["mmllm_vqa"]["splits"]
    cfg.write_text(yaml.safe_dump(content))
    out = lavis_train(cfg, check=False)
    assert out.returncode != 0 and "datasets.mmllm_vqa.splits" in out.stderr


@pytest.mark.parametrize("task", ["mmllm_vqa", "mmllm_retrieval"])
def test_deepspeed_runner_single_process(data, tmp_path, task):
    out = tmp_path / "run"
    if task == "mmllm_vqa":  # the docstring's launcher form: `deepspeed --module` (DeepSpeed has no -m)
        deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
        proc = subprocess.run(
            [
                deepspeed,
                "--num_gpus",
                "1",
                "--master_port",
                free_port(),
                "--module",
                "mmllm.lavis.train",
                "--cfg-path",
                str(lavis_config(data, out, task, "runner_deepspeed")),
            ],
            env=clean_env(),
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
    else:
        proc = lavis_train(lavis_config(data, out, task, "runner_deepspeed"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == task and summary["steps"] == 2 * (72 // 8 if task == "mmllm_vqa" else 24 // 8)
    key = "test_accuracy" if task == "mmllm_vqa" else "test_r_mean"
    assert key in summary
    printed = printed_json(proc.stdout)  # the entry point's final metrics
    assert printed[key] == summary[key]
    if task == "mmllm_vqa":  # valid_splits: [val] evaluated after each epoch
        assert [
            r["epoch"]
            for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if r.get("split") == "val"
        ] == [0, 1]
    # the same file runs through our own projects/*/train.py
    ours = tmp_path / "ours"
    project = "vqa" if task == "mmllm_vqa" else "retrieval"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / f"projects/{project}/train.py"),
            "--config",
            str(lavis_config(data, out, task, "runner_deepspeed")),
            "--options",
            f"run.output_dir={ours}",
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    assert json.loads((ours / "summary.json").read_text())["steps"] == summary["steps"]


@pytest.mark.parametrize("task", ["mmllm_vqa", "mmllm_retrieval"])
def test_lavis_runner_base_single_process(data, tmp_path, task):
    out = tmp_path / "run"
    proc = lavis_train(lavis_config(data, out, task, "runner_base"))
    printed = printed_json(proc.stdout)  # LAVIS's test metrics
    assert ("test_accuracy" if task == "mmllm_vqa" else "test_r_mean") in printed
    job = next(p for p in out.iterdir() if p.is_dir() and len(p.name) == 8)
    log = [
        json.loads(line) for line in (job / "log.txt").read_text().splitlines() if line.startswith('{"')
    ]  # after the config dump
    assert sum("train_loss" in r for r in log) == 2  # two epochs
    if task == "mmllm_vqa":  # val each epoch, best checkpoint reloaded for test
        assert any("val_agg_metrics" in r for r in log) and (job / "checkpoint_best.pth").is_file()
        assert (out / "results_test.json").is_file() and (out / "accuracy_test.json").is_file()
    else:  # no val split: LAVIS saves every epoch and tests the last
        assert (job / "checkpoint_1.pth").is_file() and (out / "recall_test.json").is_file()


@pytest.mark.parametrize("task", ["mmllm_vqa", "mmllm_retrieval"])
@pytest.mark.parametrize("runner", ["runner_deepspeed", "runner_base"])
def test_two_processes(data, tmp_path, task, runner):
    out = tmp_path / "run"
    cfg = lavis_config(data, out, task, runner)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    lavis_train(cfg, launcher=(torchrun, "--nproc_per_node", "2", "--master_port", free_port()))
    if runner == "runner_deepspeed":
        summary = json.loads((out / "summary.json").read_text())
        per_epoch = 72 // 16 if task == "mmllm_vqa" else 24 // 16
        assert summary["world_size"] == 2 and summary["steps"] == 2 * per_epoch
    if task == "mmllm_vqa":
        assert len(json.loads((out / "results_test.json").read_text())) == 72  # every question once
    else:
        import numpy as np

        assert np.load(out / "scores_test.npz")["scores_i2t"].shape == (6, 6)


def test_pretrain_then_finetune_through_lavis(data, tmp_path):
    pre = tmp_path / "pre"
    lavis_train(lavis_config(data, pre, "mmllm_itm_mlm", "runner_deepspeed"))
    assert (pre / "model_final.pt").is_file()
    fine = tmp_path / "fine"
    lavis_train(
        lavis_config(
            data,
            fine,
            "mmllm_vqa",
            "runner_deepspeed",
            init_from=str(pre / "model_final.pt"),
            init_prefixes=["backbone."],
        )
    )
    assert "test_accuracy" in json.loads((fine / "summary.json").read_text())
