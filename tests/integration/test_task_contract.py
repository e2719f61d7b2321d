"""The contract every registered task (benchmark x model pair) keeps, one harness for all of them.

For each entry of the task registry: its registered default config, with the tiny overrides of
:data:`TINY` (tiny data written here, a tiny model, a tiny frozen block), is validated and built,
trains two steps through ``mmllm train`` (in process), then predicts and evaluates the test split;
the losses and the registered main metric must be finite. One pair also trains through LAVIS's
path, and a decorated Task class in a brand-new module is found through ``mmllm train --import``.

A new task needs one entry in :data:`TINY` (its tiny data and model; run keys are shared); a
registered task without one fails here, naming this file.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import ROOT
from omegaconf import OmegaConf

from mmllm.config import load_config
from mmllm.engine.registry import TaskEntry, all_tasks

# a frozen block of a tiny random LLaMA layer: no weights to read, any host width
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
VIT = {"vit": {"image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "heads": 2}}  # open_clip ViT
VIT2 = {"vit": {**VIT["vit"], "layers": 2}}  # LLaVA's features (the penultimate block) need two blocks
METER = {
    "model.vision": VIT,
    "model.hidden_size": 32,
    "model.fusion_layers": 1,
    "model.num_heads": 2,
    "model.text": {
        "name": "minilm-l6",
        "random_init": True,
        "config_overrides": {
            "num_hidden_layers": 1,
            "hidden_size": 32,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
    },
    "model.llm_block": BLOCK,
}
# every pair: two steps, small batches, fp32, no mid-run evaluation or TensorBoard
RUN = {
    "max_steps": 2,
    "max_epoch": 10,
    "batch_size_train": 4,
    "batch_size_eval": 4,
    "precision": "fp32",
    "log_every": 1,
    "num_workers": 0,
    "evaluate_val": False,
    "tensorboard": False,
    "checkpoint_every": 0,
    "deepspeed_config": str(ROOT / "configs/deepspeed/zero0.json"),
}


class Data:
    """Tiny data and models written once per module, each on first use."""

    def __init__(self, root: Path):
        self.root, self._made = root, {}

    def once(self, name: str, make: Callable[[Path], Any]) -> Any:
        if name not in self._made:
            self._made[name] = make(self.root / name)
        return self._made[name]

    def vqa(self) -> Path:  # VQAv2 questions/annotations + Karpathy captions on 4 solid-colour images
        from tiny_vqa import write_images_and_qa

        return self.once("vqa", lambda d: write_images_and_qa(d, n_images=4))

    def vqa_split(self) -> dict:
        d = self.vqa()
        return {
            "questions": str(d / "questions.json"),
            "annotations": str(d / "annotations.json"),
            "image_root": str(d / "images"),
        }

    def captions(self, split: str) -> dict:
        return {"annotation": str(self.vqa() / f"captions_{split}.json"), "image_root": str(self.vqa() / "images")}

    def lm(self) -> str:  # a tiny random LLaMA with SmolLM2's tokenizer, as a local HF folder
        def make(folder: Path) -> Path:
            from tiny_llms import tiny_model

            from mmllm.models.llava import load_tokenizer

            tok = load_tokenizer("smollm2-135m")
            tiny_model(
                "llama",
                vocab_size=len(tok),
                tie_word_embeddings=True,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id,
            ).save_pretrained(str(folder))
            tok.save_pretrained(str(folder))
            return folder

        return str(self.once("lm", make))

    def llama(self) -> str:  # a tiny random LLaMA checkpoint (tests/tiny_llms.py) for kind llm_block
        def make(folder: Path) -> Path:
            from tiny_llms import save_tiny

            save_tiny("llama", folder)
            return folder

        return str(self.once("llama", make))


def _scenes(d: Data) -> dict:
    from mmllm_3dvqa import scenes

    def make(root: Path) -> Path:
        scenes.generate(
            root,
            scenes.GeneratorSettings(
                seed=1, num_scenes=4, situations_per_scene=1, points_per_object=32, floor_points=32
            ),
        )
        return root

    root = d.once("scenes", make)
    split = {
        s: {
            "questions": str(root / scenes.QUESTIONS_FILE.format(split=s)),
            "annotations": str(root / scenes.ANNOTATIONS_FILE.format(split=s)),
        }
        for s in ("train", "test")
    }
    return {
        "model.scene": {"num_groups": 8, "group_size": 8, "width": 32, "pointnet_hidden": 16, "layers": 1, "heads": 2},
        **{k: v for k, v in METER.items() if k != "model.vision"},
        "datasets.mmllm_3dvqa.scene_dir": str(root / "scenes"),
        "datasets.mmllm_3dvqa.num_points": 96,
        "datasets.mmllm_3dvqa.splits": split,
    }


def _clips(d: Data) -> dict:
    from vision.action import clips

    root = d.once("clips", lambda p: clips.generate(p, clips.ClipSettings(train=4, val=1, test=3, seed=2)))
    split = {s: {"annotation": str(root / f"{s}.json"), "video_root": str(root / "videos")} for s in ("train", "test")}
    return {
        "model.img_size": 32,
        "model.tubelet_size": 2,
        "model.embed_dim": 16,
        "model.depth": 2,
        "model.num_heads": 2,
        "model.insert_after": 0,
        "model.llm_block": BLOCK,
        "datasets.mmllm_action.labels": str(root / "labels.json"),
        "datasets.mmllm_action.input_size": 32,
        "datasets.mmllm_action.splits": split,
    }


def _images(d: Data) -> dict:
    from test_image_cls import TINY_VIT, image_tree

    root = d.once("images", lambda p: image_tree(p, per_class=2))
    return {
        "model.vit_kwargs": TINY_VIT,
        "model.insert_after": 1,
        "model.llm_block": BLOCK,
        "datasets.mmllm_image_cls.root": str(root),
        "datasets.mmllm_image_cls.corrupted": None,
        "datasets.mmllm_image_cls.per_class": {},
    }


def _motion(d: Data) -> dict:
    from vision.motion.simulate import write_dataset

    root = d.once("motion", lambda p: write_dataset(p, {"train": 8, "val": 2, "test": 3}, seed=4))
    return {
        "model.hidden_dim": 16,
        "model.dim": 16,
        "model.num_heads": 2,
        "model.subgraph_layers": 1,
        "model.llm_block": BLOCK,
        "datasets.mmllm_motion.root": str(root),
        "datasets.mmllm_motion.max_lanes": 8,
        "datasets.mmllm_motion.lane_radius": 30.0,
    }


def _clouds(d: Data) -> dict:
    def make(root: Path) -> Path:
        import h5py

        root.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for split, n in (("train", 8), ("test", 3), ("test_hard", 3)):
            labels = np.arange(n) % 3
            pts = rng.normal(size=(n, 64, 3))
            pts = pts / np.linalg.norm(pts, axis=2, keepdims=True) * (0.3 + 0.3 * labels)[:, None, None]
            with h5py.File(root / f"{split}.h5", "w") as f:
                f.create_dataset("data", data=pts.astype(np.float32))
                f.create_dataset("label", data=labels.astype(np.int64))
        (root / "shape_names.txt").write_text("small\nmedium\nlarge\n")
        return root

    root = d.once("clouds", make)
    return {
        "model.num_groups": 8,
        "model.group_size": 8,
        "model.dim": 16,
        "model.depth": 2,
        "model.num_heads": 2,
        "model.tokenizer_hidden": 8,
        "model.pos_hidden": 8,
        "model.head_hidden": 8,
        "model.insert_after": 1,
        "model.llm_block": BLOCK,
        "datasets.mmllm_pointcloud_cls.root": str(root),
        "datasets.mmllm_pointcloud_cls.num_points": 32,
        "datasets.mmllm_pointcloud_cls.splits": {"train": "train.h5", "test": "test.h5", "test_hard": "test_hard.h5"},
    }


def _generative(name: str) -> Callable[[Data], dict]:
    def tiny(d: Data) -> dict:
        return {
            "model.vision": VIT2,
            "model.llm.source": d.lm(),
            "model.llm.dtype": "fp32",
            "model.max_new_tokens": 3,
            f"datasets.{name}.eval_limit": 6,
            f"datasets.{name}.splits": {"train": d.vqa_split(), "test": d.vqa_split()},
        }

    return tiny


# the one place that knows each registered task: tiny data and a tiny model, as `key: value` overrides
# (each value replaces the default config's; `prepare`/`root` of the task's own data section are dropped)
TINY: dict[str, Callable[[Data], dict]] = {
    "mmllm_vqa": lambda d: {
        **METER,
        "datasets.mmllm_vqa.num_answers": 10,
        "datasets.mmllm_vqa.max_text_len": 12,
        "datasets.mmllm_vqa.splits": {"train": d.vqa_split(), "test": d.vqa_split()},
    },
    "mmllm_itm_mlm": lambda d: {
        **METER,
        "run.test_splits": ["val"],
        "datasets.mmllm_captions.max_text_len": 12,
        "datasets.mmllm_captions.splits": {"train": d.captions("train"), "val": d.captions("val")},
    },
    "mmllm_retrieval": lambda d: {
        **METER,
        "run.k_test": 2,
        "datasets.mmllm_retrieval.max_text_len": 12,
        "datasets.mmllm_retrieval.splits": {"train": d.captions("train"), "test": d.captions("val")},
    },
    "mmllm_retrieval_vlap": lambda d: {
        "model.vision": VIT,
        "model.llm": d.lm(),
        "model.llm_dtype": "fp32",
        "datasets.mmllm_retrieval.splits": {"train": d.captions("train"), "test": d.captions("val")},
    },
    "mmllm_vqa_generative": _generative("mmllm_vqa"),
    "mmllm_captioning_llava": lambda d: {
        "model.vision": VIT2,
        "model.llm.source": d.lm(),
        "model.llm.dtype": "fp32",
        "model.max_new_tokens": 3,
        "datasets.mmllm_captioning.splits": {"train": d.captions("train"), "test": d.captions("val")},
    },
    "mmllm_vqa_vlap": _generative("mmllm_vqa"),
    "mmllm_3dvqa": _scenes,
    "mmllm_action": _clips,
    "mmllm_image_cls": _images,
    "mmllm_motion": _motion,
    "mmllm_pointcloud_cls": _clouds,
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Data:
    return Data(tmp_path_factory.mktemp("contract"))


def tiny_config(entry: TaskEntry, data: Data, out: Path, **run: Any) -> Path:
    """``entry``'s registered default config with its :data:`TINY` overrides, written to ``out``.yaml."""
    if entry.name not in TINY:
        pytest.fail(f"task {entry.name!r} is registered but has no tiny overrides: add it to TINY in {__file__}")
    cfg = load_config(entry.default_config)
    section = cfg.datasets[entry.dataset]
    section.prepare, section.root = None, None  # the tiny data are written by this file
    for key, value in {
        **{f"run.{k}": v for k, v in {**RUN, **run}.items()},
        **TINY[entry.name](data),
        "run.output_dir": str(out),
    }.items():
        OmegaConf.update(cfg, key, value, merge=False)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(OmegaConf.to_container(cfg)))
    return path


def logged(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def shipped_tasks() -> list[str]:
    """Every task this repository registers (mmllm, vision, the projects' mmllm_* packages); tasks that other
    test modules register for themselves (toy_task) are theirs to test, whichever file was collected first."""
    return sorted(
        name
        for name, entry in all_tasks().items()
        if entry.task_class().__module__.split(".")[0] in ("mmllm", "vision")
        or entry.task_class().__module__.startswith("mmllm_")
    )


@pytest.mark.parametrize("name", shipped_tasks())
def test_every_registered_pair_builds_trains_two_steps_and_evaluates(name, data, tmp_path, capsys):
    from mmllm.cli import main as mmllm

    entry = all_tasks()[name]
    assert entry.default_config is not None and entry.default_config.is_file(), "a pair ships its default config"
    out = tmp_path / "run"
    config = tiny_config(entry, data, out)
    assert mmllm(["train", "--config", str(config)]) == 0, capsys.readouterr().err[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == name and summary["steps"] == 2
    train = [m for m in logged(out) if m.get("split") == "train"]
    assert [m["step"] for m in train] == [1, 2] and all(math.isfinite(m["loss"]) for m in train)
    key = f"{(yaml.safe_load(config.read_text())['run'].get('test_splits') or ['test'])[0]}_{entry.metric}"
    assert key in summary, f"the registered main metric {entry.metric!r} is not in summary.json: {sorted(summary)}"
    assert math.isfinite(summary[key])


def test_a_pair_trains_two_steps_through_lavis(data, tmp_path):
    """LAVIS's Config -> setup_task -> build_datasets -> build_model -> runner path, on a registered pair."""
    from mmllm.lavis.train import main as lavis_main

    entry = all_tasks()["mmllm_motion"]
    path = tiny_config(entry, data, tmp_path / "run", runner="runner_deepspeed", max_epoch=1)
    cfg = yaml.safe_load(path.read_text())
    # LAVIS merges the model section over the registered one: the default kind, on a tiny checkpoint
    cfg["model"].update(
        arch=entry.model_arch,
        model_type="default",
        llm_block={"kind": "llm_block", "source": data.llama(), "dtype": "float32"},
    )
    path.write_text(yaml.safe_dump(cfg))
    assert lavis_main(["--cfg-path", str(path)]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["task"] == "mmllm_motion" and summary["steps"] == 2 and math.isfinite(summary["test_minFDE"])


NEW_MODULE = '''
"""A task in a module of its own: registered by the decorator on its class, no entry point."""
import torch
from torch import nn
from torch.utils.data import TensorDataset

from mmllm import build_visual_llm_layer
from mmllm.engine.evaluation import predict
from mmllm.engine.registry import registered_task
from mmllm.engine.task import Task
from mmllm.schema import ModelSection


class Options(ModelSection):
    llm_block: dict | None = None


@registered_task("contract_new_task", model_arch="contract_new_arch", metric="accuracy")
class NewTask(Task):
    ModelOptions = Options

    def build_model(self):
        return nn.Sequential(nn.Linear(4, 8), build_visual_llm_layer(self.model_cfg.llm_block, 8), nn.Linear(8, 2))

    def build_datasets(self):
        x = torch.randn(12, 3, 4, generator=torch.Generator().manual_seed(0))
        return {"train": TensorDataset(x, (x.sum((1, 2)) > 0).long()), "test": TensorDataset(x[:4], (x[:4].sum((1, 2)) > 0).long())}

    def collate(self, samples):
        return {"x": torch.stack([s[0] for s in samples]), "y": torch.stack([s[1] for s in samples])}

    def training_loss(self, model, batch):
        return nn.functional.cross_entropy(model(batch["x"]).mean(1), batch["y"]), {}

    def evaluate(self, model, dataset, split, out_dir):
        hits = predict(model, dataset, self.collate, 4, lambda m, b: (m(b["x"]).mean(1).argmax(-1) == b["y"]).tolist(),
                       desc=split, task=self)
        return {"accuracy": 100 * sum(hits) / len(hits)}
'''


def test_a_decorated_class_in_a_new_module_trains_through_mmllm_train_import(tmp_path, capsys):
    """No entry point, no install: ``--import`` of the module registers the class's task."""
    from mmllm.cli import main as mmllm

    (tmp_path / "contract_new_task_module.py").write_text(textwrap.dedent(NEW_MODULE))
    cfg = {
        "model": {"llm_block": BLOCK},
        "datasets": {"contract_new_task": {}},
        "run": {**RUN, "task": "contract_new_task", "output_dir": str(tmp_path / "run")},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE")
    }
    env.update(DS_ACCELERATOR="cpu", PYTHONPATH=os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")]))
    assert mmllm(["train", "--config", str(tmp_path / "cfg.yaml")]) == 2  # not imported: not registered
    assert "'contract_new_task' is not a registered task" in capsys.readouterr().err
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmllm.cli",
            "train",
            "--config",
            str(tmp_path / "cfg.yaml"),
            "--import",
            "contract_new_task_module",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["task"] == "contract_new_task" and summary["steps"] == 2 and 0 <= summary["test_accuracy"] <= 100
