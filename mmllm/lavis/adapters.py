"""Every registered task (:mod:`mmllm.engine.registry`) presented to LAVIS as a model, a task and a
dataset builder, generically: this module never names a task.

LAVIS builds datasets before the model (``setup_task -> build_datasets -> build_model``). Our
tasks build their preprocessing from the config alone, so datasets come first here too, and
the model is built once, by :func:`mmllm.engine.trainer.build_model` (which applies
``run.init_from``). Batches are collated by our task (LAVIS calls ``dataset.collater``).
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from ..engine.registry import TaskEntry, all_tasks
from ..errors import ConfigError
from .compat import import_lavis

_REGISTERED: set[str] = set()


def native_config(lavis_cfg) -> DictConfig:
    """LAVIS ``Config`` (or an OmegaConf with model/datasets/run) -> our task config."""
    node = getattr(lavis_cfg, "config", lavis_cfg)
    return OmegaConf.create({"model": node.model, "datasets": node.datasets, "run": node.run})


class LavisDataset(Dataset):
    """One split of our data as LAVIS expects it: indexable, sized, with ``collater``."""

    def __init__(self, dataset, collater: Callable | None):
        self.dataset = dataset
        self.collater = collater

    def __len__(self) -> int:
        return len(self.dataset) if hasattr(self.dataset, "__len__") else len(getattr(self.dataset, "items", [1]))

    def __getitem__(self, i):
        return self.dataset[i]


def _minimal_default(name: str, content: dict) -> Path:
    """LAVIS loads a default config file for every model type and builder; a task that ships none
    (registered from user code) gets one naming only what LAVIS requires."""
    import tempfile

    import yaml

    folder = Path(tempfile.gettempdir()) / "mmllm_lavis_defaults"
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(content))
    return path


def register(entry: TaskEntry) -> None:
    """Register ``entry``'s model arch, task and dataset builder in LAVIS's registry (idempotent)."""
    if entry.name in _REGISTERED:
        return
    registry = import_lavis().registry
    BaseModel = sys.modules["lavis.models.base_model"].BaseModel
    BaseTask = sys.modules["lavis.tasks.base_task"].BaseTask
    BaseDatasetBuilder = sys.modules["lavis.datasets.builders.base_dataset_builder"].BaseDatasetBuilder
    model_config = entry.lavis_model_config or entry.default_config or _minimal_default(
        f"{entry.model_arch}_model.yaml", {"model": {"arch": entry.model_arch, "model_type": "default"}})
    dataset_config = entry.lavis_dataset_config or entry.default_config or _minimal_default(
        f"{entry.dataset}_dataset.yaml", {"datasets": {entry.dataset: {"data_type": "images"}}})

    class Model(BaseModel):
        PRETRAINED_MODEL_CONFIG_DICT = {"default": str(model_config)}

        def __init__(self, net, task=None):
            super().__init__()
            self.net = net
            self.task = task

        @classmethod
        def from_config(cls, cfg):
            raise ConfigError(f"{entry.model_arch} is built by its task {entry.name!r} (run.task), "
                              "which knows its data (answer vocabulary, tokenizer)")

        def forward(self, samples):
            if self.task is None:
                raise ConfigError(f"{entry.model_arch} computes its loss through task {entry.name!r}")
            loss, logs = self.task.training_loss(self.net, samples)
            return {"loss": loss, **{k: v for k, v in logs.items() if "loss" in k}}

    class Task(BaseTask):
        def __init__(self, cfg):
            super().__init__()
            self.ours = entry.build(native_config(cfg))
            self.model = None
            self.splits: dict[str, Any] = {}
            self._eval_split = None

        @classmethod
        def setup_task(cls, cfg, **kwargs):
            return cls(cfg)

        def build_datasets(self, cfg):
            self.ours.build_preprocess()
            self.splits = self.ours.build_datasets()
            wrapped = {name: LavisDataset(ds, self.ours.collate) for name, ds in self.splits.items()}
            return {entry.dataset: wrapped}

        def build_model(self, cfg):
            from ..engine.trainer import build_model

            if self.model is None:
                if not self.splits:
                    raise ConfigError("LAVIS built the model before the datasets; call build_datasets first")
                self.model = Model(build_model(self.ours), self.ours)
            return self.model

        def before_evaluation(self, model, dataset, **kwargs):
            target = dataset.dataset if isinstance(dataset, LavisDataset) else dataset
            self._eval_split = next((n for n, d in self.splits.items() if d is target), "eval")

        def evaluation(self, model, data_loader, cuda_enabled=None):
            from ..engine import distributed

            net = model.net if hasattr(model, "net") else model.module.net
            split = self._eval_split or "eval"
            out_dir = Path(self.ours.run.output_dir)
            if distributed.is_main():
                out_dir.mkdir(parents=True, exist_ok=True)
            return self.ours.evaluate(net, self.splits[split], split, out_dir)

        def after_evaluation(self, val_result, split_name, epoch, **kwargs):
            metrics = dict(val_result)
            main = metrics.get(self.ours.main_metric, 0.0)
            metrics["agg_metrics"] = main if self.ours.higher_is_better else -main  # LAVIS keeps the largest
            return metrics

    class Builder(BaseDatasetBuilder):
        DATASET_CONFIG_DICT = {"default": str(dataset_config)}

        def build_datasets(self):
            raise ConfigError(f"{entry.dataset} datasets are built by task {entry.name!r} (run.task)")

    registry.register_model(entry.model_arch)(Model)
    registry.register_task(entry.name)(Task)
    registry.register_builder(entry.dataset)(Builder)
    _REGISTERED.add(entry.name)


def register_all() -> list[TaskEntry]:
    """Register every task of our registry in LAVIS's, and our DeepSpeed runner."""
    entries = list(all_tasks().values())
    for entry in entries:
        register(entry)
    from .runner import register_runner

    register_runner()
    return entries
