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
        rows.append({"run": summary.parent.name, "task": data.get("task", "?"), "llm_block": _block_label(data.get("llm_block")),
                     "steps": data.get("steps"), **metrics})
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
