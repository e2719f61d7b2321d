"""A toy task registered the way CONTRIBUTING.md tells a newcomer to: one Task class, one entry.

Tokens are random vectors; the class is which of 3 directions the mean token points to most.
Importing this module registers ``toy_tokens`` (``mmllm train --import toy_task``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from mmllm import build_visual_llm_layer
from mmllm.engine.evaluation import predict
from mmllm.engine.registry import TaskEntry, register_task
from mmllm.engine.task import Task
from mmllm.schema import DataSection, ModelSection


class ToyModelOptions(ModelSection):
    width: int = Field(16, gt=0)
    llm_block: dict | None = None


class ToyDataOptions(DataSection):
    num_train: int = Field(64, gt=0)
    num_test: int = Field(32, gt=0)
    tokens: int = Field(5, gt=0)


class ToyModel(nn.Module):
    def __init__(self, options: ToyModelOptions):
        super().__init__()
        self.embed = nn.Linear(8, options.width)
        self.llm_block = build_visual_llm_layer(options.llm_block, options.width)
        self.head = nn.Linear(options.width, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.llm_block(self.embed(tokens)).mean(1))


class ToyTask(Task):
    ModelOptions = ToyModelOptions
    DataOptions = ToyDataOptions
    compute_dtype_inputs = ("tokens",)

    def build_model(self) -> nn.Module:
        return ToyModel(self.model_cfg)

    def _split(self, n: int, seed: int) -> Dataset:
        g = torch.Generator().manual_seed(seed)
        tokens = torch.randn(n, self.data_cfg.tokens, 8, generator=g)
        return TensorDataset(tokens, tokens.mean(1)[:, :3].argmax(-1))

    def build_datasets(self) -> dict[str, Dataset]:
        return {"train": self._split(self.data_cfg.num_train, 0), "test": self._split(self.data_cfg.num_test, 1)}

    def collate(self, samples):
        return {"tokens": torch.stack([s[0] for s in samples]), "labels": torch.stack([s[1] for s in samples])}

    def training_loss(self, model, batch):
        return nn.functional.cross_entropy(model(batch["tokens"]).float(), batch["labels"]), {}

    def evaluate(self, model, dataset, split: str, out_dir: Path) -> dict[str, float]:
        def step(m, batch):
            return (m(batch["tokens"]).argmax(-1) == batch["labels"]).tolist()

        hits = predict(model, dataset, self.collate, self.run.batch_size_eval, step, desc=f"eval {split}", task=self)
        return {"accuracy": round(100 * sum(hits) / len(hits), 2)}


ENTRY = register_task(
    TaskEntry(
        name="toy_tokens",
        task=ToyTask,
        dataset="toy_tokens",
        model_arch="toy_token_cls",
        metric="accuracy",
        description="toy task of the registry tests",
    )
)
