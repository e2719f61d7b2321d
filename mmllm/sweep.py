"""``mmllm sweep FILE``: task × variant × LLM × seed from one YAML file, each run in its own process
through the shared engine, resumable, then the leaderboard with seed statistics and a generated report.

Sweep file::

    name: readme
    runs_dir: results/readme            # runs land in <runs_dir>/<task>/<variant>[_<llm>]/seed<S>
    report_dir: results/readme          # RESULTS.md, leaderboards, plots (default: runs_dir); two sweeps may share
                                        # a runs_dir (a run both name trains once) and keep their own reports
    seeds: [1, 2, 3]
    options: [run.precision=fp32]       # every run
    tasks:
      - {task: mmllm_image_cls, options: [run.max_steps=300]}      # config: the task's registered one
      - {task: mmllm_vqa, config: configs/vqa/easyvqa_meter_smollm2.yaml}
      - {task: mmllm_vqa_generative, variants: [llava, llavit]}      # only these of the variants below
      - {task: mmllm_vqa_generative, config: configs/vqa/easyvqa_llava_two_stage.yaml}   # a stages file: its
                                        # stages run in order per seed (mmllm.engine.stages), the last in the run folder
    llms: {smollm2: smollm2-135m, qwen1.5b: qwen2.5-1.5b}          # model.llm_block.source of block variants
    variants: [none, frozen, random_trained, mlp, layer_middle, depth_head]   # names from the standard set
    # or a mapping: name -> overrides (null = the standard set's), e.g. {none: null, lr2: [run.init_lr=2e-4]}

Variant names (:mod:`mmllm.engine.variants`, the one place variants are defined): the paper's controls (``none``, ``frozen``, ``finetuned``,
``random_trained``, ``random_frozen``, ``mlp``), the LLM layer (``layer_last``, ``layer_middle``,
``layer_first``, ``layer_last_two``; the paper's Fig. 2), the insertion depth in the host encoder
(``depth_head``, ``depth_middle``, ``depth_tail``; its Table D, from the task's registry entry
:class:`~mmllm.engine.registry.InsertionDepths`), and any variant the task registers itself (``mmllm tasks``).
A name a task cannot take (METER has no middle depth; the LLaVA task has no ``model.llm_block``) is left
out for that task and said so; a name no task can take is an error. Variants without an LLM (``none``)
run once per seed; the others once per LLM of ``llms`` (asset names or a path to your checkpoint).

Before anything trains, every run's config is built and checked (a misspelled override fails at once) and
compared with what its folder holds (:mod:`mmllm.engine.rundir`): a finished run with the same resolved
config is skipped, an unfinished one is resumed by the engine, a folder holding a different run is refused.
Each run folder gets a ``sweep.json`` (task, variant, LLM, seed, seconds) that the leaderboard groups on.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from .engine.variants import DEPTHS, NO_BLOCK, STANDARD_VARIANTS, task_variants
from .errors import ConfigError, MMLLMError
from .jsonio import read_json, write_json

__all__ = ["STANDARD_VARIANTS", "add_parser", "expand", "report", "run_state"]

KEYS = {"name", "runs_dir", "report_dir", "seeds", "options", "tasks", "llms", "variants", "description"}
TASK_KEYS = {"task", "config", "options", "variants", "reference"}  # one item of tasks
STATES = ("todo", "resume", "done", "broken", "different")  # broken: a summary.json that is no result (re-run)


@dataclass(frozen=True)
class SweepRun:
    task: str
    variant: str
    llm: str | None
    seed: int
    config: str
    options: tuple[str, ...] = field(default_factory=tuple)
    out_dir: Path = Path()
    llm_source: str | None = None

    @property
    def label(self) -> str:
        """The leaderboard's group name: ``none`` for the no-block baseline, else ``variant [llm]``."""
        return self.variant if self.llm is None else f"{self.variant} [{self.llm}]"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "mmllm.cli", "train", "--config", self.config, "--options", *self.options]

    def shown(self) -> str:
        """The command as a user would type it (config relative to the working directory when it is below it)."""
        config = Path(self.config)
        if config.is_absolute() and config.is_relative_to(Path.cwd()):
            config = config.relative_to(Path.cwd())
        return " ".join(["mmllm train --config", str(config), "--options", *self.options])


def _list(value: Any, where: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a list, got {type(value).__name__}")
    return value


def load_sweep(path: str | Path) -> dict[str, Any]:
    """The sweep file as a dict, its keys checked (a misspelled key names the nearest known one)."""
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


def _task_items(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The sweep's ``tasks`` as dicts (a bare task name is ``{task: name}``), their keys checked."""
    items = []
    for item in _list(spec["tasks"], "tasks"):
        if isinstance(item, str):
            item = {"task": item}
        if not isinstance(item, dict) or set(item) - TASK_KEYS:
            raise ConfigError(f"tasks: each item is a task name or {{{', '.join(sorted(TASK_KEYS))}}}, got {item!r}")
        items.append(item)
    return items


def _variants(spec: dict[str, Any]) -> tuple[dict[str, list[str] | None], dict[str, list[str]]]:
    """(name -> its own overrides, or None for "the standard / the task's set"; name -> the LLMs it is limited to).

    A mapping's value is a list of overrides, null, or ``{options: [...], llms: [...]}`` (e.g. the controls
    with the small LLM only)."""
    raw = spec["variants"]
    if isinstance(raw, list):
        if len(set(map(str, raw))) != len(raw):
            raise ConfigError(f"variants {raw} repeat a name")
        return {str(name): None for name in raw}, {}
    if not isinstance(raw, dict):
        raise ConfigError(f"variants must be a list of names or a mapping name -> overrides, got {type(raw).__name__}")
    overrides: dict[str, list[str] | None] = {}
    only: dict[str, list[str]] = {}
    for name, value in raw.items():
        name = str(name)
        if isinstance(value, dict):
            unknown = set(value) - {"options", "llms"}
            if unknown:
                raise ConfigError(f"variants.{name}: unknown key(s) {sorted(unknown)} (use options, llms)")
            options = value.get("options")
            if value.get("llms") is not None:
                only[name] = [str(x) for x in _list(value["llms"], f"variants.{name}.llms")]
        else:
            options = value
        overrides[name] = None if options is None else [str(o) for o in _list(options, f"variants.{name}")]
    return overrides, only


def _llms(spec: dict[str, Any]) -> dict[str, str]:
    """``llms`` as short name -> source; a list of sources gets names from the sources themselves."""
    raw = spec.get("llms")
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    names: dict[str, str] = {}
    for source in _list(raw, "llms"):
        name = Path(str(source).rstrip("/")).name.replace(".gguf", "").replace(" ", "_") or str(source)
        if name in names:
            raise ConfigError(f"llms: two sources are both called {name!r}; give a mapping name -> source")
        names[name] = str(source)
    return names


def expand(spec: dict[str, Any], runs_dir: str | Path | None = None, notes: list[str] | None = None) -> list[SweepRun]:
    """Every run of the sweep, in order task → seed → variant → LLM (so an interrupted sweep has whole seeds).
    Variants a task cannot take are left out and described in ``notes``."""
    from omegaconf import OmegaConf

    from .engine.registry import get_task
    from .engine.stages import load_run_config

    root = Path(runs_dir or spec.get("runs_dir") or f"runs/sweep_{spec.get('name', 'unnamed')}")
    seeds = [int(s) for s in _list(spec["seeds"], "seeds")]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {seeds} repeat a seed")
    common = [str(o) for o in _list(spec.get("options"), "options")]
    llms = _llms(spec)
    names, only = _variants(spec)
    for variant, wanted in only.items():
        unknown = sorted(set(wanted) - set(llms))
        if unknown:
            raise ConfigError(f"variants.{variant}.llms: {unknown} are not in llms ({sorted(llms)})")
    runs: list[SweepRun] = []
    unknown_everywhere = set(names)
    notes = notes if notes is not None else []
    for item in _task_items(spec):
        entry = get_task(item.get("task"))
        config = item.get("config") or entry.default_config
        if config is None:
            raise ConfigError(f"task {entry.name!r} registers no default config: give 'config' in the sweep file")
        task_options = [str(o) for o in _list(item.get("options"), f"tasks[{entry.name}].options")]
        base_cfg = load_run_config(config, [*common, *task_options])  # a stages file: its last stage
        chosen = names
        if item.get("variants") is not None:  # this task runs only these of the sweep's variants
            wanted = [str(v) for v in _list(item["variants"], f"tasks[{entry.name}].variants")]
            stray = [v for v in wanted if v not in names]
            if stray:
                raise ConfigError(
                    f"tasks[{entry.name}].variants: {stray} are not among the sweep's variants {list(names)}"
                )
            chosen = {v: names[v] for v in wanted}
        variants, skipped = task_variants(entry, base_cfg, chosen)
        if chosen is not names and skipped:
            raise ConfigError(
                f"tasks[{entry.name}].variants: {entry.name} cannot run "
                + "; ".join(f"{k} ({why})" for k, why in skipped.items())
            )
        unknown_everywhere &= {k for k, why in skipped.items() if why == "unknown"}
        reasons: dict[str, list[str]] = {}
        for name, why in skipped.items():
            if why != "unknown":
                reasons.setdefault(why, []).append(name)
        notes += [f"{entry.name}: left out {', '.join(names_)}: {why}" for why, names_ in reasons.items()]
        has_block = OmegaConf.select(base_cfg, "model.llm_block", default=None) is not None
        for seed in seeds:
            for variant, overrides in variants.items():
                no_llm = not llms or not has_block or any(o.replace(" ", "") == NO_BLOCK for o in overrides)
                for llm in [None] if no_llm else [m for m in llms if m in only.get(variant, llms)]:
                    name = variant if llm is None else f"{variant}_{llm}"
                    out = root / entry.name / name / f"seed{seed}"
                    source = [] if llm is None else [f"model.llm_block.source={llms[llm]}"]
                    options = (f"run.output_dir={out}", f"run.seed={seed}", *common, *task_options, *source, *overrides)
                    runs.append(
                        SweepRun(
                            entry.name,
                            variant,
                            llm,
                            seed,
                            str(config),
                            options,
                            out,
                            None if llm is None else llms[llm],
                        )
                    )
        reference = item.get("reference")
        labels = list(dict.fromkeys(r.label for r in runs if r.task == entry.name))
        if reference is not None and str(reference) not in labels:
            raise ConfigError(
                f"tasks[{entry.name}].reference: {reference!r} is not one of the arms this task runs "
                f"({', '.join(labels)})"
            )
    if unknown_everywhere:
        from .schema import suggest

        name = sorted(unknown_everywhere)[0]
        known = sorted({*STANDARD_VARIANTS, *(f"depth_{d}" for d in DEPTHS)})
        raise ConfigError(
            f"variant {name!r} is neither a standard variant{suggest(name, known)} nor one a task "
            f"registers; give its overrides (variants: {{{name}: [key=value, ...]}}). Standard: {known}"
        )
    return runs


def references(spec: dict[str, Any]) -> dict[str, str]:
    """task -> the variant its other variants are compared with, where the sweep file names one (``reference``;
    otherwise the leaderboard's no-block variant)."""
    from .engine.registry import get_task

    return {
        get_task(item["task"]).name: str(item["reference"])
        for item in _task_items(spec)
        if item.get("reference") is not None
    }


def run_state(run: SweepRun) -> tuple[str, list[str]]:
    """(state, differences) of a run's folder: ``todo`` (empty), ``done`` (finished, same resolved config),
    ``resume`` (started, same config), ``broken`` (same config, but its ``summary.json`` is corrupt or no
    result: the run is trained again), ``different`` (holds another run; the differences say how).
    Builds the run's task from its config, so a bad override fails here, before any training. A stages
    file (:mod:`mmllm.engine.stages`) is done when every stage is, different when any stage is."""
    from .engine.stages import is_stages_file, load_stages

    if not is_stages_file(run.config):
        from .config import load_config

        return _folder_state(load_config(run.config, run.options), run.out_dir)
    states = [(stage.name, *_folder_state(stage.cfg, stage.out_dir)) for stage in load_stages(run.config, run.options)]
    different = [f"stage {name}: {d}" for name, state, diffs in states if state == "different" for d in diffs]
    if different:
        return "different", different
    final = states[-1]
    if final[1] == "broken":
        return "broken", final[2]
    if all(state == "done" for _, state, _ in states):
        return "done", []
    if all(state == "todo" for _, state, _ in states):
        return "todo", []
    return "resume", [f"stage {name}: {state}" for name, state, _ in states]


def _folder_state(cfg: Any, out_dir: Path) -> tuple[str, list[str]]:
    """:func:`run_state` of one config's folder."""
    from omegaconf import OmegaConf

    from .engine.launch import task_for
    from .engine.rundir import CONFIG_FILE, holds_a_run, stored_differences

    task = task_for(cfg)
    if not holds_a_run(out_dir):
        return "todo", []
    stored_file = out_dir / CONFIG_FILE
    if not stored_file.is_file():
        return "different", [f"{stored_file} is missing (not a run of this version?)"]
    try:
        stored = task.entry.build(OmegaConf.create(read_json(stored_file, "stored run config"))).resolved_config()
    except MMLLMError as exc:
        return "different", [f"its {CONFIG_FILE} no longer parses: {exc}"]
    # against its resolved_config.json where the run stored one, else its config.json as resolved just now
    differences = stored_differences(out_dir, task.resolved_config(), lambda raw: stored)
    if differences:
        return "different", differences
    summary = out_dir / "summary.json"
    if not summary.is_file():
        return "resume", []
    problem = summary_problem(summary)
    return ("done", []) if problem is None else ("broken", [f"{summary}: {problem}"])


def summary_problem(summary: Path) -> str | None:
    """Why a run's ``summary.json`` is not a result the leaderboard can use (unreadable, not a JSON object,
    no training step, a NaN test metric: :func:`mmllm.leaderboard.collect` skips those), or None."""
    from .errors import DataError
    from .leaderboard import _read_summary

    try:
        _read_summary(summary)
    except DataError as exc:
        return str(exc)
    return None


def check_llm_sources(runs: list[SweepRun]) -> tuple[dict[str, tuple[str, list[SweepRun]]], list[str]]:
    """``({source: (why it cannot be read, the runs that read it)}, notes)`` for the LLM sources the runs'
    blocks read (``model.llm_block.source`` as each run's config resolves it, the kind's default included),
    found without loading any weights (:func:`mmllm.loading.locate_source`): an unknown name, a path that
    does not exist, a folder that holds no checkpoint. An embedded asset that is neither prepared nor
    installed here is a note (the machine that trains may have it)."""
    from omegaconf import DictConfig, OmegaConf

    from . import assets
    from .blocks.registry import parse_block_options
    from .engine.stages import load_run_config
    from .loading import locate_source

    readers: dict[str, list[SweepRun]] = {}
    for run in runs:
        block = OmegaConf.select(load_run_config(run.config, run.options), "model.llm_block", default=None)
        if not isinstance(block, DictConfig):
            continue
        container = cast(dict[str, Any], OmegaConf.to_container(block, resolve=True))  # a DictConfig: a dict
        options = {k: v for k, v in container.items() if k != "visual_dim"}
        try:
            parsed = parse_block_options(options, 1)  # the kind's own defaults (its source) filled in
        except ConfigError as exc:
            raise ConfigError(f"{run.task} {run.label} seed {run.seed}: model.llm_block: {exc}") from None
        source = getattr(parsed, "source", None)
        if source is not None:
            readers.setdefault(str(source), []).append(run)
    problems: dict[str, tuple[str, list[SweepRun]]] = {}
    notes: list[str] = []
    for source, users in readers.items():
        try:
            fmt, _ = locate_source(source)
        except MMLLMError as exc:
            problems[source] = (str(exc), users)
            continue
        asset = assets.ASSETS.get(source) if fmt == "asset" else None
        if asset is not None and asset.integrity() is None and not asset.installed():
            notes.append(
                f"LLM asset {source} is neither prepared nor installed here ({len(users)} run(s) read it); "
                f"install it with: {asset.pip}"
            )
    return problems, notes


def _root(spec: dict[str, Any], runs_dir: str | Path | None) -> Path:
    return Path(runs_dir or spec.get("runs_dir") or f"runs/sweep_{spec.get('name', 'unnamed')}")


def run_sweep(
    path: str | Path,
    runs_dir: str | None = None,
    dry_run: bool = False,
    keep_going: bool = False,
    mix_steps: bool = False,
    jobs: int = 1,
    readme: str | Path | None = None,
) -> Path:
    """Train every unfinished run of the sweep, then write the leaderboard and the report (RESULTS.md)."""
    from tqdm import tqdm

    spec = load_sweep(path)
    notes: list[str] = []
    runs = expand(spec, runs_dir, notes)
    root = _root(spec, runs_dir)
    states = {
        r: run_state(r)
        for r in tqdm(runs, desc="checking run folders", unit="run", leave=False, disable=len(runs) < 20)
    }
    bad_sources, source_notes = check_llm_sources(runs)  # before anything trains: every run's LLM is there
    count = {s: sum(1 for st, _ in states.values() if st == s) for s in STATES}
    print(
        f"sweep {spec.get('name', path)}: {len(runs)} runs -> {root}: "
        + ", ".join(f"{n} {s}" for s, n in count.items()),
        flush=True,
    )
    for note in [*notes, *source_notes]:
        print(f"note: {note}")
    different = [(r, diff) for r, (st, diff) in states.items() if st == "different"]
    unreadable = {r: source for source, (_, users) in bad_sources.items() for r in users}
    if dry_run:
        for r in runs:
            state, diff = states[r]
            print(f"[{state}] {r.task} {r.label} seed {r.seed}: {r.shown()}")
            if diff:
                print(f"    {'differs' if state == 'different' else state}: {'; '.join(diff[:6])}")
            if r in unreadable:
                print(f"    error: LLM source {unreadable[r]!r} cannot be read (below)")
    if bad_sources:
        listed = "\n".join(
            f"  {source!r} ({len(users)} run(s), e.g. {users[0].task} {users[0].label}): {why}"
            for source, (why, users) in bad_sources.items()
        )
        raise ConfigError(
            f"{len(bad_sources)} LLM source(s) of this sweep cannot be read (nothing was trained):\n"
            f"{listed}\nfix llms (or the variants' model.llm_block.source) in {path}"
        )
    if dry_run:
        return root
    if different:
        listed = "\n".join(f"  {r.out_dir}: {'; '.join(diff[:4])}" for r, diff in different[:10])
        raise ConfigError(
            f"{len(different)} run folder(s) hold a different run (nothing was trained):\n{listed}\n"
            "delete those folders, or give the sweep another runs_dir (--runs)"
        )
    for r in runs:  # a corrupt summary.json is kept aside, so the engine trains (or evaluates) the run again
        if states[r][0] == "broken":
            os.replace(r.out_dir / "summary.json", r.out_dir / "summary.json.broken")
            print(
                f"note: {r.out_dir / 'summary.json'} is no result ({'; '.join(states[r][1])}): moved to "
                "summary.json.broken, the run is re-run"
            )
    todo = [r for r in runs if states[r][0] in ("todo", "resume", "broken")]
    failed = _train_all(todo, spec, path, jobs, keep_going)
    report(path, runs_dir, mix_steps=mix_steps, readme=readme)
    if failed:
        raise ConfigError(f"{len(failed)} run(s) failed: {'; '.join(failed)}; re-run the sweep to retry them")
    return root


def start_run(command: list[str], log: Any = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """One training process (its own, so a crash or a leak ends with it); output to ``log`` when given."""
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT if log else None, env=env)


def job_environment(jobs: int) -> dict[str, str]:
    """The environment of each run: with ``jobs`` > 1 and no ``OMP_NUM_THREADS`` set, the cores are shared out
    (cores // jobs threads each). Measured on a 2-core CPU: two one-thread METER VQA runs side by side trained
    1.36x as many steps per second as one two-thread run (torch's small GEMMs scale poorly across threads)."""
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def _train_all(todo: list[SweepRun], spec: dict[str, Any], path: str | Path, jobs: int, keep_going: bool) -> list[str]:
    """Run ``todo``, ``jobs`` processes at a time (threads shared out: :func:`job_environment`). With more than one job a run's output goes to its ``train.log``. Returns the failures; without
    ``keep_going`` the first failure starts no further run and, once the running ones end, raises."""
    from tqdm import tqdm

    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    queue = list(todo)
    running: list[
        tuple[SweepRun, subprocess.Popen, float, dict[str, Any], Any]
    ] = []  # (run, process, start, label, log)
    failed: list[str] = []
    env = job_environment(jobs)
    bar = tqdm(total=len(todo), desc="sweep", unit="run")  # tqdm's ETA: mean time per finished run × those left
    while queue or running:
        while queue and len(running) < jobs and (keep_going or not failed):
            r = queue.pop(0)
            r.out_dir.mkdir(parents=True, exist_ok=True)
            label = {
                "task": r.task,
                "variant": r.label,
                "variant_name": r.variant,
                "llm": r.llm,
                "llm_source": r.llm_source,
                "seed": r.seed,
                "sweep": spec.get("name"),
                "sweep_file": str(path),
                "command": r.shown(),
                "jobs": jobs,
                "omp_num_threads": env.get("OMP_NUM_THREADS"),
            }
            write_json(r.out_dir / "sweep.json", label)
            log = open(r.out_dir / "train.log", "w") if jobs > 1 else None  # noqa: SIM115 - closed below
            process = start_run(r.command(), log, env)
            running.append((r, process, time.time(), label, log))
            bar.set_postfix_str(", ".join(f"{x.task} {x.label} s{x.seed}" for x, *_ in running))
        if not running:
            break
        time.sleep(0.2)
        for item in [x for x in running if x[1].poll() is not None]:
            running.remove(item)
            r, process, start, label, log = item
            if log:
                log.close()
            seconds = round(time.time() - start, 1)
            bar.update(1)
            if process.returncode != 0:
                failed.append(f"{r.out_dir} (exit {process.returncode} after {seconds:.0f} s; command: {r.shown()})")
                bar.write(
                    f"FAILED {r.out_dir} after {seconds:.0f} s" + (f" (log: {r.out_dir / 'train.log'})" if log else "")
                )
                continue
            write_json(r.out_dir / "sweep.json", {**label, "process_seconds": seconds})
            bar.write(f"finished {r.out_dir} in {seconds:.0f} s")
    bar.close()
    if failed and not keep_going:
        raise ConfigError(f"run failed: {failed[0]}; the sweep stopped (re-run it to resume)")
    return failed


# ---------------------------------------------------------------------- the generated report
def _fmt_seconds(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def render(path: str | Path, runs_dir: str | None = None, mix_steps: bool = False) -> tuple[str, list, list]:
    """(the report's markdown, the finished runs' leaderboard rows, their seed statistics), from the summaries
    under the sweep's folder alone: nothing is trained or written."""
    from . import leaderboard

    spec = load_sweep(path)
    root = _root(spec, runs_dir)
    notes: list[str] = []
    runs = expand(spec, runs_dir, notes)
    labels = {r.out_dir.relative_to(root).as_posix(): r.label for r in runs}
    found = leaderboard.collect(root)
    rows = [r for r in found if r["run"] in labels]
    # a stages run's earlier stages sit inside its folder (<run>/<stage>): part of the run, not another one
    others = sum(1 for r in found if r["run"] not in labels and not any(r["run"].startswith(f"{k}/") for k in labels))
    for row in rows:  # the group is the sweep's own label of the folder, whatever sweep.json says
        row["_meta"]["variant"] = labels[row["run"]]
    finished_runs = {row["run"] for row in rows}
    broken = {
        r.out_dir.relative_to(root).as_posix(): problem
        for r in runs
        if r.out_dir.relative_to(root).as_posix() not in finished_runs
        and (r.out_dir / "summary.json").is_file()
        and (problem := summary_problem(r.out_dir / "summary.json")) is not None
    }
    said = "; ".join(f"{root / k / 'summary.json'}: {why}" for k, why in list(broken.items())[:5])
    if not rows and broken:
        raise ConfigError(
            f"no usable run of this sweep under {root}: {len(broken)} run(s) have a broken summary.json "
            f"({said}); re-run them with `mmllm sweep {path}`"
        )
    if not rows:
        raise ConfigError(f"no finished run (summary.json) of this sweep under {root}: run `mmllm sweep {path}` first")
    refs = references(spec)
    stats = leaderboard.aggregate(rows, mix_steps=mix_steps, references=refs)
    finished = {r["run"] for r in rows}
    missing = [r for r in runs if r.out_dir.relative_to(root).as_posix() not in finished]
    summaries = [read_json(root / r["run"] / "summary.json", "summary") for r in rows]
    devices = sorted({str(s["device"]) for s in summaries if s.get("device")}) or ["not recorded"]
    precisions = sorted({str(s["precision"]) for s in summaries if s.get("precision")}) or ["not recorded"]
    train_seconds = sum(float(s.get("train_seconds") or 0) for s in summaries)
    process = [
        read_json(root / r["run"] / "sweep.json", "label").get("process_seconds")
        for r in rows
        if (root / r["run"] / "sweep.json").is_file()
    ]
    process_total = sum(p for p in process if isinstance(p, (int, float)))
    llms = _llms(spec)
    lines = [
        f"<!-- generated by `mmllm sweep {path} --report` from {root}/**/summary.json; do not edit by hand -->",
        "",
        f"**Sweep `{spec.get('name', Path(path).stem)}`** (`{path}`): {len(rows)} runs of {len(runs)}; seeds "
        f"{', '.join(map(str, spec['seeds']))}; LLMs: "
        + (", ".join(f"{k} = `{v}`" for k, v in llms.items()) or "the configs' own")
        + f"; device: {', '.join(devices)}; precision: {', '.join(precisions)}; training time "
        f"{_fmt_seconds(train_seconds)}"
        + (
            f", {_fmt_seconds(process_total)} with start-up and evaluation ({len(process)} runs timed)"
            if process
            else ""
        )
        + ".",
        "",
    ]
    if spec.get("description"):
        lines += [str(spec["description"]).strip(), ""]
    for task in dict.fromkeys(r["task"] for r in stats):
        task_stats = [r for r in stats if r["task"] == task]
        lines += leaderboard.aggregate_markdown(task_stats, heading="####"), ""
    lines += [leaderboard.METHOD_NOTE + ".", ""]
    shown_refs = {t: v for t, v in refs.items() if any(r["task"] == t for r in stats)}
    if shown_refs:
        lines += [
            "Where a task names its reference arm in the sweep file, Δ is the variant − that arm instead of no "
            "block: " + "; ".join(f"`{v}` in {t}" for t, v in shown_refs.items()) + ".",
            "",
        ]
    if missing:
        lines += [
            f"Not (yet) in this table: {len(missing)} run(s) of the sweep without a summary, e.g. "
            + ", ".join(f"`{m.out_dir.relative_to(root).as_posix()}`" for m in missing[:5])
            + ".",
            "",
        ]
    if broken:
        lines += [
            f"Broken: {len(broken)} run(s) whose summary.json is no result, left out (`mmllm sweep {path}` "
            "re-runs them): " + "; ".join(f"`{k}` ({why})" for k, why in list(broken.items())[:5]) + ".",
            "",
        ]
    if others:
        lines += [f"{others} other run(s) under `{root}` that this sweep file does not name were left out.", ""]
    lines += [
        f"Regenerate: `mmllm sweep {path} --report` (from the committed summaries); re-run: "
        f"`mmllm sweep {path}` (finished runs are skipped).",
        "",
    ]
    return "\n".join(lines), rows, stats


def readme_block(path: str | Path, kind: str = "results") -> tuple[str, str]:
    """The markers around a sweep's generated text in a page: its full ``results`` (docs/results.md) or its
    one-table ``summary`` (README.md)."""
    if kind == "summary":
        return f"<!-- summary of `mmllm sweep {path}` (generated) -->", "<!-- end of generated summary -->"
    return f"<!-- results of `mmllm sweep {path}` (generated) -->", "<!-- end of generated results -->"


def summary_text(path: str | Path, runs_dir: str | None = None, mix_steps: bool = False) -> str:
    """One table of the sweep's seed statistics, one row per task (the reference vs the frozen block with the
    sweep's first LLM, Δ with its 95% interval and the verdict), for a README: the full tables stay in the
    results page."""
    _, _, stats = render(path, runs_dir, mix_steps)
    return _summary(stats, path)


def summary_arm(path: str | Path) -> tuple[str, str]:
    """The arm a README's summary shows for every task, fixed before any number is read: the method
    (``frozen``) with the sweep's first LLM, not the best arm; and a sentence saying so."""
    spec = load_sweep(path)
    llms = spec.get("llms") or {}
    key = next(iter(llms), None)
    arm = "frozen" if key is None else f"frozen [{key}]"
    which = "" if key is None else f" with `{llms[key]}`, the sweep's first LLM"
    versus = "the task's reference arm" if references(spec) else "no block"
    return arm, (
        f"One row per task: mean ± std over seeds of the test metric, {versus} vs `{arm}` (the pretrained "
        f"LLM block, frozen{which}; the default, not the best arm), Δ paired by seed with its 95% Student-t "
        "interval. Every variant (other LLMs, the paper's controls) is in docs/results.md."
    )


def _summary(stats: list[dict[str, Any]], path: str | Path) -> str:
    from . import leaderboard

    arm, note = summary_arm(path)
    return leaderboard.summary_markdown(stats, f"`mmllm sweep {path} --report --summary README.md`", arm, note)


def update_readme(readme: str | Path, path: str | Path, text: str, kind: str = "results") -> None:
    """Replace what stands between the sweep's markers in ``readme`` with ``text`` (atomically)."""
    from .jsonio import atomic_write_text

    readme = Path(readme)
    content = readme.read_text(encoding="utf-8")
    begin, end = readme_block(path, kind)
    start = content.find(begin)
    stop = content.find(end, start + len(begin)) if start >= 0 else -1
    if start < 0 or stop < 0:
        raise ConfigError(
            f"{readme} has no block for this sweep: put the two lines\n{begin}\n{end}\nwhere its results belong"
        )
    atomic_write_text(readme, content[: start + len(begin)] + "\n" + text.rstrip("\n") + "\n" + content[stop:])


def readme_text(readme: str | Path, path: str | Path, kind: str = "results") -> str | None:
    """What stands between the sweep's markers in ``readme`` (None: no block)."""
    content = Path(readme).read_text(encoding="utf-8")
    begin, end = readme_block(path, kind)
    start = content.find(begin)
    stop = content.find(end, start + len(begin)) if start >= 0 else -1
    return None if start < 0 or stop < 0 else content[start + len(begin) : stop].strip("\n")


def report(
    path: str | Path,
    runs_dir: str | None = None,
    mix_steps: bool = False,
    readme: str | Path | None = None,
    summary: str | Path | None = None,
) -> Path:
    """Leaderboard files (tables, CSV, bar plots, loss curves) and ``RESULTS.md`` from the summaries under the
    sweep's folder (no training: committed ``summary.json`` files regenerate the tables in docs/results.md); with
    ``readme``, the sweep's block in that file too; with ``summary``, its one-table summary block there."""
    from . import leaderboard
    from .jsonio import atomic_write_text

    text, rows, stats = render(path, runs_dir, mix_steps)
    spec = load_sweep(path)
    root = _root(spec, runs_dir)
    where = Path(spec.get("report_dir") or root)
    leaderboard.write(rows, where)
    leaderboard.write_aggregate(stats, where)
    leaderboard.plot_loss_curves(rows, root, where / "loss_curves.png")
    out = where / "RESULTS.md"
    atomic_write_text(out, text)
    if readme is not None:
        update_readme(readme, path, text)
    if summary is not None:
        update_readme(summary, path, _summary(stats, path), kind="summary")
    print(text)
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sweep", help="task × variant × LLM × seed from a YAML sweep file (resumable)")
    parser.add_argument("file", help="sweep YAML (configs/sweeps/*.yaml)")
    parser.add_argument("--runs", default=None, help="override runs_dir")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state, train nothing")
    parser.add_argument(
        "--report",
        action="store_true",
        help="train nothing: regenerate the leaderboard and RESULTS.md from the summaries",
    )
    parser.add_argument("--keep-going", action="store_true", help="run the others when a run fails")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time, each its own process (unless OMP_NUM_THREADS is set, each gets cores // jobs threads)",
    )
    parser.add_argument(
        "--mix-steps", action="store_true", help="average runs of different step counts / max_eval_samples anyway"
    )
    parser.add_argument(
        "--readme",
        default=None,
        help="also write the results into this file, between the sweep's markers (docs/results.md)",
    )
    parser.add_argument(
        "--summary",
        default=None,
        help="with --report: also write a one-table summary into this file, between the sweep's "
        "summary markers (README.md)",
    )

    def _main(args: argparse.Namespace) -> int:
        if args.report:
            report(args.file, args.runs, mix_steps=args.mix_steps, readme=args.readme, summary=args.summary)
        else:
            run_sweep(args.file, args.runs, args.dry_run, args.keep_going, args.mix_steps, args.jobs, args.readme)
        return 0

    parser.set_defaults(func=_main)
