"""The training loop every project runs: DeepSpeed engine, resumable mid-epoch, JSONL metrics.

Runs unchanged under ``deepspeed script.py``, ``torchrun``, or plain ``python script.py``;
on CPU it uses gloo and DeepSpeed's CPU accelerator.
"""
from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from ..checkpointing import block_fingerprints, load_model_state_dict, model_state_dict
from ..config import to_dict
from ..errors import CheckpointError, ConfigError
from ..params import param_groups
from . import distributed
from .checkpoint import CheckpointStore, rng_state, set_rng_state, write_json
from .schedule import SCHEDULES
from .task import Task

FINAL_MODEL = "model_final.pt"


class ResumableSampler(DistributedSampler):
    """DistributedSampler whose epoch can start after the batches a resumed run already saw."""

    def __init__(self, dataset: Dataset, seed: int, shuffle: bool = True):
        super().__init__(dataset, shuffle=shuffle, seed=seed, drop_last=True)
        self.skip = 0

    def start(self, epoch: int, skip_samples: int) -> None:
        self.set_epoch(epoch)
        self.skip = skip_samples

    def __iter__(self):
        indices = list(super().__iter__())
        return iter(indices[self.skip:])

    def __len__(self) -> int:
        return super().__len__() - self.skip


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cast_floats(batch: Any, dtype: torch.dtype, device: torch.device) -> Any:
    """Move a batch to the device; floating tensors to the model's dtype (DeepSpeed bf16 casts the model only)."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device)
        return batch.to(dtype) if batch.is_floating_point() else batch
    if isinstance(batch, dict):
        return {k: cast_floats(v, dtype, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return type(batch)(cast_floats(v, dtype, device) for v in batch)
    return batch


def deepspeed_config(run: DictConfig, world_size: int) -> dict[str, Any]:
    path = Path(run.get("deepspeed_config", "configs/deepspeed/zero0.json"))
    if not path.is_file():
        raise ConfigError(f"run.deepspeed_config: {path} does not exist")
    cfg = json.loads(path.read_text())
    micro = int(run.batch_size_train)
    accum = int(run.get("accum_grad_iters", 1))
    cfg["train_micro_batch_size_per_gpu"] = micro
    cfg["gradient_accumulation_steps"] = accum
    cfg["train_batch_size"] = micro * accum * world_size
    precision = run.get("precision", "bf16")
    if precision not in ("bf16", "fp32"):
        raise ConfigError(f"run.precision must be bf16 or fp32, got {precision!r}")
    cfg["bf16"] = {"enabled": precision == "bf16"}
    cfg.setdefault("gradient_clipping", float(run.get("grad_clip", 1.0)))
    cfg["steps_per_print"] = 10**9  # we log ourselves
    if "zero_optimization" in cfg and cfg["zero_optimization"].get("offload_optimizer"):
        cfg["zero_force_ds_cpu_optimizer"] = False
    return cfg


def save_final_model(engine, path: Path, cfg: DictConfig) -> None:
    """A plain state dict (no frozen LLM weights) for evaluation and the next training stage."""
    module = engine.module
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            state = {k: v.detach().float().cpu().clone() for k, v in model_state_dict(module).items()}
    else:
        state = {k: v.detach().float().cpu() for k, v in model_state_dict(module).items()}
    if engine.global_rank == 0:
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"state_dict": state, "fingerprints": block_fingerprints(module), "config": to_dict(cfg)}, tmp)
        tmp.replace(path)


def load_model_file(model: torch.nn.Module, path: str | Path, prefixes: list[str] | None = None) -> None:
    """Initialise ``model`` from a final-model file; with ``prefixes`` only those submodules (stage transfer)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist")
    blob = torch.load(path, map_location="cpu", weights_only=True)
    state = blob["state_dict"]
    if prefixes:
        state = {k: v for k, v in state.items() if k.startswith(tuple(prefixes))}
        if not state:
            raise CheckpointError(f"{path}: no tensor under {prefixes}")
        current = model.state_dict()
        wanted = {k for k in current if k.startswith(tuple(prefixes))}
        from ..checkpointing import frozen_keys

        missing = wanted - set(state) - frozen_keys(model)
        if missing:
            raise CheckpointError(f"{path}: lacks {sorted(missing)[:10]}")
        result = model.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise CheckpointError(f"{path}: unexpected tensors {result.unexpected_keys[:10]}")
        return
    load_model_state_dict(model, state, blob.get("fingerprints"))


class Trainer:
    def __init__(self, cfg: DictConfig, task: Task):
        self.cfg = cfg
        self.run = cfg.run
        self.task = task
        self.rank, self.world = distributed.init_distributed()
        self.is_main = self.rank == 0
        self.out_dir = Path(self.run.output_dir).resolve()
        self.metrics_path = self.out_dir / "metrics.jsonl"

    # ------------------------------------------------------------------ set-up
    def _log(self, record: dict[str, Any]) -> None:
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with open(self.metrics_path, "a") as handle:
                handle.write(json.dumps({"time": round(time.time(), 2), **record}) + "\n")

    def _build(self):
        import deepspeed

        seed = int(self.run.get("seed", 42))
        seed_everything(seed)
        model = self.task.build_model()
        if self.run.get("init_from"):
            load_model_file(model, self.run.init_from, list(self.run.get("init_prefixes", []) or []))
        self.datasets = self.task.build_datasets()
        if "train" not in self.datasets:
            raise ConfigError("the task built no 'train' split")
        self.sampler = ResumableSampler(self.datasets["train"], seed=seed)
        micro = int(self.run.batch_size_train)
        self.loader = DataLoader(
            self.datasets["train"], batch_size=micro, sampler=self.sampler, collate_fn=self.task.collate,
            num_workers=int(self.run.get("num_workers", 0)), drop_last=True,
        )
        self.accum = int(self.run.get("accum_grad_iters", 1))
        self.steps_per_epoch = len(self.sampler) // micro // self.accum
        if self.steps_per_epoch == 0:
            raise ConfigError(f"train split too small for batch {micro} x accumulation {self.accum} x {self.world} ranks")
        max_epoch = int(self.run.get("max_epoch", 1))
        self.total_steps = self.steps_per_epoch * max_epoch
        if self.run.get("max_steps"):
            self.total_steps = min(self.total_steps, int(self.run.max_steps))
        lr = float(self.run.init_lr)
        groups = param_groups(model, lr, float(self.run.get("weight_decay", 0.0)), self.task.lr_multipliers())
        for g in groups:
            g.pop("names")
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(self.run.get("betas", (0.9, 0.98))))
        schedule_name = self.run.get("lr_sched", "cosine")
        if schedule_name not in SCHEDULES:
            raise ConfigError(f"run.lr_sched must be one of {sorted(SCHEDULES)}")
        warmup = self.run.get("warmup_steps", None)
        warmup = int(warmup) if warmup is not None else int(float(self.run.get("warmup_ratio", 0.1)) * self.total_steps)
        min_ratio = float(self.run.get("min_lr_ratio", 0.0))
        if self.run.get("min_lr") is not None:  # LAVIS's absolute floor
            min_ratio = float(self.run.min_lr) / lr
        factor = SCHEDULES[schedule_name](self.total_steps, warmup, min_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        ds_config = deepspeed_config(self.run, self.world)
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        self.dtype = torch.bfloat16 if ds_config["bf16"]["enabled"] else torch.float32
        self.device = self.engine.device
        self.store = CheckpointStore(self.out_dir / "checkpoints", int(self.run.get("keep_checkpoints", 2)))
        self.checkpoint_frozen = bool(self.run.get("checkpoint_frozen", False))  # frozen LLM weights reload from source

    def _state(self, epoch: int, step_in_epoch: int) -> dict[str, Any]:
        return {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": self.engine.global_steps,
                "rng": rng_state(), "fingerprints": block_fingerprints(self.engine.module)}

    # ------------------------------------------------------------------ loop
    def train(self) -> dict[str, float]:
        self._build()
        epoch, step_in_epoch = 0, 0
        pending_rng = None
        if self.run.get("resume", True):
            state = self.store.load(self.engine)
            if state is not None:
                current = block_fingerprints(self.engine.module)
                if state.get("fingerprints") and state["fingerprints"] != current:
                    raise CheckpointError("checkpoint was trained with different frozen LLM weights")
                epoch, step_in_epoch = state["epoch"], state["step_in_epoch"]
                pending_rng = state["rng"]
                self._log({"event": "resumed", "epoch": epoch, "step": self.engine.global_steps})
        if self.is_main:
            write_json(self.out_dir / "config.json", to_dict(self.cfg))
        every = int(self.run.get("checkpoint_every", 0)) or self.steps_per_epoch
        log_every = int(self.run.get("log_every", 10))
        micro = int(self.run.batch_size_train)
        max_epoch = int(self.run.get("max_epoch", 1))
        done = self.engine.global_steps >= self.total_steps
        while epoch < max_epoch and not done:
            self.sampler.start(epoch, step_in_epoch * self.accum * micro)
            self.engine.train()
            bar = tqdm(total=self.steps_per_epoch, initial=step_in_epoch, desc=f"epoch {epoch}",
                       disable=not self.is_main, mininterval=2.0, file=sys.stderr, dynamic_ncols=True)
            running, count, t0 = 0.0, 0, time.perf_counter()
            batches = iter(self.loader)  # draws the loader's base seed from the global RNG ...
            if pending_rng is not None:  # ... so a resumed run restores the RNG only after that draw
                set_rng_state(pending_rng)
                pending_rng = None
            for i, batch in enumerate(batches):
                batch = cast_floats(batch, self.dtype, self.device)
                loss, logs = self.task.training_loss(self.engine, batch)
                self.engine.backward(loss)
                self.engine.step()
                running, count = running + loss.item(), count + 1
                if (i + 1) % self.accum:
                    continue
                step_in_epoch += 1
                step = self.engine.global_steps
                bar.update(1)
                if step % log_every == 0 or step_in_epoch == self.steps_per_epoch:
                    lr = self.engine.get_lr()[0]
                    self._log({"split": "train", "epoch": epoch, "step": step, "loss": running / count, "lr": lr,
                               "sec_per_step": (time.perf_counter() - t0) * self.accum / count, **logs})
                    bar.set_postfix(loss=f"{running / count:.4f}")
                    running, count, t0 = 0.0, 0, time.perf_counter()
                done = step >= self.total_steps
                if step % every == 0 and step_in_epoch < self.steps_per_epoch and not done:
                    self.store.save(self.engine, step, self._state(epoch, step_in_epoch), self.checkpoint_frozen)
                if done or step_in_epoch >= self.steps_per_epoch:
                    break
            bar.close()
            if step_in_epoch >= self.steps_per_epoch:  # a whole epoch is done
                if "val" in self.datasets and self.run.get("evaluate_val", True):
                    metrics = self.task.evaluate(self.engine.module, self.datasets["val"], "val", self.out_dir)
                    self._log({"split": "val", "epoch": epoch, "step": self.engine.global_steps, **metrics})
                epoch, step_in_epoch = epoch + 1, 0
            self.store.save(self.engine, self.engine.global_steps, self._state(epoch, step_in_epoch), self.checkpoint_frozen)
        save_final_model(self.engine, self.out_dir / FINAL_MODEL, self.cfg)
        distributed.barrier()
        results: dict[str, float] = {}
        if "test" in self.datasets:
            metrics = self.task.evaluate(self.engine.module, self.datasets["test"], "test", self.out_dir)
            self._log({"split": "test", "step": self.engine.global_steps, **metrics})
            results = {f"test_{k}": v for k, v in metrics.items()}
        if self.is_main:
            summary = {"task": self.task.name, "output_dir": str(self.out_dir), "steps": self.engine.global_steps,
                       "world_size": self.world,
                       "llm_block": to_dict(OmegaConf.select(self.cfg, "model.llm_block", default=None)), **results}
            write_json(self.out_dir / "summary.json", summary)
        return results
