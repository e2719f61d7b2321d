"""From a config to a trained run: what ``mmllm train``, ``mmllm config``, the sweep and LAVIS's
entry point share. No argument parsing here: the command lines (:mod:`mmllm.cli`) call these.

Everything about a task comes from the registry (:mod:`mmllm.engine.registry`); nothing here
lists tasks or preparers.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from ..errors import ConfigError
from .registry import build_task, preparer

if TYPE_CHECKING:
    from .task import Task


def prepare_embedded_data(cfg: DictConfig) -> None:
    """Dataset sections with ``prepare: NAME`` are converted from their registry package on first use."""
    for name, spec in (cfg.get("datasets") or {}).items():
        kind = spec.get("prepare") if hasattr(spec, "get") else None
        if not kind:
            continue
        if not spec.get("root"):
            raise ConfigError(f"datasets.{name}.prepare={kind} needs datasets.{name}.root")
        preparer(kind)(spec.root)


def task_for(cfg: DictConfig) -> Task:
    """The registered task a config runs (``run.task``'s benchmark × ``model.arch``), built (its sections
    validated): :func:`mmllm.engine.registry.build_task`."""
    return build_task(cfg)


def import_modules(names: Sequence[str]) -> None:
    """``--import my_pkg.tasks``: modules that call ``register_task`` for tasks outside any package."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"--import {name}: {exc}") from exc


def train_config(cfg: DictConfig, eval_limit_optional: bool = False) -> dict[str, float]:
    """Train and evaluate the task ``cfg`` names (``run.task``): its sections are validated before any
    embedded data is converted or anything is built. ``eval_limit_optional``: ``run.max_eval_samples``
    is a preset, so a task that cannot cut its eval splits evaluates them in full (``--quick``)."""
    from .trainer import Trainer

    task = task_for(cfg)
    prepare_embedded_data(cfg)
    return Trainer(cfg, task, eval_limit_optional=eval_limit_optional).train()
