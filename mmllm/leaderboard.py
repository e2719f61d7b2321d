"""Gather finished runs (their ``summary.json``) into a leaderboard: markdown, CSV and a bar plot.

Rows come from any task (VQA accuracy, retrieval recall, ...): every ``test_*`` metric
becomes a column, so one table compares runs with and without the frozen LLM block.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

from .errors import DataError

log = logging.getLogger(__name__)

HEADLINE = ("accuracy", "r_mean", "em1")  # shown first


def _block_label(block: Any) -> str:
    if not block or block.get("kind", "llm_block") == "none":
        return "none"
    if block.get("kind") == "mlp":
        return "mlp (control)"
    label = f"{block.get('source', '?')}[{block.get('layers', 'last')}]"
    controls = {"llm_block_finetuned": " fine-tuned", "random_trained": " random-init trained",
                "random_frozen": " random-init frozen"}
    return label + controls.get(block.get("kind", "llm_block"), "" if block.get("kind", "llm_block") == "llm_block"
                                else f" ({block['kind']})")


def _read_summary(path: Path) -> dict[str, Any]:
    """A finished run's summary, or DataError saying why it is not a result."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"unreadable or malformed JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DataError(f"expected a JSON object, got {type(data).__name__}")
    steps = data.get("steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
        raise DataError(f"steps is {steps!r}: a run that took no training step is not a result")
    for key, value in data.items():
        if key.startswith("test_") and (isinstance(value, bool) or not isinstance(value, (int, float))
                                        or not math.isfinite(value)):
            raise DataError(f"{key} is {value!r}, not a finite number")
    if data.get("llm_block") is not None and not isinstance(data["llm_block"], dict):
        raise DataError(f"llm_block is {data['llm_block']!r}, expected an object")
    return data


def _read_sweep_label(path: Path) -> dict[str, Any]:
    """The label ``mmllm sweep`` leaves beside a run (its variant name), or {} for runs made otherwise."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("leaderboard: ignoring unreadable %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def collect(runs_dir: str | Path) -> list[dict[str, Any]]:
    """One row per usable ``summary.json`` under ``runs_dir``; unusable ones (corrupt, 0 steps, NaN/inf
    metrics) are skipped with a warning naming the file, so one bad run does not hide the others."""
    rows = []
    summaries = sorted(Path(runs_dir).glob("**/summary.json"))
    for summary in summaries:
        try:
            data = _read_summary(summary)
        except DataError as exc:
            log.warning("leaderboard: skipping %s: %s", summary, exc)
            continue
        metrics = {k[len("test_"):]: v for k, v in data.items() if k.startswith("test_")}
        metrics = dict(sorted(metrics.items(), key=lambda kv: (kv[0] not in HEADLINE, kv[0])))
        rows.append({"run": summary.parent.relative_to(runs_dir).as_posix(), "task": data.get("task", "?"), "llm_block": _block_label(data.get("llm_block")),
                     "steps": data.get("steps"), **metrics})
        # what seed statistics group on (not table columns): the variant a sweep names, else the block
        sweep = _read_sweep_label(summary.parent / "sweep.json")
        rows[-1]["_meta"] = {"seed": data.get("seed"),
                             "variant": sweep.get("variant") or data.get("variant") or rows[-1]["llm_block"],
                             "max_eval_samples": data.get("max_eval_samples")}
    if summaries and not rows:
        log.warning("leaderboard: all %d summary.json file(s) under %s were skipped, no run to list",
                    len(summaries), runs_dir)
    return rows


def main_metric(task: str, rows: list[dict[str, Any]]) -> tuple[str | None, bool]:
    """(metric, higher_is_better) of a task: from the task registry, else the first headline metric present."""
    from .engine.registry import entry_for_metric_row

    entry = entry_for_metric_row(task)
    if entry is not None:
        return entry.metric, entry.higher_is_better
    return next((c for c in HEADLINE if any(c in r for r in rows)), None), True


def _markdown(rows: list[dict[str, Any]], metric: str | None, higher: bool) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    if metric in columns:  # the task's main metric right after the identifying columns
        columns.remove(metric)
        columns.insert(4, metric)
    arrow = {metric: f"{metric} {'↑' if higher else '↓'}"} if metric else {}
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(arrow.get(c, c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return lines


def write(rows: list[dict[str, Any]], out_dir: str | Path, plot_metric: str | None = None) -> dict[str, Path]:
    """leaderboard.md (one table per task, its main metric marked ↑ higher / ↓ lower is better),
    leaderboard.csv (every row) and leaderboard.png (one panel per task) in ``out_dir``."""
    if not rows:
        raise DataError("no run to write a leaderboard for")
    if plot_metric and not any(plot_metric in r for r in rows):
        log.warning("leaderboard: no run has the metric %r, no plot written (metrics: %s)", plot_metric,
                    sorted({k for r in rows for k in r} - {"run", "task", "llm_block", "steps"}))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{k: v for k, v in r.items() if k != "_meta"} for r in rows]
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(out / "leaderboard.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    by_task: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_task.setdefault(row["task"], []).append(row)
    lines: list[str] = []
    panels = []
    for task, task_rows in by_task.items():
        metric, higher = main_metric(task, task_rows)
        if plot_metric:
            metric = plot_metric
        lines += [f"### {task}", "", *_markdown(task_rows, metric, higher), ""]
        shown = [r for r in task_rows if metric and metric in r]
        if shown:
            panels.append((task, metric, higher, shown))
    (out / "leaderboard.md").write_text("\n".join(lines))
    paths = {"markdown": out / "leaderboard.md", "csv": out / "leaderboard.csv"}
    if panels:
        paths["plot"] = _plot(panels, out / "leaderboard.png")
    return paths


def _plot(panels, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = max(4.0, sum(1.2 * len(shown) for *_, shown in panels))
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 3.8), squeeze=False)
    for ax, (task, metric, higher, shown) in zip(axes[0], panels):
        ax.bar([f"{r['run']}\n{r['llm_block']}" for r in shown], [r[metric] for r in shown], color="#4c72b0")
        for i, r in enumerate(shown):
            ax.text(i, r[metric], f"{r[metric]:.2f}", ha="center", va="bottom", fontsize=8)
        ax.set_title(task, fontsize=9)
        ax.set_ylabel(f"test {metric} ({'higher' if higher else 'lower'} is better)", fontsize=8)
        ax.tick_params(axis="x", labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- seed statistics
BASELINE = "none"  # the no-block variant every other variant of a task is compared with


def aggregate(rows: list[dict[str, Any]], mix_steps: bool = False) -> list[dict[str, Any]]:
    """One row per task × variant: mean ± sample std of the task's main metric over seeds, and the paired
    difference to the task's no-block variant with a 95% t interval (:mod:`mmllm.stats`).

    Runs of one group must agree on steps and ``max_eval_samples`` (a 20-step smoke run averaged with a
    400-step run is not a result) unless ``mix_steps``; two runs of one group with the same seed are an
    error (a duplicated input, not a second sample)."""
    from .stats import mean_std, paired_difference

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        meta = row.get("_meta", {})
        groups.setdefault((row["task"], meta.get("variant", row["llm_block"])), []).append(row)
    by_seed: dict[tuple[str, str], dict[int, float]] = {}
    out = []
    for (task, variant), members in groups.items():
        metric, higher = main_metric(task, members)
        members = [r for r in members if metric in r]
        if not members:
            continue
        budgets = {(r["steps"], r.get("_meta", {}).get("max_eval_samples")) for r in members}
        if len(budgets) > 1 and not mix_steps:
            raise DataError(f"{task} / {variant}: runs of different (steps, max_eval_samples) {sorted(budgets, key=str)} "
                            f"({', '.join(r['run'] for r in members)}); pass --mix-steps to average them anyway")
        seeds: dict[int, float] = {}
        for r in members:
            seed = r.get("_meta", {}).get("seed")
            if seed in seeds:
                raise DataError(f"{task} / {variant}: two runs with seed {seed} (one is {r['run']}): a duplicate, "
                                "not a second sample")
            seeds[seed] = r[metric]
        by_seed[(task, variant)] = seeds
        mean, sd, n = mean_std(list(seeds.values()))
        out.append({"task": task, "variant": variant, "metric": metric, "higher_is_better": higher, "n": n,
                    "mean": mean, "std": sd, "seeds": sorted(seeds, key=str),
                    "steps": sorted({r["steps"] for r in members})})
    out.sort(key=lambda r: (r["task"], r["variant"] != BASELINE))  # stable: the baseline first in each task
    for row in out:
        base = by_seed.get((row["task"], BASELINE))
        row.update({"diff": None, "low": None, "high": None, "n_paired": 0, "verdict": ""})
        if base is None or row["variant"] == BASELINE:
            continue
        shared = {k: v for k, v in by_seed[(row["task"], row["variant"])].items() if k in base}
        if not shared:
            row["verdict"] = "no seed shared with the no-block runs"
            continue
        row.update(paired_difference(shared, base))
        if row["low"] is None:
            row["verdict"] = "one paired seed: no interval"
        elif row["low"] > 0 or row["high"] < 0:
            better = (row["low"] > 0) == row["higher_is_better"]
            row["verdict"] = "better than no block" if better else "worse than no block"
        else:
            row["verdict"] = "no clear difference"
    return out


METHOD_NOTE = ("mean ± sample std over seeds; Δ = variant − no block, paired by seed, with a 95% Student-t interval "
               "(mean ± t(0.975, n−1)·sd/√n of the per-seed differences); 'better'/'worse' only when the interval "
               "excludes 0, in the metric's direction (↑ higher / ↓ lower is better)")


def write_aggregate(stats: list[dict[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """leaderboard_mean.md (one table per task, the method stated under it), .csv and .png (bars ± std)."""
    if not stats:
        raise DataError("no group to aggregate")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fmt = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
    lines: list[str] = []
    for task in dict.fromkeys(r["task"] for r in stats):
        rows = [r for r in stats if r["task"] == task]
        arrow = "↑" if rows[0]["higher_is_better"] else "↓"
        lines += [f"### {task} — {rows[0]['metric']} {arrow}", "",
                  "| variant | n | mean ± std | Δ vs no block [95% CI] | verdict | steps |", "|---|---|---|---|---|---|"]
        for r in rows:
            spread = f"{fmt(r['mean'])} ± {fmt(r['std'])}" if r["std"] is not None else fmt(r["mean"])
            delta = "" if r["diff"] is None else (f"{r['diff']:+.2f} [{fmt(r['low'])}, {fmt(r['high'])}]"
                                                  if r["low"] is not None else f"{r['diff']:+.2f}")
            lines.append(f"| {r['variant']} | {r['n']} | {spread} | {delta} | {r['verdict']} | "
                         f"{', '.join(map(str, r['steps']))} |")
        lines += ["", METHOD_NOTE, ""]
    (out / "leaderboard_mean.md").write_text("\n".join(lines))
    keys = ["task", "variant", "metric", "higher_is_better", "n", "mean", "std", "diff", "low", "high", "n_paired",
            "verdict", "seeds", "steps"]
    with open(out / "leaderboard_mean.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows({k: r[k] for k in keys} for r in stats)
    paths = {"mean_markdown": out / "leaderboard_mean.md", "mean_csv": out / "leaderboard_mean.csv"}
    paths["mean_plot"] = _plot_aggregate(stats, out / "leaderboard_mean.png")
    return paths


def _plot_aggregate(stats: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in stats))
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(4.0, 3.2 * len(tasks)), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        rows = [r for r in stats if r["task"] == task]
        ax.bar(range(len(rows)), [r["mean"] for r in rows], yerr=[r["std"] or 0.0 for r in rows], capsize=3,
               color=["#999999" if r["variant"] == BASELINE else "#4c72b0" for r in rows])
        ax.set_xticks(range(len(rows)), [f"{r['variant']}\n(n={r['n']})" for r in rows], fontsize=6, rotation=20)
        better = "higher" if rows[0]["higher_is_better"] else "lower"
        ax.set_title(task, fontsize=9)
        ax.set_ylabel(f"test {rows[0]['metric']} ({better} is better), mean ± std", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_loss_curves(rows: list[dict[str, Any]], runs_dir: str | Path, path: str | Path) -> Path | None:
    """Training loss against step of every listed run (from its ``metrics.jsonl``), one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, list[tuple[str, list[int], list[float]]]] = {}
    for summary in sorted(Path(runs_dir).glob("**/summary.json")):
        name = summary.parent.relative_to(runs_dir).as_posix()
        match = [r for r in rows if r["run"] == name]
        log_file = summary.parent / "metrics.jsonl"
        if not match or not log_file.is_file():
            continue
        steps, losses = [], []
        for line in log_file.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("split") == "train" and isinstance(rec.get("loss"), (int, float)):
                steps.append(rec["step"])
                losses.append(rec["loss"])
        if steps:
            curves.setdefault(match[0]["task"], []).append((name, steps, losses))
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(max(4.0, 4.0 * len(curves)), 3.5), squeeze=False)
    for ax, (task, lines) in zip(axes[0], curves.items()):
        for label, steps, losses in lines:
            ax.plot(steps, losses, label=label, linewidth=1)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("training loss", fontsize=8)
        ax.legend(fontsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
