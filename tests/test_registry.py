"""The task registry is the one seam: a toy task registered from outside any package trains for
two steps through ``mmllm train`` and through LAVIS's path; the faces read only the registry."""
import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

from mmllm.engine.registry import TaskEntry, all_tasks, get_task, register_task
from mmllm.errors import ConfigError

TESTS = ROOT / "tests"
BLOCK = {"kind": "random_frozen", "layers": "last", "dtype": "float32",
         "llm_config": {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                        "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 10}}


def env():
    out = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    out.update(DS_ACCELERATOR="cpu", PYTHONPATH=os.pathsep.join([str(TESTS), out.get("PYTHONPATH", "")]))
    return out


def toy_config(tmp_path, lavis: bool = False, **run):
    cfg = {
        "model": {"width": 16, "llm_block": BLOCK},
        "datasets": {"toy_tokens": {"num_train": 16, "num_test": 8}},
        "run": {"task": "toy_tokens", "output_dir": str(tmp_path / "run"), "batch_size_train": 8, "batch_size_eval": 8,
                "max_steps": 2, "init_lr": 1e-2, "precision": "fp32", "log_every": 1, **run},
    }
    if lavis:
        cfg["model"].update(arch="toy_token_cls", model_type="default")
        cfg["run"].update(runner="runner_deepspeed", max_epoch=1)
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_toy_task_trains_two_steps_through_mmllm_train(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mmllm.cli", "train", "--import", "toy_task", "--config",
                          str(toy_config(tmp_path))], env=env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["task"] == "toy_tokens" and summary["steps"] == 2 and 0 <= summary["test_accuracy"] <= 100
    train = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in train if m.get("split") == "train"] == [1, 2]


def test_toy_task_trains_two_steps_through_lavis(tmp_path):
    script = ("import sys, toy_task; from mmllm.lavis.train import main; "
              f"sys.exit(main(['--cfg-path', {str(toy_config(tmp_path, lavis=True))!r}]))")
    out = subprocess.run([sys.executable, "-c", script], env=env(), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["task"] == "toy_tokens" and summary["steps"] == 2


def test_registered_tasks_and_lookups():
    tasks = all_tasks()
    assert {"mmllm_vqa", "mmllm_retrieval", "mmllm_itm_mlm"} <= set(tasks)
    assert tasks["mmllm_vqa"].default_config.is_file()
    with pytest.raises(ConfigError, match="'mmllm_vqaa' is not a registered task.*did you mean 'mmllm_vqa'"):
        get_task("mmllm_vqaa")
    entry = TaskEntry(name="mmllm_vqa", task="x:Y", dataset="d", model_arch="a", metric="m")
    with pytest.raises(ConfigError, match="registered twice"):
        register_task(entry)


def test_mmllm_tasks_lists_the_registry():
    out = subprocess.run([sys.executable, "-m", "mmllm.cli", "tasks"], env=env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "mmllm_vqa" in out.stdout and "metric accuracy (higher is better)" in out.stdout
