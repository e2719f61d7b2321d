"""The task registry is the one seam: a toy task registered from outside any package trains for
two steps through ``mmllm train`` and through LAVIS's path; the faces read only the registry."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml
from conftest import ROOT

from mmllm.engine.registry import TaskEntry, all_tasks, get_task, register_task
from mmllm.errors import ConfigError

TESTS = ROOT / "tests"
BLOCK = {
    "kind": "random_frozen",
    "layers": "last",
    "dtype": "float32",
    "llm_config": {
        "model_type": "llama",
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "vocab_size": 10,
    },
}


def env():
    out = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    out.update(DS_ACCELERATOR="cpu", PYTHONPATH=os.pathsep.join([str(TESTS), out.get("PYTHONPATH", "")]))
    return out


def toy_config(tmp_path, lavis: bool = False, **run):
    cfg = {
        "model": {"width": 16, "llm_block": BLOCK},
        "datasets": {"toy_tokens": {"num_train": 16, "num_test": 8}},
        "run": {
            "task": "toy_tokens",
            "output_dir": str(tmp_path / "run"),
            "batch_size_train": 8,
            "batch_size_eval": 8,
            "max_steps": 2,
            "init_lr": 1e-2,
            "precision": "fp32",
            "log_every": 1,
            **run,
        },
    }
    if lavis:
        cfg["model"].update(arch="toy_token_cls", model_type="default")
        cfg["run"].update(runner="runner_deepspeed", max_epoch=1)
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_toy_task_trains_two_steps_through_mmllm_train(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mmllm.cli", "train", "--import", "toy_task", "--config", str(toy_config(tmp_path))],
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["task"] == "toy_tokens" and summary["steps"] == 2 and 0 <= summary["test_accuracy"] <= 100
    train = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in train if m.get("split") == "train"] == [1, 2]


def test_toy_task_trains_two_steps_through_lavis(tmp_path):
    script = (
        "import sys, toy_task; from mmllm.lavis.train import main; "
        f"sys.exit(main(['--cfg-path', {str(toy_config(tmp_path, lavis=True))!r}]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env(), capture_output=True, text=True, timeout=600, cwd=ROOT
    )
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
    out = subprocess.run(
        [sys.executable, "-m", "mmllm.cli", "tasks"], env=env(), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "mmllm_vqa" in out.stdout and "metric accuracy (higher is better)" in out.stdout
    assert "BROKEN" not in out.stderr  # every built-in task module loads (stale entry points of theirs are skipped)


# ---------------------------------------------------------------- registration on the class
def _fresh_registry(monkeypatch, packages):
    """The registry as if nothing were loaded yet, scanning only ``packages`` and no entry point."""
    import importlib.metadata

    from mmllm.engine import registry

    monkeypatch.setattr(registry, "_TASKS", {})
    monkeypatch.setattr(registry, "_BROKEN", {})
    monkeypatch.setattr(registry, "_LOADED", False)
    monkeypatch.setattr(registry, "task_packages", lambda: list(packages))
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **_: [])
    return registry


def test_decorator_registers_the_class_its_subclass_keeps_its_own(monkeypatch):
    from omegaconf import OmegaConf
    from toy_task import ToyTask

    from mmllm.engine.registry import registered_task

    registry = _fresh_registry(monkeypatch, [])

    @registered_task("toy_a", model_arch="toy_arch_a", metric="accuracy", description="a")
    class A(ToyTask):
        pass

    class B(A):  # not decorated: no entry of its own, A's is not inherited
        pass

    @registered_task("toy_c1", dataset="toy_tokens", model_arch="toy_arch_c", metric="accuracy")
    @registered_task("toy_c2", dataset="toy_tokens", model_arch="toy_arch_c", metric="accuracy", higher_is_better=False)
    class C(ToyTask):
        pass

    entry = registry.get_task("toy_a")
    assert entry.task is A and entry.dataset == "toy_a" and A.task_entries == (entry,) and B.task_entries == (entry,)
    assert "task_entries" not in B.__dict__
    cfg = OmegaConf.create({"model": {}, "datasets": {"toy_a": {}}, "run": {"task": "toy_a", "output_dir": "x"}})
    assert A(cfg).entry is entry  # the class knows its entry: no reverse look-up in the registry
    with pytest.raises(ConfigError, match="B has 0 registry entries"):
        B(cfg)
    assert [e.name for e in C.task_entries] == ["toy_c2", "toy_c1"]
    with pytest.raises(ConfigError, match="C has 2 registry entries"):
        C(OmegaConf.create({"datasets": {"toy_tokens": {}}, "run": {"task": "toy_c1", "output_dir": "x"}}))
    built = registry.get_task("toy_c2").build(
        OmegaConf.create({"datasets": {"toy_tokens": {}}, "run": {"task": "toy_c2", "output_dir": "x"}})
    )
    assert type(built) is C and built.name == "toy_c2" and built.higher_is_better is False
    registry.unregister_task("toy_c2")
    assert [e.name for e in C.task_entries] == ["toy_c1"]
    with pytest.raises(ConfigError, match=r"registered_task\('toy_d'\): no option 'metrc' \(did you mean 'metric'\?\)"):
        registered_task("toy_d", model_arch="d", metrc="accuracy")


def test_task_packages_are_scanned_and_a_broken_module_skips_only_itself(monkeypatch, tmp_path):
    pkg = tmp_path / "scanpkg_ok"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "task.py").write_text(
        textwrap.dedent("""
        from toy_task import ToyTask
        from mmllm.engine.registry import registered_task

        @registered_task("scanned_toy", model_arch="scanned_toy_arch", metric="accuracy")
        class ScannedToy(ToyTask):
            pass
    """)
    )
    (pkg / "broken_task.py").write_text("raise RuntimeError('this module is broken')\n")
    (pkg / "helpers.py").write_text("raise RuntimeError('not a task module: never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = _fresh_registry(monkeypatch, ["scanpkg_ok", "scanpkg_missing"])
    with pytest.warns(UserWarning, match="scanpkg_ok.broken_task"):
        tasks = registry.all_tasks()
    assert list(tasks) == ["scanned_toy"] and tasks["scanned_toy"].task.__name__ == "ScannedToy"
    broken = registry.broken_entry_points()
    assert set(broken) == {"scanpkg_ok.broken_task", "scanpkg_missing"}
    assert "this module is broken" in broken["scanpkg_ok.broken_task"]
    with pytest.raises(ConfigError, match="failed to load.*scanpkg_ok.broken_task"):
        registry.get_task("other")


def test_builtin_task_packages_and_modules_follow_the_convention():
    from mmllm.engine.registry import task_modules, task_packages

    packages = task_packages()
    assert {
        "vision.classification",
        "vision.pointcloud",
        "vision.action",
        "vision.motion",
        "mmllm_vqa",
        "mmllm_retrieval",
        "mmllm_3dvqa",
    } <= set(packages)
    assert not [p for p in packages if p.startswith("mmllm.")]  # one layout: no task lives in the core
    assert task_modules("mmllm_vqa") == [
        "mmllm_vqa.benchmark",
        "mmllm_vqa.caption_task",
        "mmllm_vqa.generative_task",
        "mmllm_vqa.pretrain_task",
        "mmllm_vqa.task",
        "mmllm_vqa.vlap_task",
    ]


def test_engine_task_and_registry_import_each_other_only_for_typing():
    """No import circle: ``engine/task.py`` never imports the registry, the registry imports the Task class
    only under TYPE_CHECKING (the decorator records the entry on the class)."""
    import ast

    def runtime_imports(path):
        tree = ast.parse(path.read_text())
        typing_only = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        return {
            (node.module or "")
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and id(node) not in typing_only
        }

    engine = ROOT / "mmllm" / "engine"
    assert not any(m.endswith("registry") for m in runtime_imports(engine / "task.py"))
    assert not any(m in ("task", ".task") or m.endswith(".task") for m in runtime_imports(engine / "registry.py"))
