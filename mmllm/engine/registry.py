"""The one task registry: every task declares itself once, and every face reads it from here.

A task (VQA, retrieval, image classification, ...) is a :class:`TaskEntry`: its Task class,
its datasets section, its LAVIS names, its embedded-data preparers, its default config and
its main metric. ``mmllm train``, the projects' ``main.py`` variants, the LAVIS registration
and the leaderboard all read these entries; none of them lists tasks by name.

Packages advertise entries through the ``mmllm.tasks`` entry-point group (a function that
returns a list of entries); code outside a package calls :func:`register_task`. Entry
points are loaded one by one: a broken task is reported with its name and skips only itself
(LAVIS's package ``__init__`` imports its whole model zoo, so one broken model breaks all).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..schema import suggest

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from .task import Task

ENTRY_POINT_GROUP = "mmllm.tasks"


def resolve_target(target: str | Callable | type) -> Any:
    """``"package.module:attribute"`` -> the attribute (imported on first use); objects pass through."""
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    if not attr:
        raise ConfigError(f"{target!r} must look like 'package.module:attribute'")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class InsertionDepths:
    """Where a task's host encoder can take the block, as config overrides: the paper's head / middle / tail
    (Pang et al., ICLR 2024, Table D: the block's position in the visual encoder, not the LLM layer).

    Either ``fixed`` named positions (METER's stack: ``head`` = before fusion, ``tail`` = after fusion), or an
    index key counted in host blocks: with ``n`` host blocks before the LLM block (head 1, middle depth // 2,
    tail depth; ``depth`` read from the run's config at ``depth_key``) the override is ``key=n + offset``
    (``offset=-1`` for hosts whose key means "after block k, 0-based", 0 for "k blocks before it").
    """

    key: str | None = None
    depth_key: str | None = None
    offset: int = -1
    fixed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def overrides(self, cfg: DictConfig) -> dict[str, tuple[str, ...]]:
        """``{"head": (...), "middle": (...), "tail": (...)}`` (only the fixed names for fixed positions)."""
        if self.fixed:
            return {name: tuple(values) for name, values in self.fixed.items()}
        from omegaconf import OmegaConf

        if not self.key or not self.depth_key:
            raise ConfigError("InsertionDepths needs `fixed` positions, or both `key` and `depth_key`")
        depth = OmegaConf.select(cfg, self.depth_key, default=None)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ConfigError(f"{self.depth_key} is {depth!r}: the insertion-depth variants need the host's number "
                              "of blocks there (set it in the config)")
        blocks = {"head": 1, "middle": max(1, depth // 2), "tail": depth}
        return {name: (f"{self.key}={n + self.offset}",) for name, n in blocks.items()}


@dataclass(frozen=True)
class TaskEntry:
    """Everything the faces need to know about a task, said once."""

    name: str  # run.task value and LAVIS task name
    task: str | type  # "module:TaskClass" (imported when used) or the class
    dataset: str  # key under `datasets:` and LAVIS dataset-builder name
    model_arch: str  # LAVIS model arch (`model.arch`)
    metric: str  # main metric key of Task.evaluate
    higher_is_better: bool = True
    default_config: Path | None = None  # the task's main YAML config (model, datasets, run)
    preparers: Mapping[str, str | Callable] = field(default_factory=dict)  # `prepare: NAME` -> fn(root)
    lavis_model_config: Path | None = None  # LAVIS default model config (default: default_config)
    lavis_dataset_config: Path | None = None  # LAVIS default dataset config (default: default_config)
    variants: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {"block": (), "no_block": ("model.llm_block.kind=none",)}
    )  # what the task's main command trains: name -> config overrides
    description: str = ""
    analysis: str | None = None  # "module:function" giving `mmllm analyze` inputs and foreground masks
    insertion_depths: InsertionDepths | None = None  # `mmllm sweep`'s depth_head/middle/tail variants

    def task_class(self) -> type[Task]:
        return resolve_target(self.task)

    def build(self, cfg: DictConfig) -> Task:
        return self.task_class()(cfg, entry=self)


_TASKS: dict[str, TaskEntry] = {}
_LOADED = False
_BROKEN: dict[str, str] = {}


def register_task(entry: TaskEntry, replace: bool = False) -> TaskEntry:
    """Add ``entry``; a second entry under the same name is an error unless ``replace``."""
    if not isinstance(entry, TaskEntry):
        raise ConfigError(f"register_task takes a TaskEntry, got {type(entry).__name__}")
    old = _TASKS.get(entry.name)
    if old is not None and old != entry and not replace:
        raise ConfigError(f"task {entry.name!r} is registered twice (task classes {old.task} and {entry.task})")
    _TASKS[entry.name] = entry
    return entry


def unregister_task(name: str) -> None:
    _TASKS.pop(name, None)


def _load_entry_points() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entries = ep.load()()
            for entry in entries:
                register_task(entry)
        except Exception as exc:  # noqa: BLE001 - one broken task must not hide the others
            _BROKEN[ep.name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"mmllm task entry point {ep.name!r} ({ep.value}) failed to load: {exc}", stacklevel=2)


def all_tasks() -> dict[str, TaskEntry]:
    """Every registered task by name (entry points loaded on first call)."""
    _load_entry_points()
    return dict(sorted(_TASKS.items()))


def broken_entry_points() -> dict[str, str]:
    _load_entry_points()
    return dict(_BROKEN)


def get_task(name: str | None) -> TaskEntry:
    tasks = all_tasks()
    if name not in tasks:
        broken = f"; entry points that failed to load: {sorted(_BROKEN)}" if _BROKEN else ""
        raise ConfigError(
            f"run.task {name!r} is not a registered task{suggest(str(name), list(tasks))}; "
            f"registered: {sorted(tasks)}{broken}"
        )
    return tasks[name]


def preparer(name: str) -> Callable[[str], Any]:
    """The embedded-data preparer called ``name``, whichever task registered it."""
    found = {k: v for entry in all_tasks().values() for k, v in entry.preparers.items()}
    if name not in found:
        raise ConfigError(f"prepare: unknown {name!r}{suggest(name, list(found))}; known: {sorted(found)}")
    return resolve_target(found[name])


def entry_for_metric_row(task_name: str) -> TaskEntry | None:
    """The entry of a finished run's task (None for tasks no longer registered)."""
    return all_tasks().get(task_name)
