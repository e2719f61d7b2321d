"""Gather finished runs (their ``summary.json``) into a leaderboard: markdown, CSV and a bar plot.

Rows come from any task (VQA accuracy, retrieval recall, ...): every ``test_*`` metric
becomes a column, so one table compares runs with and without the frozen LLM block.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


HEADLINE = ("accuracy", "r_mean", "em1")  # shown first


def _block_label(block: Any) -> str:
    if not block or block.get("kind", "llm_block") == "none":
        return "none"
    if block.get("kind") == "mlp":
        return "mlp (control)"
    label = f"{block.get('source', '?')}[{block.get('layers', 'last')}]"
    if block.get("init") == "random":
        label += " random-init"
    if block.get("frozen") is False:
        label += " fine-tuned"
    return label


def collect(runs_dir: str | Path) -> list[dict[str, Any]]:
    rows = []
    for summary in sorted(Path(runs_dir).glob("**/summary.json")):
        data = json.loads(summary.read_text())
        metrics = {k[len("test_"):]: v for k, v in data.items() if k.startswith("test_")}
        metrics = dict(sorted(metrics.items(), key=lambda kv: (kv[0] not in HEADLINE, kv[0])))
        rows.append({"run": summary.parent.name, "task": data.get("task", "?"), "llm_block": _block_label(data.get("llm_block")),
                     "steps": data.get("steps"), **metrics})
    return rows


def write(rows: list[dict[str, Any]], out_dir: str | Path, plot_metric: str | None = None) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(out / "leaderboard.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    (out / "leaderboard.md").write_text("\n".join(lines) + "\n")
    paths = {"markdown": out / "leaderboard.md", "csv": out / "leaderboard.csv"}
    metric = plot_metric or next((c for c in ("accuracy", "r_mean", "em1") if any(c in r for r in rows)), None)
    if metric and rows:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        shown = [r for r in rows if metric in r]
        fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(shown)), 3.5))
        ax.bar([f"{r['run']}\n{r['llm_block']}" for r in shown], [r[metric] for r in shown], color="#4c72b0")
        for i, r in enumerate(shown):
            ax.text(i, r[metric], f"{r[metric]:.2f}", ha="center", va="bottom", fontsize=8)
        ax.set_ylabel(f"test {metric}")
        ax.tick_params(axis="x", labelsize=7)
        fig.tight_layout()
        fig.savefig(out / "leaderboard.png", dpi=120)
        plt.close(fig)
        paths["plot"] = out / "leaderboard.png"
    return paths
