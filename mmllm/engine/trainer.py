"""The training loop every task runs: DeepSpeed engine, resumable mid-epoch, curves to
``metrics.jsonl`` and TensorBoard (:mod:`mmllm.engine.tracking`), ``summary.json`` at the end.

Runs unchanged under ``deepspeed script.py``, ``torchrun``, or plain ``python script.py``;
on CPU it uses gloo and DeepSpeed's CPU accelerator. LAVIS's run keys (``train_splits``,
``valid_splits``, ``test_splits``, ``evaluate``, ``resume_ckpt_path``, ``amp``, ``warmup_lr``,
``init_lr``, ``min_lr``) are honoured here, so ``runner_deepspeed`` and ``mmllm train`` read them alike.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import ConcatDataset, Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader
from tqdm.auto import tqdm

from ..config import to_dict
from ..errors import CheckpointError, ConfigError, MMLLMError, TrainingError
from ..jsonio import write_json
from ..model_file import block_fingerprints, load_model_file, model_state_dict, read_model_file, save_model_file
from ..params import param_groups
from ..precision import cast_parameters
from . import distributed
from .checkpoint import CheckpointStore, rng_state, set_rng_state
from .loader_settings import loader_settings
from .paths import repo_path
from .rundir import CONFIG_FILE, REEVALUATION_FILE, RESOLVED_FILE, prepare_output_dir, stored_differences
from .schedule import build_scheduler
from .splits import EvalSplit, missing_members
from .task import Task
from .tracking import RunTracker

log = logging.getLogger(__name__)
FINAL_MODEL = "model_final.pt"


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says where the run can resume from (commands exit 130)."""


# torchdata 0.11 calls a torch API that torch 2.14 deprecates, on every epoch: not the user's concern
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch (all devices) seeded by :func:`transformers.set_seed`."""
    from transformers import set_seed

    set_seed(seed)


def compute_precision(task: Task) -> str:
    """``run.precision`` with ``auto`` resolved (bf16 on a GPU that has it; on CPU, measured).

    LAVIS's ``run.amp`` decides when set: true is mixed precision (bf16 here, DeepSpeed's; LAVIS's
    own runner uses fp16 autocast), false is fp32; a ``run.precision`` that says otherwise is refused."""
    from ..precision import resolve_precision

    run = task.run
    if run.amp is None:
        return resolve_precision(run.precision)
    wanted = "bf16" if run.amp else "fp32"
    if run.precision != "auto" and resolve_precision(run.precision) != wanted:
        raise ConfigError(
            f"run.amp={str(run.amp).lower()} asks for {wanted} but run.precision={run.precision!r}; "
            "set one of them (or make them agree)"
        )
    return wanted


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; ZeRO-3 partitioned parameters counted at full size."""
    trainable = total = 0
    for p in model.parameters():
        n = int(getattr(p, "ds_numel", p.numel()))
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


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


def worker_error(exc: MMLLMError) -> MMLLMError:
    """``exc`` as raised in the data-loader worker: torch re-raises a worker's exception in the main
    process with the worker's whole traceback as its message; the user needs the original one line."""
    text = str(exc)
    if not text.startswith(f"Caught {type(exc).__name__} in DataLoader worker process"):
        return exc
    qualified = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(qualified)]
    if not starts:
        return exc
    message = "\n".join([lines[starts[-1]][len(qualified) :], *lines[starts[-1] + 1 :]]).strip()
    try:
        return type(exc)(message)
    except Exception:  # noqa: BLE001 - an error class that takes other arguments keeps its long message
        return exc


def _in_loader_code(frame) -> bool:
    """Whether ``frame`` is inside a finaliser or a data-loader iterator starting or stopping its workers,
    where a KeyboardInterrupt is dropped by Python or leaves a half-built iterator."""
    while frame is not None:
        code = frame.f_code
        if code.co_name in ("__del__", "_shutdown_workers") or (
            code.co_name == "__init__"
            and any(part in code.co_filename.replace("\\", "/") for part in ("/torch/utils/data/", "/torchdata/"))
        ):
            return True
        frame = frame.f_back
    return False


def _unwrap_worker_errors(batches):
    """The loader's batches; our own errors raised in a worker process come out as one clear line."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except MMLLMError as exc:
            clean = worker_error(exc)
            if clean is exc:
                raise
            raise clean from None
        yield batch


class Trainer:
    """Trains ``task``; ``model``/``datasets`` already built elsewhere (LAVIS's runner) are used as they are."""

    def __init__(
        self,
        cfg: DictConfig,
        task: Task,
        model: nn.Module | None = None,
        datasets: dict[str, Dataset] | None = None,
        eval_limit_optional: bool = False,
    ):
        self.cfg = cfg
        self.task = task
        self.run = task.run
        self.model = model
        self.datasets = datasets
        self.rank, self.world = distributed.init_distributed()
        self.is_main = self.rank == 0
        self.out_dir = Path(self.run.output_dir).resolve()
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.tracker: RunTracker | None = None
        # run.max_eval_samples as applied; `mmllm train --quick` makes it optional for tasks whose
        # datasets cannot be cut (they are evaluated in full, with a warning, and summary.json says null)
        self.eval_cut = self.run.max_eval_samples
        self.eval_limit_optional = eval_limit_optional

    # ------------------------------------------------------------------ set-up
    def _log(self, record: dict[str, Any]) -> None:
        if self.tracker is None:  # JSONL only until the run knows whether it resumes (TensorBoard purge step)
            RunTracker(self.out_dir, enabled=self.is_main, tensorboard=False).log(record)
        else:
            self.tracker.log(record)
        if record.get("split") in self.eval_splits_logged:
            shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items() if k != "split"}
            log.info("%s: %s", record["split"], shown)

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

    def _write_run_config(self) -> None:
        """The run's ``config.json``, written once set-up succeeded: a run whose data or model set-up
        failed leaves no config that would make the corrected re-run "a different run"."""
        if self.is_main:
            write_json(self.out_dir / CONFIG_FILE, to_dict(self.cfg))
            write_json(self.out_dir / RESOLVED_FILE, self.task.resolved_config())

    def _finished_results(self) -> dict[str, float] | None:
        """The stored results of this very run (same resolved config) when it already finished, else None."""
        results = None
        if self.is_main and self.mode == "resume":
            summary_path = self.out_dir / "summary.json"
            try:
                summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
            except (OSError, ValueError):
                summary = None  # unreadable: not trusted as the record of a finished run
            if isinstance(summary, dict) and (self.out_dir / FINAL_MODEL).is_file() and self._same_run(summary):
                splits = self.run.test_splits if self.run.test_splits is not None else ["test"]
                results = {k: v for k, v in summary.items() if any(k.startswith(f"{split}_") for split in splits)}
                log.info(
                    "%s already finished (%s steps): %s kept as it is; pass --overwrite to train it anew",
                    self.out_dir,
                    summary.get("steps"),
                    summary_path,
                )
        return distributed.all_gather_objects(results)[0]

    def _same_run(self, summary: dict[str, Any]) -> bool:
        """Whether the folder's finished run ran exactly this config, every key (run keys included): against its
        ``resolved_config.json`` (a key added since is no difference, a changed default is); folders of older
        versions have only the summary's hash, which must match (there a changed default cannot be told from
        an added key, so the run is evaluated again rather than reported as finished)."""
        if (self.out_dir / RESOLVED_FILE).is_file():
            return not stored_differences(
                self.out_dir, self.task.resolved_config(), self._resolve_stored, harmless_too=True
            )
        return summary.get("config_sha256") == config_hash(self.task)

    def _resolve_stored(self, raw: dict[str, Any]) -> dict[str, Any]:
        from omegaconf import OmegaConf

        assert self.task.entry is not None
        return self.task.entry.build(OmegaConf.create(raw)).resolved_config()

    eval_splits_logged: tuple[str, ...] = ()

    def _splits(self, key: str, default: list[str]) -> list[str]:
        """``run.<key>`` (LAVIS's train/valid/test_splits) checked against the splits the task built."""
        names = getattr(self.run, key)
        assert self.datasets is not None  # built before the splits are resolved
        if names is None:
            return [s for s in default if s in self.datasets]
        unknown = [s for s in names if s not in self.datasets]
        if unknown:
            raise ConfigError(f"run.{key}: split(s) {unknown} were not built; the task built {sorted(self.datasets)}")
        return list(names)

    def _resolve_splits(self) -> None:
        run = self.run
        assert self.datasets is not None  # built before the splits are resolved
        self.train_splits = self._splits("train_splits", ["train"])
        if not self.train_splits and not run.evaluate:
            raise ConfigError(
                f"the task built no 'train' split (splits: {sorted(self.datasets)}); set run.train_splits"
            )
        self.valid_splits = self._splits("valid_splits", ["val"]) if run.evaluate_val else []
        self.test_splits = self._splits("test_splits", ["test"])
        self.eval_splits_logged = tuple(dict.fromkeys(self.valid_splits + self.test_splits))
        n = self.eval_cut
        # a split that is not an EvalSplit (ids, head(n), len) cannot be cut, unless it is sized and no longer than n
        uncut = [
            s
            for s in self.eval_splits_logged
            if n is not None
            and not isinstance(self.datasets[s], EvalSplit)
            and ("__len__" in missing_members(self.datasets[s]) or len(cast(Sized, self.datasets[s])) > n)
        ]
        if uncut and self.eval_limit_optional:
            log.warning(
                "task %s cannot evaluate part of split(s) %s (no head(n)): evaluating them in full",
                self.task.name,
                uncut,
            )
            self.eval_cut = None
        elif uncut:  # refused before training, not after it
            missing = sorted(missing_members(self.datasets[uncut[0]]), key=("head", "ids", "__len__").index)
            lacking = ", ".join({"head": "head(n)", "__len__": "len()"}.get(m, m) for m in missing)
            raise ConfigError(
                f"run.max_eval_samples: the {uncut[0]!r} dataset of task {self.task.name!r} "
                f"({type(self.datasets[uncut[0]]).__name__}) has no {lacking} to evaluate a part of it "
                "(an evaluation split has ids, head(n) and len()); unset the key"
            )

    def _build(self):
        import deepspeed

        run = self.run
        seed_everything(run.seed)
        self.task.build_preprocess()
        model = self.model if self.model is not None else build_model(self.task)
        if self.datasets is None:
            self.datasets = self.task.build_datasets()
        self._resolve_splits()
        parts = [self.datasets[s] for s in self.train_splits]
        train_set = parts[0] if len(parts) == 1 else ConcatDataset(parts)
        # the loader's position (batches already drawn this epoch) goes into each checkpoint: a resumed run
        # continues with the very next batch (torchdata's StatefulDataLoader fast-forwards the sampler)
        self.sampler = DistributedSampler(train_set, shuffle=True, seed=run.seed, drop_last=True)
        self.loader = StatefulDataLoader(
            train_set,
            batch_size=run.batch_size_train,
            sampler=self.sampler,
            collate_fn=self.task.collate,
            drop_last=True,
            **loader_settings(run, distributed.device(), distributed.local_world_size()),
        )
        self.accum = run.accum_grad_iters
        self.steps_per_epoch = len(self.sampler) // run.batch_size_train // self.accum
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"train split(s) {self.train_splits} ({len(train_set)} samples) too small for batch "
                f"{run.batch_size_train} x accumulation {self.accum} x {self.world} ranks"
            )
        self.total_steps = self.steps_per_epoch * run.max_epoch
        if run.max_steps:
            self.total_steps = min(self.total_steps, run.max_steps)
        groups = param_groups(model, run.init_lr, run.weight_decay, self.task.lr_multipliers(), run.layer_decay)
        if not groups:
            raise ConfigError("the model has no trainable parameter")
        for g in groups:
            g.pop("names")
        optimizer = torch.optim.AdamW(groups, lr=run.init_lr, betas=run.betas)
        scheduler = build_scheduler(
            optimizer, run.lr_sched, self.total_steps, *schedule_settings(run, self.total_steps)
        )
        self.trainable_params, self.total_params = count_parameters(model)
        self.precision = compute_precision(self.task)
        ds_config = deepspeed_config(self.task, self.world, self.precision)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
        distributed.release_at_exit(self.engine)
        self.dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        self.device = self.engine.device
        self.store = CheckpointStore(self.out_dir / "checkpoints", run.keep_checkpoints)

    def _state(self, epoch: int, step_in_epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": self.engine.global_steps,
            "rng": rng_state(),
            "fingerprints": block_fingerprints(self.engine.module),
            "loader": self.loader.state_dict() if step_in_epoch else None,
        }  # None: the next epoch starts afresh

    def _save(self, epoch: int, step_in_epoch: int) -> None:
        self.store.save(
            self.engine, self.engine.global_steps, self._state(epoch, step_in_epoch), self.run.checkpoint_frozen
        )

    def _eval_dataset(self, split: str) -> Dataset:
        """The ``split`` dataset, cut to its first ``run.max_eval_samples`` when that is set."""
        assert self.datasets is not None  # built before any evaluation
        dataset = self.datasets[split]
        n = self.eval_cut
        if n is None or len(cast(Sized, dataset)) <= n:
            return dataset
        return cast(Dataset, cast(EvalSplit, dataset).head(n))  # checked by _resolve_splits

    def _evaluate(self, split: str, model: nn.Module | None = None) -> dict[str, float]:
        model = self.engine.module if model is None else model
        metrics = self.task.evaluate(model, self._eval_dataset(split), split, self.out_dir)
        _check_finite(metrics, f"{split} evaluation of {self.out_dir}")
        return metrics

    def _validate(self, epoch: int) -> None:
        for split in self.valid_splits:
            self._log({"split": split, "epoch": epoch, "step": self.engine.global_steps, **self._evaluate(split)})

    def _resume_tag(self) -> str | None:
        """The checkpoint ``run.resume_ckpt_path`` names (None: the newest); only this run's own ones."""
        path = self.run.resume_ckpt_path
        if path is None:
            return None
        target, folder = Path(path).resolve(), self.store.folder.resolve()
        if target == folder:
            return None
        if target.parent == folder and target.is_dir():
            return target.name
        raise ConfigError(
            f"run.resume_ckpt_path {path}: runner_deepspeed resumes only a checkpoint of its own run "
            f"({folder}[/stepN]); to start from another run's weights use run.init_from (a model_final.pt)"
        )

    # ------------------------------------------------------------------ loop
    def train(self) -> dict[str, float]:
        """Train, test, write ``summary.json``; Ctrl-C raises :class:`RunInterrupted` saying where to resume."""
        if self.run.evaluate:
            return self.evaluate_only()
        previous = self._catch_ctrl_c()
        try:
            return self._train()
        except KeyboardInterrupt:
            message = self._interrupted_message()
            if self.tracker is not None:
                self.tracker.close()
            raise RunInterrupted(message) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    ctrl_c = False  # set by Ctrl-C: the loop stops at the next batch even if the interrupt itself was lost

    def _catch_ctrl_c(self):
        """Remember Ctrl-C as well as raising it: a KeyboardInterrupt that lands in a finished epoch's
        loader iterator being shut down (its ``__del__``) is swallowed by Python, and the run went on;
        one in an iterator being built leaves it half-made. There Ctrl-C is noted and raised by the loop
        at the next batch."""
        if (
            threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        ):
            return None  # a handler of someone else's (or Ctrl-C ignored, as under some launchers): left alone

        owner = os.getpid()

        def handler(signum, frame):
            if os.getpid() != owner:  # a loader worker forked as Ctrl-C came: the main process stops the run
                return
            again, self.ctrl_c = self.ctrl_c, True
            if not again and _in_loader_code(frame):
                return  # the loop stops at the next batch (a second Ctrl-C: at once)
            raise KeyboardInterrupt

        return signal.signal(signal.SIGINT, handler)

    def _interrupted_message(self) -> str:
        engine = getattr(self, "engine", None)
        step = f"at step {engine.global_steps}" if engine is not None else "during set-up"
        store = getattr(self, "store", None) or CheckpointStore(self.out_dir / "checkpoints")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # damaged tags are reported when the run resumes
            tag = store.latest_tag()
        if tag is not None:
            return f"interrupted {step}; re-run the same command to resume from checkpoint {store.folder / tag}"
        return f"interrupted {step}; no checkpoint yet in {store.folder}: re-running the same command starts over"

    def _train(self) -> dict[str, float]:
        wall = time.perf_counter()
        self._prepare_output_dir()
        finished = self._finished_results()
        if finished is not None:
            return finished
        self._build()
        self._write_run_config()
        epoch, step_in_epoch = 0, 0
        pending_rng = pending_loader = None
        if self.run.resume_ckpt_path and self.mode != "resume":
            raise ConfigError(
                f"run.resume_ckpt_path {self.run.resume_ckpt_path}: {self.out_dir} holds no run to resume"
            )
        if self.mode == "resume":
            state = self.store.load(self.engine, self._resume_tag())
            if state is not None:
                current = block_fingerprints(self.engine.module)
                if state.get("fingerprints") and state["fingerprints"] != current:
                    raise CheckpointError("checkpoint was trained with different frozen LLM weights")
                epoch, step_in_epoch = state["epoch"], state["step_in_epoch"]
                pending_rng, pending_loader = state["rng"], state.get("loader")
                if step_in_epoch and pending_loader is None:
                    raise CheckpointError(
                        f"{self.store.folder}: a mid-epoch checkpoint without the data loader's "
                        "position (written by an older mmllm); resume from an epoch-end one "
                        "or start anew (--overwrite)"
                    )
                self._log({"event": "resumed", "epoch": epoch, "step": self.engine.global_steps})
                log.info("resumed %s at step %d (epoch %d)", self.out_dir, self.engine.global_steps, epoch)
        self.tracker = RunTracker(
            self.out_dir,
            enabled=self.is_main,
            tensorboard=self.run.tensorboard,
            resume_step=self.engine.global_steps + 1 if self.mode == "resume" else None,
        )
        log.info(
            "training %s: %d steps (%d per epoch), %s, %d/%d parameters trainable, output %s",
            self.task.name,
            self.total_steps,
            self.steps_per_epoch,
            self.precision,
            self.trainable_params,
            self.total_params,
            self.out_dir,
        )
        run = self.run
        start_step, step_seconds = self.engine.global_steps, 0.0
        every = run.checkpoint_every or self.steps_per_epoch
        started = time.perf_counter()
        done = self.engine.global_steps >= self.total_steps
        bar = tqdm(
            total=self.total_steps,
            initial=self.engine.global_steps,
            desc="train",
            disable=not self.is_main,
            mininterval=2.0,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        while epoch < run.max_epoch and not done:
            self.sampler.set_epoch(epoch)
            if pending_loader is not None:
                self.loader.load_state_dict(pending_loader)
                pending_loader = None
            self.engine.train()
            bar.set_description(f"epoch {epoch}")
            running, count, t0 = 0.0, 0, time.perf_counter()
            step_t0 = t0
            batches = iter(self.loader)  # draws the loader's base seed from the global RNG ...
            if pending_rng is not None:  # ... so a resumed run restores the RNG only after that draw
                set_rng_state(pending_rng)
                pending_rng = None
            for i, batch in enumerate(_unwrap_worker_errors(batches)):
                if self.ctrl_c:
                    raise KeyboardInterrupt
                batch = self.task.move_batch(batch, self.device, self.dtype)
                loss, logs = self.task.training_loss(self.engine, batch)
                if not torch.isfinite(loss.detach()).item():
                    raise TrainingError(
                        f"training loss is {loss.item()} at step {self.engine.global_steps + 1}: "
                        "lower run.init_lr or check the inputs (refusing to train on)"
                    )
                self.engine.backward(loss)
                lr = self.engine.get_lr()[0]  # the LR this step runs at (the scheduler steps inside engine.step)
                self.engine.step()
                running, count = running + loss.item(), count + 1
                if (i + 1) % self.accum:
                    continue
                step_in_epoch += 1
                step = self.engine.global_steps
                now = time.perf_counter()
                step_seconds, step_t0 = step_seconds + now - step_t0, now
                bar.update(1)
                if step % run.log_every == 0 or step_in_epoch == self.steps_per_epoch or step >= self.total_steps:
                    record = {
                        "split": "train",
                        "epoch": epoch,
                        "step": step,
                        "loss": running / count,
                        "lr": lr,
                        "sec_per_step": (now - t0) * self.accum / count,
                    }
                    grad_norm = self.engine.get_global_grad_norm()
                    if grad_norm is not None:
                        record["grad_norm"] = float(grad_norm)
                    self._log({**record, **logs})
                    bar.set_postfix(loss=f"{running / count:.4f}")
                    log.debug("step %d: loss %.4f lr %.3g", step, running / count, record["lr"])
                    running, count, t0 = 0.0, 0, time.perf_counter()
                done = step >= self.total_steps
                if step % every == 0 and step_in_epoch < self.steps_per_epoch and not done:
                    self._save(epoch, step_in_epoch)
                    step_t0 = time.perf_counter()  # checkpoint writing is not a training step
                if done or step_in_epoch >= self.steps_per_epoch:
                    break
            if step_in_epoch >= self.steps_per_epoch:  # a whole epoch is done
                self._validate(epoch)
                epoch, step_in_epoch = epoch + 1, 0
            self._save(epoch, step_in_epoch)
        bar.close()
        train_seconds = time.perf_counter() - started
        steps_run = self.engine.global_steps - start_step
        if step_in_epoch:  # a run shorter than its epoch is validated too
            self._validate(epoch)
        # nothing trained now (a finished run re-run with other evaluation settings): its summary.json and
        # model file are the record of the training and stay as they are; this evaluation goes beside them
        reevaluation = distributed.all_gather_objects(
            steps_run == 0 and (self.out_dir / "summary.json").is_file() and (self.out_dir / FINAL_MODEL).is_file()
        )[0]
        if not reevaluation:
            trained = OmegaConf.create(to_dict(self.cfg))
            trained.run.precision = self.precision  # evaluation must run in the precision the run trained in
            save_final_model(self.engine, self.out_dir / FINAL_MODEL, trained)
        distributed.barrier()
        results = self._test(self.engine.module)
        if self.is_main and reevaluation:
            write_json(
                self.out_dir / REEVALUATION_FILE,
                {
                    "task": self.task.name,
                    "steps": self.engine.global_steps,
                    "max_eval_samples": self.eval_cut,
                    "config_sha256": config_hash(self.task),
                    "git_commit": git_commit(),
                    **results,
                },
            )
            log.info(
                "%s had already finished (%d steps): summary.json kept, this evaluation written to %s",
                self.out_dir,
                self.engine.global_steps,
                self.out_dir / REEVALUATION_FILE,
            )
        elif self.is_main:
            summary = {
                "task": self.task.name,
                "output_dir": str(self.out_dir),
                "steps": self.engine.global_steps,
                "world_size": self.world,
                "seed": run.seed,
                "precision": self.precision,
                "train_seconds": round(train_seconds, 1),
                "wall_seconds": round(time.perf_counter() - wall, 1),
                "seconds_per_step": round(step_seconds / steps_run, 4) if steps_run else None,
                "trainable_params": self.trainable_params,
                "total_params": self.total_params,
                "max_eval_samples": self.eval_cut,
                "device": describe_device(self.device),
                "git_commit": git_commit(),
                "config_sha256": config_hash(self.task),
                "llm_block": _block_options(self.cfg),
                **results,
            }
            write_json(self.out_dir / "summary.json", summary)
            log.info(
                "finished %s: %d steps in %.1f s; summary %s",
                self.task.name,
                self.engine.global_steps,
                train_seconds,
                self.out_dir / "summary.json",
            )
        self.tracker.close()
        return results

    def _test(self, model: nn.Module) -> dict[str, float]:
        """``test_splits`` evaluated; metrics named ``<split>_<metric>`` (``test_accuracy``)."""
        results: dict[str, float] = {}
        step = self.engine.global_steps if getattr(self, "engine", None) is not None else 0
        for split in self.test_splits:
            metrics = self._evaluate(split, model)
            self._log({"split": split, "step": step, **metrics})
            results.update({f"{split}_{k}": v for k, v in metrics.items()})
        return results

    def evaluate_only(self) -> dict[str, float]:
        """LAVIS's ``run.evaluate``: no training; ``test_splits`` of the model built by the task
        (``run.init_from`` applied), with the weights of ``run.resume_ckpt_path`` (a model_final.pt) if set."""
        run = self.run
        seed_everything(run.seed)
        self.task.build_preprocess()
        model = self.model if self.model is not None else build_model(self.task)
        if run.resume_ckpt_path:
            path = Path(run.resume_ckpt_path)
            if path.is_dir():
                raise ConfigError(
                    f"run.resume_ckpt_path {path}: with run.evaluate give a model file "
                    f"({FINAL_MODEL}), not a checkpoint folder"
                )
            read_model_file(path)  # a clear error for a file that is not ours
            load_model_file(model, path)
        if self.datasets is None:
            self.datasets = self.task.build_datasets()
        self._resolve_splits()
        if not self.test_splits:
            raise ConfigError(
                f"run.evaluate: no split to evaluate; set run.test_splits (built: {sorted(self.datasets)})"
            )
        self.precision = compute_precision(self.task)
        model.to(distributed.device())
        if self.precision == "bf16":
            cast_parameters(model, torch.bfloat16)  # as DeepSpeed's bf16 casts a training model
        model.eval()
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        return self._test(model)


def schedule_settings(run, total_steps: int) -> tuple[int, float, float]:
    """(warm-up steps, floor ratio, warm-up start ratio) of a run section (see :mod:`.schedule`)."""
    warmup = run.warmup_steps if run.warmup_steps is not None else int(run.warmup_ratio * total_steps)
    min_ratio = run.min_lr / run.init_lr if run.min_lr is not None else run.min_lr_ratio
    start = (run.warmup_lr or 0.0) / run.init_lr
    return warmup, min_ratio, start


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
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
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
