"""What a project provides to the engine: a model, datasets, a loss and an evaluation."""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import Dataset


class Task(ABC):
    """One training objective on one kind of data (VQA fine-tuning, ITM+MLM pretraining, ...)."""

    name: str = "task"

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

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

    def lr_multipliers(self) -> dict[str, float]:
        """Parameter-name prefix -> LR multiplier (from ``run.lr_multipliers`` by default)."""
        from ..config import to_dict

        return dict(to_dict(self.cfg.run.get("lr_multipliers", {})) or {})

    @property
    def main_metric(self) -> str:
        return "loss"
