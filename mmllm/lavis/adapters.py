"""Generic adapters that present one of our :class:`~mmllm.engine.task.Task` classes to LAVIS
as a registered model, task and dataset builder.

LAVIS builds datasets before the model (``setup_task -> build_datasets -> build_model``);
our tasks need the model first (its image transform, tokenizer, answer vocabulary), so the
LAVIS task builds our model inside ``build_datasets`` and hands the same object out in
``build_model``. Batches are collated by our task (LAVIS calls ``dataset.collater``).
"""
from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

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


@dataclass(frozen=True)
class LavisEntry:
    """What a project registers: our task class under LAVIS names, plus default config files."""

    task_cls: type
    task_name: str
    model_arch: str
    builder_name: str
    model_default_config: Path
    dataset_default_config: Path
    model_factory: Callable[[DictConfig], Any]  # model section -> nn.Module (for LAVIS's from_config)
    preparers: tuple[tuple[str, str], ...] = ()  # ("easy_vqa", "module:function") for ``prepare:`` keys


def register(entry: LavisEntry) -> None:
    """Register ``entry`` in LAVIS's registry (idempotent)."""
    if entry.task_name in _REGISTERED:
        return
    import sys

    registry = import_lavis().registry
    BaseModel = sys.modules["lavis.models.base_model"].BaseModel
    BaseTask = sys.modules["lavis.tasks.base_task"].BaseTask
    BaseDatasetBuilder = sys.modules["lavis.datasets.builders.base_dataset_builder"].BaseDatasetBuilder

    class Model(BaseModel):
        PRETRAINED_MODEL_CONFIG_DICT = {"default": str(entry.model_default_config)}

        def __init__(self, net, task=None):
            super().__init__()
            self.net = net
            self.task = task

        @classmethod
        def from_config(cls, cfg):
            return cls(entry.model_factory(cfg))

        def forward(self, samples):
            if self.task is None:
                raise ConfigError(f"{entry.model_arch} computes its loss through task {entry.task_name!r}")
            loss, logs = self.task.training_loss(self.net, samples)
            return {"loss": loss, **{k: v for k, v in logs.items() if "loss" in k}}

    class Task(BaseTask):
        def __init__(self, cfg):
            super().__init__()
            self.ours = entry.task_cls(native_config(cfg))
            self.model = None
            self.splits: dict[str, Any] = {}
            self._eval_split = None

        @classmethod
        def setup_task(cls, cfg, **kwargs):
            return cls(cfg)

        def build_datasets(self, cfg):
            net = self.ours.build_model()
            run = self.ours.cfg.run
            if run.get("init_from"):  # stage transfer for LAVIS's own runner too (ours applies it again: same weights)
                from ..engine.trainer import load_model_file

                load_model_file(net, run.init_from, list(run.get("init_prefixes", []) or []))
            self.model = Model(net, self.ours)
            self.splits = self.ours.build_datasets()
            wrapped = {name: LavisDataset(ds, self.ours.collate) for name, ds in self.splits.items()}
            return {entry.builder_name: wrapped}

        def build_model(self, cfg):
            if self.model is None:
                self.build_datasets(cfg)
            return self.model

        def before_evaluation(self, model, dataset, **kwargs):
            target = dataset.dataset if isinstance(dataset, LavisDataset) else dataset
            self._eval_split = next((n for n, d in self.splits.items() if d is target), "eval")

        def evaluation(self, model, data_loader, cuda_enabled=None):
            from ..engine import distributed

            net = model.net if hasattr(model, "net") else model.module.net
            split = self._eval_split or "eval"
            out_dir = Path(self.ours.cfg.run.output_dir)
            if distributed.is_main():
                out_dir.mkdir(parents=True, exist_ok=True)
            return self.ours.evaluate(net, self.splits[split], split, out_dir)

        def after_evaluation(self, val_result, split_name, epoch, **kwargs):
            metrics = dict(val_result)
            metrics["agg_metrics"] = metrics.get(self.ours.main_metric, 0.0)
            return metrics

    class Builder(BaseDatasetBuilder):
        DATASET_CONFIG_DICT = {"default": str(entry.dataset_default_config)}

        def build_datasets(self):
            raise ConfigError(f"{entry.builder_name} datasets are built by task {entry.task_name!r} (run.task)")

    registry.register_model(entry.model_arch)(Model)
    registry.register_task(entry.task_name)(Task)
    registry.register_builder(entry.builder_name)(Builder)
    _REGISTERED.add(entry.task_name)


def register_all() -> list[LavisEntry]:
    """Register every entry our packages advertise (entry-point group ``mmllm.lavis``)."""
    entries = []
    for ep in importlib.metadata.entry_points(group="mmllm.lavis"):
        for entry in ep.load()():
            register(entry)
            entries.append(entry)
    from .runner import register_runner

    register_runner()
    return entries
