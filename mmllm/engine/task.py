"""What a task provides to the engine: preprocessing, a model, datasets, a loss and an evaluation.

A task's config sections are typed (:mod:`mmllm.schema`): ``run`` by ``RunOptions``, ``model``
by ``ModelOptions`` and its own ``datasets.<entry.dataset>`` section by ``DataOptions``, so a
misspelled key is an error wherever it is. Preprocessing (transforms, tokenizer) is built from
the config alone, so datasets never wait for the model and a model built elsewhere (LAVIS's
``build_model``) can be handed to the trainer with them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset

from ..config import to_dict
from ..errors import ConfigError
from ..schema import DataSection, ModelSection, suggest
from .batch import move_batch
from .run_config import RunConfig

if TYPE_CHECKING:
    from .registry import TaskEntry


class Task(ABC):
    """One training objective on one kind of data (VQA fine-tuning, ITM+MLM pretraining, ...).

    Subclasses set ``ModelOptions``/``DataOptions``/``RunOptions`` and ``compute_dtype_inputs``
    (the batch keys that run in the compute dtype, e.g. images; coordinates, targets and
    trajectories stay in fp32 because bf16 would silently blur them).
    """

    RunOptions: ClassVar[type[RunConfig]] = RunConfig
    ModelOptions: ClassVar[type[ModelSection]] = ModelSection
    DataOptions: ClassVar[type[DataSection]] = DataSection
    compute_dtype_inputs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: DictConfig, entry: TaskEntry | None = None):
        self.cfg = cfg
        self.entry = entry or self._own_entry()
        self.run = self.RunOptions.parse(to_dict(cfg.get("run")), "run")
        self.model_cfg = self.ModelOptions.parse(to_dict(cfg.get("model")), "model")
        self.data_cfg = self.DataOptions.parse(to_dict(self._data_section(cfg)), f"datasets.{self.dataset_key}")
        self.block_cfg = self._check_block_options()

    def _check_block_options(self):
        """``model.llm_block`` checked against its kind's own options now, not when the model is built."""
        options = getattr(self.model_cfg, "llm_block", None)
        if options is None:
            return None
        from ..blocks import parse_block_options

        try:
            return parse_block_options(options, visual_dim=1)  # the host model sets the real width
        except ConfigError as exc:
            raise ConfigError(f"model.llm_block: {exc}") from None

    # ------------------------------------------------------------------ identity
    @classmethod
    def _own_entry(cls) -> TaskEntry:
        from .registry import all_tasks

        mine = [e for e in all_tasks().values() if e.task is cls or e.task == f"{cls.__module__}:{cls.__qualname__}"]
        if len(mine) != 1:
            raise ConfigError(f"{cls.__name__} has {len(mine)} registry entries: build it with TaskEntry.build(cfg)")
        return mine[0]

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def dataset_key(self) -> str:
        return self.entry.dataset

    def _data_section(self, cfg: DictConfig):
        """This task's own ``datasets.<key>``; sections of other registered tasks may sit beside it
        (one file for several stages), anything else is a misspelling."""
        from .registry import all_tasks

        datasets = cfg.get("datasets") or {}
        key = self.dataset_key
        known = {e.dataset for e in all_tasks().values()} | {key}
        stray = [k for k in datasets if k not in known]
        if stray:
            raise ConfigError(f"datasets.{stray[0]}: no registered task reads this section{suggest(stray[0], sorted(known))}")
        if key not in datasets:
            raise ConfigError(f"config key 'datasets.{key}' is required by task {self.name!r}")
        return datasets[key]

    @property
    def main_metric(self) -> str:
        return self.entry.metric

    @property
    def higher_is_better(self) -> bool:
        return self.entry.higher_is_better

    def resolved_config(self) -> dict[str, Any]:
        """The config with every default filled in (``mmllm config --show``)."""
        model = self.model_cfg.to_dict()
        if self.block_cfg is not None:
            model["llm_block"] = {k: v for k, v in self.block_cfg.to_dict().items() if k != "visual_dim"}
        return {"model": model, "datasets": {self.dataset_key: self.data_cfg.to_dict()}, "run": self.run.to_dict()}

    # ------------------------------------------------------------------ what a task implements
    def build_preprocess(self) -> None:
        """Build transforms/tokenizer from the config alone (open_clip's create_model_and_transforms
        split): called before the datasets, never needs the model. Tasks without preprocessing keep this."""
        return None

    @abstractmethod
    def build_model(self) -> nn.Module: ...

    @abstractmethod
    def build_datasets(self) -> dict[str, Dataset]:
        """Datasets by split; ``train`` is required for training, ``val``/``test`` are evaluated."""

    @abstractmethod
    def collate(self, samples: list[Any]) -> dict[str, Any]: ...

    @abstractmethod
    def training_loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]: ...

    @abstractmethod
    def evaluate(self, model: nn.Module, dataset: Dataset, split: str, out_dir: Path) -> dict[str, float]:
        """Metrics of ``model`` on ``dataset`` (called on every rank; result files written by rank 0)."""

    # ------------------------------------------------------------------ shared behaviour
    def lr_multipliers(self) -> dict[str, float]:
        """Parameter-name prefix -> LR multiplier (``run.lr_multipliers``)."""
        return dict(self.run.lr_multipliers)

    def move_batch(self, batch: Any, device: torch.device, dtype: torch.dtype) -> Any:
        """The batch on ``device``; only ``compute_dtype_inputs`` cast to ``dtype``."""
        return move_batch(batch, device, dtype, self.compute_dtype_inputs)
