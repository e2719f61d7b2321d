"""Gather finished runs (their ``summary.json``) into a leaderboard: markdown, CSV and a bar plot.

Rows come from any task (VQA accuracy, retrieval recall, ...): every ``test_*`` metric
becomes a column, so one table compares runs with and without the frozen LLM block.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

from .errors import DataError
from .jsonio import atomic_write_text

log = logging.getLogger(__name__)

HEADLINE = ("accuracy", "r_mean", "em1")  # shown first


def _block_label(block: Any) -> str:
    if not block or block.get("kind", "llm_block") == "none":
        return "none"
    if block.get("kind") == "mlp":
        return "mlp (control)"
    label = f"{block.get('source', '?')}[{block.get('layers', 'last')}]"
    controls = {
        "llm_block_finetuned": " fine-tuned",
        "random_trained": " random-init trained",
        "random_frozen": " random-init frozen",
    }
    return label + controls.get(
        block.get("kind", "llm_block"), "" if block.get("kind", "llm_block") == "llm_block" else f" ({block['kind']})"
    )


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
        if key.startswith("test_") and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
        ):
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
        metrics = {k[len("test_") :]: v for k, v in data.items() if k.startswith("test_")}
        metrics = dict(sorted(metrics.items(), key=lambda kv: (kv[0] not in HEADLINE, kv[0])))
        rows.append(
            {
                "run": summary.parent.relative_to(runs_dir).as_posix(),
                "task": data.get("task", "?"),
                "llm_block": _block_label(data.get("llm_block")),
                "steps": data.get("steps"),
                **metrics,
            }
        )
        # what seed statistics group on (not table columns): the variant a sweep names, else the block
        sweep = _read_sweep_label(summary.parent / "sweep.json")
        rows[-1]["_meta"] = {
            "seed": data.get("seed"),
            "variant": sweep.get("variant") or data.get("variant") or rows[-1]["llm_block"],
            "max_eval_samples": data.get("max_eval_samples"),
            "trainable_params": data.get("trainable_params"),
            "seconds_per_step": data.get("seconds_per_step"),
        }
    if summaries and not rows:
        log.warning(
            "leaderboard: all %d summary.json file(s) under %s were skipped, no run to list", len(summaries), runs_dir
        )
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
        log.warning(
            "leaderboard: no run has the metric %r, no plot written (metrics: %s)",
            plot_metric,
            sorted({k for r in rows for k in r} - {"run", "task", "llm_block", "steps"}),
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{k: v for k, v in r.items() if k != "_meta"} for r in rows]
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "leaderboard.csv", buffer.getvalue())
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
    atomic_write_text(out / "leaderboard.md", "\n".join(lines))
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


def reference_label(reference: str) -> str:
    """How tables and verdicts name what a task's variants are compared with."""
    return "no block" if reference == BASELINE else f"`{reference}`"


def _budget(row: dict[str, Any]) -> tuple[Any, Any]:
    return row["steps"], row.get("_meta", {}).get("max_eval_samples")


def aggregate(
    rows: list[dict[str, Any]], mix_steps: bool = False, references: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """One row per task × variant: mean ± sample std of the task's main metric over seeds, and the paired
    difference to the task's reference variant with a 95% t interval (:mod:`mmllm.stats`). The reference is
    the no-block variant unless ``references`` names another for the task: a task whose every arm holds an
    LLM (LLaVA vs LLaViT) has no no-block arm, and "what does each change add" is a difference to its base.

    Runs of one group must agree on steps and ``max_eval_samples`` (a 20-step smoke run averaged with a
    400-step run is not a result), and a variant is compared with the no-block runs only at the same budget,
    unless ``mix_steps``; two runs of one group with the same seed are an error (a duplicated input, not a
    second sample)."""
    from .stats import mean_std, paired_difference

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        meta = row.get("_meta", {})
        groups.setdefault((row["task"], meta.get("variant", row["llm_block"])), []).append(row)
    by_seed: dict[tuple[str, str], dict[int, float]] = {}
    out: list[dict[str, Any]] = []
    for (task, variant), members in groups.items():
        metric, higher = main_metric(task, members)
        members = [r for r in members if metric in r]
        if metric is None or not members:
            continue
        budgets = {_budget(r) for r in members}
        if len(budgets) > 1 and not mix_steps:
            raise DataError(
                f"{task} / {variant}: runs of different (steps, max_eval_samples) {sorted(budgets, key=str)} "
                f"({', '.join(r['run'] for r in members)}); pass --mix-steps to average them anyway"
            )
        seeds: dict[int, float] = {}
        for r in members:
            seed = r.get("_meta", {}).get("seed")
            if seed in seeds:
                raise DataError(
                    f"{task} / {variant}: two runs with seed {seed} (one is {r['run']}): a duplicate, "
                    "not a second sample"
                )
            seeds[seed] = r[metric]
        by_seed[(task, variant)] = seeds
        mean, sd, n = mean_std(list(seeds.values()))
        params = sorted(
            {
                r["_meta"]["trainable_params"]
                for r in members
                if isinstance(r.get("_meta", {}).get("trainable_params"), int)
            }
        )
        timed = [
            r["_meta"]["seconds_per_step"]
            for r in members
            if isinstance(r.get("_meta", {}).get("seconds_per_step"), (int, float))
        ]
        out.append(
            {
                "task": task,
                "variant": variant,
                "metric": metric,
                "higher_is_better": higher,
                "n": n,
                "mean": mean,
                "std": sd,
                "seeds": sorted(seeds, key=str),
                "trainable_params": params[0] if len(params) == 1 else (params or None),
                "seconds_per_step": sum(timed) / len(timed) if timed else None,
                "steps": sorted({r["steps"] for r in members}),
                "max_eval_samples": sorted({_budget(r)[1] for r in members}, key=str),
                "_budgets": budgets,
            }
        )
    ref_of = {r["task"]: (references or {}).get(r["task"], BASELINE) for r in out}
    out.sort(key=lambda r: (r["task"], r["variant"] != ref_of[r["task"]]))  # stable: the reference first in each task
    baselines = {r["task"]: r for r in out if r["variant"] == ref_of[r["task"]]}
    for row in out:
        ref = ref_of[row["task"]]
        label = reference_label(ref)
        base = by_seed.get((row["task"], ref))
        row.update({"diff": None, "low": None, "high": None, "n_paired": 0, "verdict": "", "reference": ref})
        if row["variant"] == ref:
            continue
        if base is None:
            row["verdict"] = (
                "no no-block runs to compare with"
                if ref == BASELINE
                else f"no runs of the reference {label} to compare with"
            )
            continue
        if row["_budgets"] != baselines[row["task"]]["_budgets"] and not mix_steps:
            row["verdict"] = (
                f"not compared: budget {sorted(row['_budgets'], key=str)} differs from {label}'s "
                f"{sorted(baselines[row['task']]['_budgets'], key=str)} (--mix-steps to compare)"
            )
            continue
        shared = {k: v for k, v in by_seed[(row["task"], row["variant"])].items() if k in base}
        if not shared:
            row["verdict"] = f"no seed shared with the {label} runs"
            continue
        row.update(paired_difference(shared, base))
        if row["low"] is None:
            row["verdict"] = "one paired seed: no interval"
        elif row["low"] > 0 or row["high"] < 0:
            better = (row["low"] > 0) == row["higher_is_better"]
            row["verdict"] = f"better than {label}" if better else f"worse than {label}"
        else:
            row["verdict"] = "no clear difference"
    for row in out:
        del row["_budgets"]
    return out


METHOD_NOTE = (
    "mean ± sample std (n − 1) over seeds; Δ = variant − no block, paired by seed (the seeds both arms "
    "ran), with a 95% Student-t interval on the per-seed differences: mean ± t(0.975, n−1)·sd/√n "
    "(t from scipy.stats.t, or a table when scipy is absent); 'better'/'worse' only when the interval "
    "excludes 0, in the metric's direction (↑ higher / ↓ lower is better)"
)


def aggregate_markdown(rows: list[dict[str, Any]], heading: str = "###") -> str:
    """The markdown table of one task's aggregated rows (a heading naming the metric and its direction)."""
    fmt = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
    arrow = "↑" if rows[0]["higher_is_better"] else "↓"
    versus = reference_label(rows[0].get("reference", BASELINE))
    lines = [
        f"{heading} {rows[0]['task']} — test {rows[0]['metric']} {arrow}",
        "",
        f"| variant | n | mean ± std | Δ vs {versus} [95% CI] | verdict | steps | trainable params | s/step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        spread = f"{fmt(r['mean'])} ± {fmt(r['std'])}" if r["std"] is not None else fmt(r["mean"])
        delta = (
            ""
            if r["diff"] is None
            else (
                f"{r['diff']:+.2f} [{fmt(r['low'])}, {fmt(r['high'])}]" if r["low"] is not None else f"{r['diff']:+.2f}"
            )
        )
        seconds = "" if r.get("seconds_per_step") is None else f"{r['seconds_per_step']:.2f}"
        lines.append(
            f"| {r['variant']} | {r['n']} | {spread} | {delta} | {r['verdict']} | "
            f"{', '.join(map(str, r['steps']))} | {_params(r.get('trainable_params'))} | {seconds} |"
        )
    return "\n".join(lines)


def summary_markdown(stats: list[dict[str, Any]], command: str, arm: str, note: str = "") -> str:
    """One row per task (task, metric and direction, the reference's and ``arm``'s mean ± std, seeds, ``arm``'s
    Δ vs the reference [95% CI] and verdict): the short form a README carries, written by ``command``. ``arm`` is
    chosen by the caller before any number is seen (the method with the default LLM, not the best arm); a task
    without it says so instead of showing another arm."""
    fmt = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
    spread = lambda r: f"{fmt(r['mean'])} ± {fmt(r['std'])}" if r["std"] is not None else fmt(r["mean"])  # noqa: E731
    tasks = list(dict.fromkeys(r["task"] for r in stats))
    refs = {r.get("reference", BASELINE) for r in stats}
    head = "no block" if refs <= {BASELINE} else "reference"
    lines = [f"<!-- generated by {command} from the committed summaries; do not edit by hand -->", ""]
    if note:
        lines += [note, ""]
    lines += [f"| task | metric | {head} | `{arm}` | seeds | Δ [95% CI] | verdict |", "|---|---|---|---|---|---|---|"]
    for task in tasks:
        rows = [r for r in stats if r["task"] == task]
        first = rows[0]
        arrow = "↑" if first["higher_is_better"] else "↓"
        ref_name = first.get("reference", BASELINE)
        ref = next((r for r in rows if r["variant"] == ref_name), None)
        ref_cell = "no runs" if ref is None else spread(ref)
        if head != "no block":
            ref_cell = f"{ref_cell} ({reference_label(ref_name)})"
        row = next((r for r in rows if r["variant"] == arm), None)
        if row is None:
            lines.append(f"| {task} | {first['metric']} {arrow} | {ref_cell} | not run |  |  | no `{arm}` runs |")
            continue
        seeds = str(row["n"]) if ref is None or ref["n"] == row["n"] else f"{ref['n']} / {row['n']}"
        delta = (
            ""
            if row["diff"] is None
            else (
                f"{row['diff']:+.2f} [{fmt(row['low'])}, {fmt(row['high'])}]"
                if row["low"] is not None
                else f"{row['diff']:+.2f}"
            )
        )
        lines.append(
            f"| {task} | {first['metric']} {arrow} | {ref_cell} | {spread(row)} | {seeds} | {delta} | "
            f"{row['verdict']} |"
        )
    return "\n".join(lines)


def _params(value: Any) -> str:
    """2,374,656 -> "2.37 M"; runs of one group that disagree show their range."""
    if value is None:
        return ""
    if isinstance(value, list):
        return f"{_params(value[0])} – {_params(value[-1])}"
    return f"{value / 1e6:.2f} M" if value >= 1e5 else f"{value:,}"


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def write_aggregate(stats: list[dict[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """leaderboard_mean.md (one table per task, the method stated under it), .csv, and per task
    leaderboard_mean_<task>.png (bars: mean ± std; beside them Δ vs the reference with its 95% interval)."""
    if not stats:
        raise DataError("no group to aggregate")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = list(dict.fromkeys(r["task"] for r in stats))
    lines: list[str] = []
    for task in tasks:
        lines += [aggregate_markdown([r for r in stats if r["task"] == task]), "", METHOD_NOTE, ""]
    atomic_write_text(out / "leaderboard_mean.md", "\n".join(lines))
    keys = [
        "task",
        "variant",
        "metric",
        "higher_is_better",
        "n",
        "mean",
        "std",
        "reference",
        "diff",
        "low",
        "high",
        "n_paired",
        "verdict",
        "seeds",
        "steps",
        "max_eval_samples",
        "trainable_params",
        "seconds_per_step",
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: r[k] for k in keys} for r in stats)
    atomic_write_text(out / "leaderboard_mean.csv", buffer.getvalue())
    paths = {"mean_markdown": out / "leaderboard_mean.md", "mean_csv": out / "leaderboard_mean.csv"}
    for task in tasks:
        paths[f"mean_plot_{task}"] = _plot_task(
            task, [r for r in stats if r["task"] == task], out / f"leaderboard_mean_{_safe_name(task)}.png"
        )
    return paths


def _plot_task(task: str, rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r['variant']}\n(n={r['n']})" for r in rows]
    ref = rows[0].get("reference", BASELINE)
    versus = reference_label(ref).strip("`")
    better = "higher" if rows[0]["higher_is_better"] else "lower"
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(6.0, 1.3 * len(rows) + 3), 4.0))
    left.bar(
        range(len(rows)),
        [r["mean"] for r in rows],
        yerr=[r["std"] or 0.0 for r in rows],
        capsize=3,
        color=["#999999" if r["variant"] == ref else "#4c72b0" for r in rows],
    )
    left.set_xticks(range(len(rows)), names, fontsize=6, rotation=25)
    left.set_ylabel(f"test {rows[0]['metric']} ({better} is better)\nmean ± sample std over seeds", fontsize=7)
    left.set_title(task, fontsize=9)
    compared = [r for r in rows if r["diff"] is not None]
    colours = {"better": "#2ca02c", "worse": "#d62728"}
    for i, r in enumerate(compared):
        err = None if r["low"] is None else [[r["diff"] - r["low"]], [r["high"] - r["diff"]]]
        right.errorbar(
            [i], [r["diff"]], yerr=err, fmt="o", capsize=4, color=colours.get(r["verdict"].split(" ")[0], "#4c72b0")
        )
    right.axhline(0.0, color="#999999", linewidth=1)
    right.set_xticks(
        range(len(compared)), [f"{r['variant']}\n(n={r['n_paired']})" for r in compared], fontsize=6, rotation=25
    )
    right.set_xlim(-0.7, max(len(compared), 1) - 0.3)
    right.set_ylabel(f"Δ vs {versus}, paired by seed\n95% t interval", fontsize=7)
    right.set_title(f"{task}: difference to {versus}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _train_losses(log_file: Path) -> tuple[list[int], list[float]]:
    steps, losses = [], []
    for line in log_file.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        loss = rec.get("loss")
        if (
            isinstance(rec, dict)
            and rec.get("split") == "train"
            and isinstance(loss, (int, float))
            and math.isfinite(loss)
            and isinstance(rec.get("step"), int)
        ):
            steps.append(rec["step"])
            losses.append(float(loss))
    return steps, losses


def plot_loss_curves(rows: list[dict[str, Any]], runs_dir: str | Path, path: str | Path) -> Path | None:
    """Training loss against step of every listed run (its ``metrics.jsonl``, the trainer's ``split: train``
    records), one panel per task, one colour per variant (each seed a line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, dict[str, list[tuple[list[int], list[float]]]]] = {}
    for row in rows:
        log_file = Path(runs_dir) / row["run"] / "metrics.jsonl"
        if not log_file.is_file():
            continue
        steps, losses = _train_losses(log_file)
        if steps:
            variant = row.get("_meta", {}).get("variant", row["llm_block"])
            curves.setdefault(row["task"], {}).setdefault(variant, []).append((steps, losses))
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(curves), figsize=(max(4.5, 4.5 * len(curves)), 3.6), squeeze=False)
    for ax, (task, variants) in zip(axes[0], curves.items()):
        for i, (variant, lines) in enumerate(variants.items()):
            colour = plt.get_cmap("tab10")(i % 10)
            for j, (steps, losses) in enumerate(lines):
                ax.plot(
                    steps,
                    losses,
                    color=colour,
                    linewidth=0.9,
                    alpha=0.8,
                    label=f"{variant} ({len(lines)} run{'s' if len(lines) > 1 else ''})" if j == 0 else None,
                )
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("training loss", fontsize=8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def make(
    runs_dir: str | Path, out_dir: str | Path | None = None, plot_metric: str | None = None, mix_steps: bool = False
) -> dict[str, Path]:
    """The leaderboard of the finished runs under ``runs_dir``, written to ``out_dir`` (default: ``runs_dir``):
    the per-run table (markdown, CSV, bar plot), the seed statistics and the loss curves; the paths by name
    (``markdown``, ``mean_markdown``, ...). What ``mmllm leaderboard`` and ``mmllm main`` call.
    DataError when no run finished, or when the seed statistics cannot be made (the per-run table is
    written first)."""
    rows = collect(runs_dir)
    if not rows:
        raise DataError(f"no finished run (summary.json) under {runs_dir}")
    out = Path(out_dir if out_dir is not None else runs_dir)
    paths = write(rows, out, plot_metric)
    try:
        paths.update(write_aggregate(aggregate(rows, mix_steps=mix_steps), out))
    except DataError as exc:
        raise DataError(f"no seed statistics: {exc} (the per-run table is in {paths['markdown']})") from exc
    curves = plot_loss_curves(rows, runs_dir, out / "loss_curves.png")
    if curves:
        paths["loss_curves"] = curves
    return paths
