"""Helpers for distributed evaluation: exact sharding (no padded duplicates) and gathering."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ..precision import cast_parameters
from . import distributed


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the trainable weights (DeepSpeed bf16 casts them; frozen blocks keep their own)."""
    for p in model.parameters():
        if p.requires_grad:
            return p.dtype
    return next(model.parameters()).dtype


def shard(dataset: Dataset) -> Dataset:
    """This rank's share of an evaluation set: indices rank, rank+world, ... (every item exactly once)."""
    if not torch.distributed.is_initialized():
        return dataset
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return Subset(dataset, list(range(rank, len(dataset), world)))


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, collate: Callable, batch_size: int,
            step: Callable[[nn.Module, dict[str, Any]], Iterable[Any]], desc: str = "eval", *, task) -> list[Any]:
    """Run ``step(model, batch)`` over this rank's shard and gather every rank's outputs.

    Batches are moved by ``task.move_batch`` (only the task's compute-dtype inputs are cast)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    dtype = model_dtype(model)
    loader = DataLoader(shard(dataset), batch_size=batch_size, collate_fn=collate)
    outputs: list[Any] = []
    main = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    for batch in tqdm(loader, desc=desc, disable=not main, mininterval=2.0):
        outputs.extend(step(model, task.move_batch(batch, device, dtype)))
    model.train(was_training)
    return [o for part in distributed.all_gather_objects(outputs) for o in part]


def load_trained(checkpoint: str | Path, out_dir: str | Path | None = None, edit: Callable | None = None):
    """(task, model, datasets) of a finished run, rebuilt from the config stored in its model file.

    The model runs in the run's training precision: DeepSpeed bf16 casts every weight, so an
    evaluation in fp32 would not reproduce the run's own numbers.
    """
    from omegaconf import OmegaConf

    from ..checkpointing import load_model_file, read_model_file
    from .registry import get_task
    from .trainer import compute_precision

    blob = read_model_file(checkpoint)
    cfg = OmegaConf.create(blob["config"])
    cfg.run.output_dir = str(out_dir or Path(checkpoint).parent)
    cfg.run.resume = "auto"
    if edit is not None:
        edit(cfg)
    task = get_task(cfg.run.get("task")).build(cfg)
    task.build_preprocess()
    model = task.build_model()
    load_model_file(model, checkpoint)
    if compute_precision(task) == "bf16":
        cast_parameters(model, torch.bfloat16)  # as DeepSpeed's bf16 casts a training model
    Path(cfg.run.output_dir).mkdir(parents=True, exist_ok=True)
    return task, model, task.build_datasets()
