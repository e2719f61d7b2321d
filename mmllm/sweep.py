"""``mmllm sweep FILE``: task × variant × LLM × seed from one YAML file, each run in its own process
through the shared engine, resumable, then the leaderboard with seed statistics.

Sweep file::

    name: readme
    runs_dir: results/readme            # runs land in <runs_dir>/<task>/<variant>[_<llm>]/seed<S>
    seeds: [1, 2, 3]
    options: [run.precision=fp32]       # every run
    tasks:
      - {task: mmllm_image_cls, options: [run.max_steps=300]}      # config: the task's registered one
      - {task: mmllm_vqa, config: configs/vqa/easyvqa_meter_smollm2.yaml}
    llms: {smollm2: smollm2-135m, qwen1.5b: qwen2.5-1.5b}          # model.llm_block.source of block variants
    variants:
      none: [model.llm_block.kind=none]                            # no LLM: run once per seed, not per LLM
      frozen: [model.llm_block.kind=llm_block]
      mlp: [model.llm_block.kind=mlp]

A finished run (its folder holds ``summary.json``) is skipped; an interrupted one is restarted with the
same command and the engine resumes it; a folder holding a different run is refused by the engine.
Each run folder gets a ``sweep.json`` (task, variant, llm, seed) that the leaderboard groups on.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .jsonio import write_json

NO_LLM_MARKERS = ("model.llm_block.kind=none",)
KEYS = {"name", "runs_dir", "seeds", "options", "tasks", "llms", "variants"}


@dataclass(frozen=True)
class SweepRun:
    task: str
    variant: str
    llm: str | None
    seed: int
    config: str
    options: tuple[str, ...] = field(default_factory=tuple)
    out_dir: Path = Path()

    @property
    def label(self) -> str:
        """The leaderboard's group name: ``none`` for the no-block baseline, else ``variant [llm]``."""
        return "none" if self.llm is None and self.variant == "none" else (
            self.variant if self.llm is None else f"{self.variant} [{self.llm}]")

    def command(self) -> list[str]:
        return [sys.executable, "-m", "mmllm.cli", "train", "--config", self.config, "--options", *self.options]


def _list(value: Any, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a list, got {type(value).__name__}")
    return value


def load_sweep(path: str | Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the sweep file: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping with keys {sorted(KEYS)}")
    unknown = set(data) - KEYS
    if unknown:
        from .schema import suggest

        name = sorted(unknown)[0]
        raise ConfigError(f"{path}: unknown key {name!r}{suggest(name, sorted(KEYS))}")
    for key in ("tasks", "variants", "seeds"):
        if not data.get(key):
            raise ConfigError(f"{path}: '{key}' is required and must not be empty")
    return data


def expand(spec: dict[str, Any], runs_dir: str | Path | None = None) -> list[SweepRun]:
    """Every run of the sweep, in order task → seed → variant → LLM (so an interrupted sweep has whole seeds)."""
    from .engine.registry import get_task

    root = Path(runs_dir or spec.get("runs_dir") or f"runs/sweep_{spec.get('name', 'unnamed')}")
    seeds = [int(s) for s in _list(spec["seeds"], "seeds")]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {seeds} repeat a seed")
    common = [str(o) for o in _list(spec.get("options"), "options")]
    llms: dict[str, str] = dict(spec.get("llms") or {})
    variants: dict[str, list] = dict(spec["variants"])
    runs = []
    for item in _list(spec["tasks"], "tasks"):
        if isinstance(item, str):
            item = {"task": item}
        entry = get_task(item.get("task"))
        config = item.get("config") or entry.default_config
        if config is None:
            raise ConfigError(f"task {entry.name!r} registers no default config: give 'config' in the sweep file")
        task_options = [str(o) for o in _list(item.get("options"), f"tasks[{entry.name}].options")]
        for seed in seeds:
            for variant, overrides in variants.items():
                overrides = [str(o) for o in _list(overrides, f"variants.{variant}")]
                no_llm = any(o.replace(" ", "") in NO_LLM_MARKERS for o in overrides) or not llms
                for llm in [None] if no_llm else list(llms):
                    name = variant if llm is None else f"{variant}_{llm}"
                    out = root / entry.name / name / f"seed{seed}"
                    source = [] if llm is None else [f"model.llm_block.source={llms[llm]}"]
                    options = (f"run.output_dir={out}", f"run.seed={seed}", *common, *task_options, *source, *overrides)
                    runs.append(SweepRun(entry.name, variant, llm, seed, str(config), options, out))
    return runs


def run_sweep(path: str | Path, runs_dir: str | None = None, dry_run: bool = False) -> Path:
    """Train every unfinished run of the sweep, then write the leaderboard (tables, seed statistics, plots)."""
    from tqdm import tqdm

    spec = load_sweep(path)
    runs = expand(spec, runs_dir)
    root = Path(runs_dir or spec.get("runs_dir") or f"runs/sweep_{spec.get('name', 'unnamed')}")
    todo = [r for r in runs if not (r.out_dir / "summary.json").is_file()]
    print(f"sweep {spec.get('name', path)}: {len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to run "
          f"-> {root}", flush=True)
    if dry_run:
        for r in runs:
            state = "done" if r not in todo else "todo"
            print(f"[{state}] {r.task} {r.label} seed {r.seed}: {' '.join(r.command())}")
        return root
    bar = tqdm(todo, desc="sweep", unit="run")
    for r in bar:
        bar.set_postfix_str(f"{r.task} {r.label} s{r.seed}")
        r.out_dir.mkdir(parents=True, exist_ok=True)
        write_json(r.out_dir / "sweep.json", {"task": r.task, "variant": r.label, "llm": r.llm, "seed": r.seed,
                                              "sweep": str(path)})
        start = time.time()
        if subprocess.run(r.command()).returncode != 0:
            raise ConfigError(f"run {r.out_dir} failed after {time.time() - start:.0f} s "
                              f"(command: {' '.join(r.command())}); re-run the sweep to resume it")
    from .cli import main as cli

    if cli(["leaderboard", "--runs", str(root)]) != 0:
        raise ConfigError(f"no leaderboard could be made from {root}")
    return root


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sweep", help="task × variant × LLM × seed from a YAML sweep file (resumable)")
    parser.add_argument("file", help="sweep YAML (configs/sweeps/*.yaml)")
    parser.add_argument("--runs", default=None, help="override runs_dir")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state, train nothing")
    parser.set_defaults(func=lambda args: (run_sweep(args.file, args.runs, args.dry_run), 0)[1])
