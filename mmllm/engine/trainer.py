"""The training loop every task runs: DeepSpeed engine, resumable mid-epoch, JSONL metrics.

Runs unchanged under ``deepspeed script.py``, ``torchrun``, or plain ``python script.py``;
on CPU it uses gloo and DeepSpeed's CPU accelerator.
"""
from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

from ..checkpointing import block_fingerprints, load_model_file, model_state_dict, save_model_file
from ..config import to_dict
from ..errors import CheckpointError, ConfigError, TrainingError
from ..jsonio import write_json
from ..params import param_groups
from . import distributed
from .checkpoint import CheckpointStore, rng_state, set_rng_state
from .paths import repo_path
from .rundir import CONFIG_FILE, prepare_output_dir
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


def compute_precision(task: Task) -> str:
    """``run.precision`` with ``auto`` resolved (bf16 on a GPU that has it; on CPU, measured)."""
    from ..precision import resolve_precision

    return resolve_precision(task.run.precision)


def deepspeed_config(task: Task, world_size: int, precision: str) -> dict[str, Any]:
    run = task.run
    path = repo_path(run.deepspeed_config)
    if not path.is_file():
        raise ConfigError(f"run.deepspeed_config: {run.deepspeed_config} does not exist")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"run.deepspeed_config: {path} is not valid JSON: {exc}") from exc
    cfg["train_micro_batch_size_per_gpu"] = run.batch_size_train
    cfg["gradient_accumulation_steps"] = run.accum_grad_iters
    cfg["train_batch_size"] = run.batch_size_train * run.accum_grad_iters * world_size
    cfg["bf16"] = {"enabled": precision == "bf16"}
    cfg.setdefault("gradient_clipping", run.grad_clip)
    cfg["steps_per_print"] = 10**9  # we log ourselves
    if "zero_optimization" in cfg and cfg["zero_optimization"].get("offload_optimizer"):
        cfg["zero_force_ds_cpu_optimizer"] = False
    return cfg


def build_model(task: Task) -> nn.Module:
    """The task's model with ``run.init_from`` applied: the one place a run's model is made."""
    model = task.build_model()
    if task.run.init_from:
        load_model_file(model, task.run.init_from, task.run.init_prefixes or None)
    return model


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
        save_model_file(path, state, block_fingerprints(module), to_dict(cfg))


def _check_finite(metrics: dict[str, Any], where: str) -> None:
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise TrainingError(f"{where}: metrics {bad} are not finite; refusing to report them")


class Trainer:
    """Trains ``task``; ``model``/``datasets`` already built elsewhere (LAVIS's runner) are used as they are."""

    def __init__(self, cfg: DictConfig, task: Task, model: nn.Module | None = None,
                 datasets: dict[str, Dataset] | None = None):
        self.cfg = cfg
        self.task = task
        self.run = task.run
        self.model = model
        self.datasets = datasets
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

    def _prepare_output_dir(self) -> None:
        """Rank 0 decides (and may delete an overwritten run); every rank learns the decision."""
        decision: str | BaseException = "new"
        if self.is_main:
            try:
                decision = prepare_output_dir(self.out_dir, self.task, self._resolve_stored)
            except ConfigError as exc:
                decision = exc
        decision = distributed.all_gather_objects(decision)[0]
        if isinstance(decision, BaseException):
            raise decision
        self.mode = decision
        if self.is_main:
            write_json(self.out_dir / CONFIG_FILE, to_dict(self.cfg))

    def _resolve_stored(self, raw: dict[str, Any]) -> dict[str, Any]:
        from omegaconf import OmegaConf

        assert self.task.entry is not None
        return self.task.entry.build(OmegaConf.create(raw)).resolved_config()

    def _build(self):
        import deepspeed

        run = self.run
        seed_everything(run.seed)
        self.task.build_preprocess()
        model = self.model if self.model is not None else build_model(self.task)
        if self.datasets is None:
            self.datasets = self.task.build_datasets()
        if "train" not in self.datasets:
            raise ConfigError("the task built no 'train' split")
        self.sampler = ResumableSampler(self.datasets["train"], seed=run.seed)
        self.loader = DataLoader(
            self.datasets["train"], batch_size=run.batch_size_train, sampler=self.sampler,
            collate_fn=self.task.collate, num_workers=run.num_workers, drop_last=True,
        )
        self.accum = run.accum_grad_iters
        self.steps_per_epoch = len(self.sampler) // run.batch_size_train // self.accum
        if self.steps_per_epoch == 0:
            raise ConfigError(f"train split ({len(self.datasets['train'])} samples) too small for batch "
                              f"{run.batch_size_train} x accumulation {self.accum} x {self.world} ranks")
        self.total_steps = self.steps_per_epoch * run.max_epoch
        if run.max_steps:
            self.total_steps = min(self.total_steps, run.max_steps)
        groups = param_groups(model, run.init_lr, run.weight_decay, self.task.lr_multipliers())
        if not groups:
            raise ConfigError("the model has no trainable parameter")
        for g in groups:
            g.pop("names")
        optimizer = torch.optim.AdamW(groups, lr=run.init_lr, betas=run.betas)
        warmup = run.warmup_steps if run.warmup_steps is not None else int(run.warmup_ratio * self.total_steps)
        min_ratio = run.min_lr / run.init_lr if run.min_lr is not None else run.min_lr_ratio
        factor = SCHEDULES[run.lr_sched](self.total_steps, warmup, min_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        self.precision = compute_precision(self.task)
        ds_config = deepspeed_config(self.task, self.world, self.precision)
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        self.dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.device = self.engine.device
        self.store = CheckpointStore(self.out_dir / "checkpoints", run.keep_checkpoints)

    def _state(self, epoch: int, step_in_epoch: int) -> dict[str, Any]:
        return {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": self.engine.global_steps,
                "rng": rng_state(), "fingerprints": block_fingerprints(self.engine.module)}

    def _save(self, epoch: int, step_in_epoch: int) -> None:
        self.store.save(self.engine, self.engine.global_steps, self._state(epoch, step_in_epoch), self.run.checkpoint_frozen)

    def _evaluate(self, split: str) -> dict[str, float]:
        metrics = self.task.evaluate(self.engine.module, self.datasets[split], split, self.out_dir)
        _check_finite(metrics, f"{split} evaluation of {self.out_dir}")
        return metrics

    # ------------------------------------------------------------------ loop
    def train(self) -> dict[str, float]:
        self._prepare_output_dir()
        self._build()
        epoch, step_in_epoch = 0, 0
        pending_rng = None
        if self.mode == "resume":
            state = self.store.load(self.engine)
            if state is not None:
                current = block_fingerprints(self.engine.module)
                if state.get("fingerprints") and state["fingerprints"] != current:
                    raise CheckpointError("checkpoint was trained with different frozen LLM weights")
                epoch, step_in_epoch = state["epoch"], state["step_in_epoch"]
                pending_rng = state["rng"]
                self._log({"event": "resumed", "epoch": epoch, "step": self.engine.global_steps})
        run = self.run
        every = run.checkpoint_every or self.steps_per_epoch
        started = time.perf_counter()
        done = self.engine.global_steps >= self.total_steps
        bar = tqdm(total=self.total_steps, initial=self.engine.global_steps, desc="train", disable=not self.is_main,
                   mininterval=2.0, file=sys.stderr, dynamic_ncols=True)
        while epoch < run.max_epoch and not done:
            self.sampler.start(epoch, step_in_epoch * self.accum * run.batch_size_train)
            self.engine.train()
            bar.set_description(f"epoch {epoch}")
            running, count, t0 = 0.0, 0, time.perf_counter()
            batches = iter(self.loader)  # draws the loader's base seed from the global RNG ...
            if pending_rng is not None:  # ... so a resumed run restores the RNG only after that draw
                set_rng_state(pending_rng)
                pending_rng = None
            for i, batch in enumerate(batches):
                batch = self.task.move_batch(batch, self.device, self.dtype)
                loss, logs = self.task.training_loss(self.engine, batch)
                if not torch.isfinite(loss.detach()).item():
                    raise TrainingError(f"training loss is {loss.item()} at step {self.engine.global_steps + 1}: "
                                      "lower run.init_lr or check the inputs (refusing to train on)")
                self.engine.backward(loss)
                self.engine.step()
                running, count = running + loss.item(), count + 1
                if (i + 1) % self.accum:
                    continue
                step_in_epoch += 1
                step = self.engine.global_steps
                bar.update(1)
                if step % run.log_every == 0 or step_in_epoch == self.steps_per_epoch or step >= self.total_steps:
                    lr = self.engine.get_lr()[0]
                    self._log({"split": "train", "epoch": epoch, "step": step, "loss": running / count, "lr": lr,
                               "sec_per_step": (time.perf_counter() - t0) * self.accum / count, **logs})
                    bar.set_postfix(loss=f"{running / count:.4f}")
                    running, count, t0 = 0.0, 0, time.perf_counter()
                done = step >= self.total_steps
                if step % every == 0 and step_in_epoch < self.steps_per_epoch and not done:
                    self._save(epoch, step_in_epoch)
                if done or step_in_epoch >= self.steps_per_epoch:
                    break
            if step_in_epoch >= self.steps_per_epoch:  # a whole epoch is done
                if "val" in self.datasets and run.evaluate_val:
                    metrics = self._evaluate("val")
                    self._log({"split": "val", "epoch": epoch, "step": self.engine.global_steps, **metrics})
                epoch, step_in_epoch = epoch + 1, 0
            self._save(epoch, step_in_epoch)
        bar.close()
        train_seconds = time.perf_counter() - started
        if step_in_epoch and "val" in self.datasets and run.evaluate_val:  # a run shorter than its epoch
            metrics = self._evaluate("val")
            self._log({"split": "val", "epoch": epoch, "step": self.engine.global_steps, **metrics})
        trained = OmegaConf.create(to_dict(self.cfg))
        trained.run.precision = self.precision  # evaluation must run in the precision the run trained in
        save_final_model(self.engine, self.out_dir / FINAL_MODEL, trained)
        distributed.barrier()
        results: dict[str, float] = {}
        if "test" in self.datasets:
            metrics = self._evaluate("test")
            self._log({"split": "test", "step": self.engine.global_steps, **metrics})
            results = {f"test_{k}": v for k, v in metrics.items()}
        if self.is_main:
            summary = {"task": self.task.name, "output_dir": str(self.out_dir), "steps": self.engine.global_steps,
                       "world_size": self.world, "seed": run.seed, "precision": self.precision,
                       "train_seconds": round(train_seconds, 1), "device": describe_device(self.device),
                       "git_commit": git_commit(), "config_sha256": config_hash(self.task),
                       "llm_block": _block_options(self.cfg), **results}
            write_json(self.out_dir / "summary.json", summary)
        return results


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from ..precision import cpu_name

    return f"cpu ({cpu_name()})"


def git_commit() -> str | None:
    """The checkout's commit (with ``+dirty`` for uncommitted changes): which code made a number."""
    import subprocess

    from .paths import REPO_ROOT

    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if sha.returncode != 0:
        return None
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def config_hash(task: Task) -> str:
    """SHA-256 of the resolved config: two summaries with the same hash ran the same settings."""
    import hashlib

    return hashlib.sha256(json.dumps(task.resolved_config(), sort_keys=True).encode()).hexdigest()[:16]


def _block_options(cfg: DictConfig) -> Any:
    return to_dict(OmegaConf.select(cfg, "model.llm_block", default=None))
