"""The one task registry: every task declares itself once, and every face reads it from here.

A task (VQA, retrieval, image classification, ...) is a :class:`TaskEntry`: its Task class,
its datasets section, its LAVIS names, its embedded-data preparers, its default config and
its main metric. ``mmllm train``, the projects' ``main.py`` variants, the LAVIS registration
and the leaderboard all read these entries; none of them lists tasks by name.

A task registers on its class, ``@registered_task(name=..., metric=..., default_config=...)``
(stackable: one entry per decorator), or with ``register_task(TaskEntry(...))`` from any code.
Benchmarks and models apart (:mod:`mmllm.engine.benchmark`): ``@registered_benchmark(name, metric=...)``
on a Benchmark class, ``@registered_model(name, task=...)`` on each model of it; every model gives one
pair, a :class:`TaskEntry` with the benchmark's data section, metric and preparers.
The built-in task packages are found by scanning, as ``mmllm/blocks/`` is: the first time the
registry is asked, the modules ``benchmark.py``, ``task.py`` and ``*_task.py`` of each
``vision.<task>`` package and of each ``mmllm_<name>`` project package are imported; nothing is
listed in the packaging. Third-party packages may also advertise a function returning a list of
entries through the ``mmllm.tasks`` entry-point group. Modules and entry points are loaded one by
one: a broken one is reported with its name and skips only itself (LAVIS's package ``__init__``
imports its whole model zoo, so one broken model breaks all).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import pkgutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ..errors import ConfigError
from ..schema import suggest

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from .task import Task

ENTRY_POINT_GROUP = "mmllm.tasks"
CLASS_ENTRIES = "task_entries"  # a registered class's own entries (Task.task_entries), never inherited


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
            raise ConfigError(
                f"{self.depth_key} is {depth!r}: the insertion-depth variants need the host's number "
                "of blocks there (set it in the config)"
            )
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
    benchmark: str | None = None  # the benchmark this pair runs (registered_model); None: the task is its own
    model: str | None = None  # the model's registered name within its benchmark (registered_model)
    dataset_aliases: tuple[str, ...] = ()  # older names of `datasets.<dataset>`, read when it is absent

    @property
    def benchmark_name(self) -> str:
        """The benchmark of this pair (a task registered whole is a benchmark with one model)."""
        return self.benchmark or self.dataset

    @property
    def model_name(self) -> str:
        return self.model or self.model_arch

    def task_class(self) -> type[Task]:
        return resolve_target(self.task)

    def build(self, cfg: DictConfig) -> Task:
        check_dataset_sections(cfg, self.dataset)
        return self.task_class()(cfg, entry=self)


_TASKS: dict[str, TaskEntry] = {}
_LOADED = False
_BROKEN: dict[str, str] = {}


def register_task(entry: TaskEntry, replace: bool = False) -> TaskEntry:
    """Add ``entry``; a second entry under the same name is an error unless ``replace``.

    An entry whose ``task`` is a class is also recorded on that class (``task_entries``, its own
    attribute, never inherited), so the class knows its entry without asking the registry."""
    if not isinstance(entry, TaskEntry):
        raise ConfigError(f"register_task takes a TaskEntry, got {type(entry).__name__}")
    old = _TASKS.get(entry.name)
    if old is not None and old != entry and not replace:
        raise ConfigError(f"task {entry.name!r} is registered twice (task classes {old.task} and {entry.task})")
    if old is not None:
        _forget_on_class(old)
    _TASKS[entry.name] = entry
    if isinstance(entry.task, type):
        setattr(entry.task, CLASS_ENTRIES, (*entry.task.__dict__.get(CLASS_ENTRIES, ()), entry))
    return entry


def registered_task(name: str, **options: Any) -> Callable[[type], type]:
    """Class decorator registering the decorated Task class as task ``name``; ``options`` are
    :class:`TaskEntry`'s other fields (``dataset`` defaults to ``name``). Stack it for one class
    under several names; such a class is built through its entry (``get_task(name).build(cfg)``)."""
    known = [f.name for f in fields(TaskEntry) if f.name not in ("name", "task")]
    for key in options:
        if key not in known:
            raise ConfigError(f"registered_task({name!r}): no option {key!r}{suggest(key, known)}; options: {known}")

    def decorate(cls: type) -> type:
        register_task(TaskEntry(name=name, task=cls, **{"dataset": name, **options}))
        return cls

    return decorate


@dataclass(frozen=True)
class BenchmarkEntry:
    """A benchmark (:class:`mmllm.engine.benchmark.Benchmark`): its data section, metric and preparers,
    said once for every model of it (each model's pair copies them into its :class:`TaskEntry`)."""

    name: str  # `datasets.<name>` section, LAVIS task and dataset-builder name
    benchmark: type  # the Benchmark class
    metric: str
    higher_is_better: bool = True
    preparers: Mapping[str, str | Callable] = field(default_factory=dict)
    dataset_aliases: tuple[str, ...] = ()  # older `datasets.<key>` names of the same section
    description: str = ""


_BENCHMARKS: dict[str, BenchmarkEntry] = {}


def registered_benchmark(name: str, *, metric: str, **options: Any) -> Callable[[type], type]:
    """Class decorator registering a :class:`~mmllm.engine.benchmark.Benchmark` as ``name`` (its data
    section is ``datasets.<name>``); ``options`` are :class:`BenchmarkEntry`'s other fields."""
    known = [f.name for f in fields(BenchmarkEntry) if f.name not in ("name", "benchmark", "metric")]
    for key in options:
        if key not in known:
            raise ConfigError(
                f"registered_benchmark({name!r}): no option {key!r}{suggest(key, known)}; options: {known}"
            )

    def decorate(cls: type) -> type:
        entry = BenchmarkEntry(name=name, benchmark=cls, metric=metric, **options)
        old = _BENCHMARKS.get(name)
        same = old is not None and (old.benchmark.__module__, old.benchmark.__qualname__) == (
            cls.__module__,
            cls.__qualname__,
        )
        if old is not None and not same:  # (the same class imported anew, e.g. a module reloaded, replaces it)
            raise ConfigError(f"benchmark {name!r} is registered twice ({old.benchmark} and {cls})")
        _BENCHMARKS[name] = entry
        cast(Any, cls).benchmark_entry = entry  # the class's own (Benchmark.benchmark_entry)
        return cls

    return decorate


def registered_model(name: str, *, task: str | None = None, **options: Any) -> Callable[[type], type]:
    """Class decorator registering a :class:`~mmllm.engine.benchmark.BenchmarkModel` as model ``name`` of
    its class's ``benchmark``: the pair is the task ``task`` (default ``<benchmark>_<name>``) with the
    benchmark's data section, metric and preparers. ``options``: :class:`TaskEntry`'s other fields
    (``model_arch``, the LAVIS arch, defaults to ``mmllm_<name>``)."""
    fixed = (
        "name",
        "task",
        "dataset",
        "metric",
        "higher_is_better",
        "preparers",
        "benchmark",
        "model",
        "dataset_aliases",
    )
    known = [f.name for f in fields(TaskEntry) if f.name not in fixed]
    for key in options:
        if key not in known:
            raise ConfigError(f"registered_model({name!r}): no option {key!r}{suggest(key, known)}; options: {known}")

    def decorate(cls: type) -> type:
        bench = getattr(cls, "benchmark", None)
        entry = getattr(bench, "__dict__", {}).get("benchmark_entry")
        if entry is None:
            raise ConfigError(
                f"registered_model({name!r}): {cls.__name__}.benchmark must be a Benchmark class "
                "registered with @registered_benchmark"
            )
        register_task(
            TaskEntry(
                name=task or f"{entry.name}_{name}",
                task=cls,
                dataset=entry.name,
                metric=entry.metric,
                higher_is_better=entry.higher_is_better,
                preparers=entry.preparers,
                benchmark=entry.name,
                model=name,
                dataset_aliases=entry.dataset_aliases,
                **{"model_arch": f"mmllm_{name}", **options},
            )
        )
        return cls

    return decorate


def all_benchmarks() -> dict[str, BenchmarkEntry]:
    """Every registered benchmark by name (task packages scanned on first call)."""
    _load_entry_points()
    return dict(sorted(_BENCHMARKS.items()))


def _forget_on_class(entry: TaskEntry) -> None:
    if isinstance(entry.task, type) and entry in entry.task.__dict__.get(CLASS_ENTRIES, ()):
        setattr(entry.task, CLASS_ENTRIES, tuple(e for e in entry.task.__dict__[CLASS_ENTRIES] if e is not entry))


def unregister_task(name: str) -> None:
    entry = _TASKS.pop(name, None)
    if entry is not None:
        _forget_on_class(entry)


def check_dataset_sections(cfg: DictConfig, own: str) -> None:
    """Sections of other registered tasks may sit beside a task's own ``datasets.<own>`` (one file for
    several stages); any other section is a misspelling."""
    datasets = cfg.get("datasets") or {}
    known = {key for e in all_tasks().values() for key in (e.dataset, *e.dataset_aliases)} | {own}
    stray = [k for k in datasets if k not in known]
    if stray:
        raise ConfigError(
            f"datasets.{stray[0]}: no registered task reads this section{suggest(stray[0], sorted(known))}"
        )


def task_packages() -> list[str]:
    """The built-in task packages: every ``vision.<task>`` package and every top-level
    ``mmllm_<name>`` package (installed, or in the source tree's ``projects/<name>/``)."""
    packages: list[str] = []
    vision = importlib.util.find_spec("vision")
    if vision is not None and vision.submodule_search_locations:
        packages += [
            f"vision.{m.name}"
            for m in pkgutil.iter_modules(vision.submodule_search_locations)
            if m.ispkg and not m.name.startswith("_")
        ]
    projects = {m.name for m in pkgutil.iter_modules() if m.ispkg and m.name.startswith("mmllm_")}
    projects |= {
        p.parent.name for p in (Path(__file__).resolve().parents[2] / "projects").glob("*/mmllm_*/__init__.py")
    }
    return packages + sorted(projects)


def task_modules(package: str) -> list[str]:
    """A task package's task modules: ``benchmark``, ``task`` and ``*_task``."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"task package {package!r} is not importable (a new top-level package is "
            "importable once the project is installed: pip install -e .)"
        )
    names = [m.name for m in pkgutil.iter_modules(spec.submodule_search_locations) if not m.name.startswith("_")]
    names = [n for n in names if n in ("benchmark", "task") or n.endswith("_task")]
    return [f"{package}.{n}" for n in sorted(names)]


def _load_entry_points() -> None:
    """Scan the built-in task packages, then load the ``mmllm.tasks`` entry points, once."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    packages = task_packages()
    for package in packages:
        try:
            modules = task_modules(package)
        except Exception as exc:  # noqa: BLE001 - one broken package must not hide the others
            _broken(package, exc)
            continue
        for module in modules:
            try:
                importlib.import_module(module)  # its @registered_task classes register themselves
            except Exception as exc:  # noqa: BLE001 - one broken task must not hide the others
                _broken(module, exc)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if any(ep.module == p or ep.module.startswith(p + ".") for p in packages):
            continue  # a built-in package (scanned above) named by an older install's metadata
        try:
            entries = ep.load()()
            for entry in entries:
                register_task(entry)
        except Exception as exc:  # noqa: BLE001 - one broken task must not hide the others
            _broken(ep.name, exc, f"mmllm task entry point {ep.name!r} ({ep.value})")


def _broken(name: str, exc: Exception, what: str | None = None) -> None:
    _BROKEN[name] = f"{type(exc).__name__}: {exc}"
    warnings.warn(f"{what or f'mmllm task module {name!r}'} failed to load: {exc}", stacklevel=3)


def all_tasks() -> dict[str, TaskEntry]:
    """Every registered task by name (task packages scanned, entry points loaded, on first call)."""
    _load_entry_points()
    return dict(sorted(_TASKS.items()))


def broken_entry_points() -> dict[str, str]:
    """Task modules and entry points that failed to load, by name, with why."""
    _load_entry_points()
    return dict(_BROKEN)


def get_task(name: str | None) -> TaskEntry:
    tasks = all_tasks()
    if name not in tasks:
        broken = f"; task modules or entry points that failed to load: {sorted(_BROKEN)}" if _BROKEN else ""
        raise ConfigError(
            f"run.task {name!r} is not a registered task{suggest(str(name), list(tasks))}; "
            f"registered: {sorted(tasks)}{broken}"
        )
    return tasks[name]


def pair_for(entry: TaskEntry, arch: str | None) -> TaskEntry:
    """The pair that runs ``model.arch`` on ``entry``'s benchmark: ``run.task`` names the benchmark (through
    any pair of it) and ``model.arch`` the model, by its registered name (``llava_vqa``) or its LAVIS arch
    (``mmllm_llava_vqa``), as in LAVIS. No arch: ``entry`` itself. An arch of no model of the benchmark is refused."""
    if arch is None or arch in (entry.model_arch, entry.model_name):
        return entry
    pairs: dict[str, TaskEntry] = {}
    for other in all_tasks().values():
        if other.benchmark_name == entry.benchmark_name:
            pairs.setdefault(other.model_arch, other)
            pairs.setdefault(other.model_name, other)
    if arch not in pairs:
        raise ConfigError(
            f"model.arch {arch!r} is not a model of benchmark {entry.benchmark_name!r} (run.task "
            f"{entry.name!r}){suggest(arch, list(pairs))}; its models: {sorted(pairs)}"
        )
    return pairs[arch]


def build_task(cfg: DictConfig) -> Task:
    """The task a config runs, built (its sections validated): the pair of ``run.task``'s benchmark and
    ``model.arch`` (:func:`pair_for`). ``run.task`` is set to the pair's name, so the stored config,
    ``summary.json`` and ``mmllm evaluate --run`` name the pair that ran."""
    run = cfg.get("run") or {}
    model = cfg.get("model") or {}
    entry = pair_for(get_task(run.get("task")), model.get("arch") if hasattr(model, "get") else None)
    if entry.name != run.get("task"):
        cfg.run.task = entry.name
    return entry.build(cfg)


def preparer(name: str) -> Callable[[str], Any]:
    """The embedded-data preparer called ``name``, whichever task registered it."""
    found = {k: v for entry in all_tasks().values() for k, v in entry.preparers.items()}
    if name not in found:
        raise ConfigError(f"prepare: unknown {name!r}{suggest(name, list(found))}; known: {sorted(found)}")
    return resolve_target(found[name])


def entry_for_metric_row(task_name: str) -> TaskEntry | None:
    """The entry of a finished run's task (None for tasks no longer registered)."""
    return all_tasks().get(task_name)
