"""What a task provides to the engine: preprocessing, a model, datasets, a loss and an evaluation.

A task's config sections are typed (:mod:`mmllm.schema`): ``run`` by ``RunOptions``, ``model``
by ``ModelOptions`` and its own ``datasets.<entry.dataset>`` section by ``DataOptions``, so a
misspelled key is an error wherever it is. Preprocessing (transforms, tokenizer) is built from
the config alone, so datasets never wait for the model and a model built elsewhere (LAVIS's
``build_model``) can be handed to the trainer with them.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset

from ..config import to_dict
from ..errors import ConfigError
from ..schema import DataSection, ModelSection
from .batch import move_batch
from .preprocess import Preprocess
from .run_config import RunConfig


class TaskEntryLike(Protocol):
    """What a task reads of its registry entry (:class:`mmllm.engine.registry.TaskEntry`, which imports
    this module; this one never imports the registry)."""

    @property
    def name(self) -> str: ...
    @property
    def dataset(self) -> str: ...
    @property
    def metric(self) -> str: ...
    @property
    def higher_is_better(self) -> bool: ...
    def build(self, cfg: DictConfig) -> Task: ...


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
    # the class's registry entries, set by @registered_task / register_task on the class itself (not inherited)
    task_entries: ClassVar[tuple[TaskEntryLike, ...]] = ()

    def __init__(self, cfg: DictConfig, entry: TaskEntryLike | None = None):
        self.cfg = cfg
        self.entry = entry or self._own_entry()
        self.run = self.RunOptions.parse(to_dict(cfg.get("run")), "run")
        self.model_cfg = self.ModelOptions.parse(to_dict(cfg.get("model")), "model")
        self.data_cfg = self.DataOptions.parse(to_dict(self._data_section(cfg)), f"datasets.{self.dataset_key}")
        self.block_cfg = self._check_block_options()

    def _check_block_options(self):
        """``model.llm_block`` checked against its kind's own options now, not when the model is built. A section
        typed :data:`mmllm.blocks.BlockOptions` was checked when it was parsed (once); an untyped one is here."""
        options = getattr(self.model_cfg, "llm_block", None)
        if options is None:
            return None
        from ..blocks import is_block_options_field, parse_block_options

        if is_block_options_field(type(self.model_cfg).model_fields.get("llm_block")):
            return None  # validated (and completed) by the section itself: nothing to parse twice

        try:
            return parse_block_options(options, visual_dim=1)  # the host model sets the real width
        except ConfigError as exc:
            raise ConfigError(f"model.llm_block: {exc}") from None

    # ------------------------------------------------------------------ identity
    @classmethod
    def _own_entry(cls) -> TaskEntryLike:
        """The one entry registered on this very class (a subclass does not inherit its parent's)."""
        mine = cls.__dict__.get("task_entries", ())
        if len(mine) != 1:
            raise ConfigError(
                f"{cls.__name__} has {len(mine)} registry entries: build it with its entry, get_task(name).build(cfg)"
            )
        return mine[0]

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def dataset_key(self) -> str:
        return self.entry.dataset

    def _data_section(self, cfg: DictConfig):
        """This task's own ``datasets.<key>`` (stray sections beside it: ``TaskEntry.build`` checks them
        against the registry)."""
        datasets = cfg.get("datasets") or {}
        key = self.dataset_key
        older = [k for k in getattr(self.entry, "dataset_aliases", ()) if k in datasets]
        if key in datasets and older:  # an override under the old name would silently go nowhere
            raise ConfigError(
                f"datasets.{older[0]} is the older name of datasets.{key} (task {self.name!r}): "
                f"give the keys under datasets.{key} only"
            )
        if key in datasets:
            return datasets[key]
        if len(older) > 1:
            raise ConfigError(f"datasets.{older[0]} and datasets.{older[1]} are both older names of datasets.{key}")
        if older:  # a run stored under the section's older name reads as it did
            return datasets[older[0]]
        raise ConfigError(f"config key 'datasets.{key}' is required by task {self.name!r}")

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
    def build_preprocess(self) -> Preprocess:
        """Build transforms/tokenizer from the config alone (open_clip's create_model_and_transforms
        split) and return them as a :class:`~mmllm.engine.preprocess.Preprocess`: called before the model
        and the datasets, never needs either. The task keeps what it returns (:attr:`preprocess`; a
        subclass's override is wrapped to do so). Tasks without preprocessing keep this."""
        self._preprocess = Preprocess()
        return self._preprocess

    _preprocess: Preprocess | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("build_preprocess")
        if own is not None and not getattr(own, "_keeps_preprocess", False):
            cls.build_preprocess = _keeping_preprocess(own)

    @property
    def preprocess(self) -> Preprocess:
        """What :meth:`build_preprocess` returned; a clear error before it ran (the one call-order guard)."""
        if self._preprocess is None:
            raise ConfigError(
                f"task {self.name!r}: its preprocessing is not built; call task.build_preprocess() "
                "before building its model or datasets (mmllm train, load_trained, LAVIS and "
                "create_model_and_transforms do)"
            )
        return self._preprocess

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


def _keeping_preprocess(build):
    """``build`` (a task's own ``build_preprocess``) returning a checked Preprocess that the task keeps."""

    @functools.wraps(build)
    def build_preprocess(self, *args, **kwargs):
        made = build(self, *args, **kwargs)
        if not isinstance(made, Preprocess):
            raise TypeError(
                f"{type(self).__name__}.build_preprocess() returned {type(made).__name__}: it must return "
                "mmllm.engine.preprocess.Preprocess(train=..., eval=..., tokenizer=...)"
            )
        self._preprocess = made
        return made

    build_preprocess._keeps_preprocess = True
    return build_preprocess
