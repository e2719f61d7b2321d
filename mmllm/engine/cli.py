"""What every project's ``train.py`` and ``main.py`` do, written once.

A project names its tasks and embedded-data preparers as ``"module:attribute"`` strings
(imported only when used) and calls :func:`train_main` / :func:`run_variants`.
"""
from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from omegaconf import DictConfig

from ..config import load_config
from ..errors import ConfigError


def _resolve(target: str):
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def prepare_embedded_data(cfg: DictConfig, preparers: Mapping[str, str]) -> None:
    """Dataset sections with ``prepare: NAME`` are converted from their registry package on first use."""
    for name, spec in cfg.datasets.items():
        kind = spec.get("prepare")
        if not kind:
            continue
        if kind not in preparers:
            raise ConfigError(f"datasets.{name}.prepare: unknown {kind!r} (known: {sorted(preparers)})")
        if not spec.get("root"):
            raise ConfigError(f"datasets.{name}.prepare={kind} needs datasets.{name}.root")
        _resolve(preparers[kind])(spec.root)


def build_task(cfg: DictConfig, tasks: Mapping[str, str]):
    name = cfg.run.get("task")
    if name not in tasks:
        raise ConfigError(f"run.task must be one of {sorted(tasks)}, got {name!r}")
    return _resolve(tasks[name])(cfg)


def train_main(tasks: Mapping[str, str], preparers: Mapping[str, str] | None = None,
               argv: Sequence[str] | None = None, description: str | None = None) -> dict:
    from .trainer import Trainer

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--options", nargs="*", default=[], help="overrides like run.max_epoch=2")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.options)
    prepare_embedded_data(cfg, preparers or {})
    results = Trainer(cfg, build_task(cfg, tasks)).train()
    print(json.dumps(results, indent=1))
    return results


def run_variants(train_script: Path, default_config: Path, variants: Mapping[str, Sequence[str]],
                 description: str | None = None) -> int:
    """Train each variant (a list of overrides) in its own process, then print the leaderboard."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--config", default=str(default_config))
    parser.add_argument("--options", nargs="*", default=[], help="overrides applied to every variant")
    parser.add_argument("--only", nargs="*", default=None, help="run only these variants")
    args = parser.parse_args()
    for name, extra in variants.items():
        if args.only and name not in args.only:
            continue
        print(f"=== {name}", flush=True)
        cmd = [sys.executable, str(train_script), "--config", args.config, "--options",
               f"run.output_dir={Path(args.runs) / name}", *extra, *args.options]
        subprocess.run(cmd, check=True)
    from ..cli import main as cli

    return cli(["leaderboard", "--runs", args.runs])


def print_report(compute) -> int:
    """Run an evaluation script's ``compute()``: its JSON report on stdout (exit 0), or the
    input error on stderr (exit 2) — bad files are user errors, not tracebacks."""
    from ..errors import MMLLMError

    try:
        report = compute()
    except (MMLLMError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1))
    return 0
