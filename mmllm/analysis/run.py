"""``mmllm analyze --run DIR``: activation maps before and after the block of a trained run, overlays and mIoU.

A task takes part by naming, in its registry entry, a function ``analysis: "module:function"`` with the
signature ``fn(task, model, dataset, num) -> AnalysisInputs`` (and a ``background`` keyword if it can draw
its images on more than one background): model inputs, foreground masks, how the block's tokens form a
patch grid and, optionally, which module is the host encoder's last self-attention. The block is found as
the model's ``llm_block`` module and observed with forward hooks, whatever its kind; the attention with a
forward pre-hook (:mod:`.attention`). Maps and scores follow Pang et al. (ICLR 2024, §6).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..jsonio import write_json
from .attention import CLSAttentionRecorder
from .maps import (
    attention_map,
    best_iou,
    fixed_threshold_miou,
    frequency_map,
    held_out_threshold,
    magnitude_map,
    mean_iou,
)


@dataclass
class AnalysisInputs:
    """What a task hands the analysis: ``forward(model)`` runs the inputs through the model; ``masks`` are
    [B, H, W] bool foregrounds, ``display`` [B, H, W] (grey) or [B, H, W, 3] (RGB) images in [0, 1] to draw
    under the maps; the block's tokens are ``prefix`` non-patch tokens followed by a ``grid`` (h, w) of
    patches. ``attention``: the host encoder's last self-attention, whose tokens are laid out the same way
    with the CLS token first (None: no CLS-attention map). ``background``: what the images were drawn on."""

    forward: Callable[[nn.Module], object]
    masks: torch.Tensor
    display: torch.Tensor
    prefix: int
    grid: tuple[int, int]
    attention: nn.Module | None = None
    background: str = "plain"


def find_block(model: nn.Module) -> nn.Module:
    for name, module in model.named_modules():
        if name.split(".")[-1] == "llm_block":
            return module
    raise ConfigError(
        "the model has no `llm_block` module to analyse (a run trained with llm_block.kind=none has nothing to analyse)"
    )


def _module_name(model: nn.Module, module: nn.Module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise ConfigError("the analysis hook's attention module is not part of the model")


def _call_hook(fn: Callable, task, model: nn.Module, dataset, num: int, background: str) -> AnalysisInputs:
    if "background" in inspect.signature(fn).parameters:
        return fn(task, model, dataset, num, background=background)
    if background != "plain":
        raise ConfigError(
            f"task {task.entry.name}'s analysis hook has no background option: "
            f"--background {background} is not available for it"
        )
    return fn(task, model, dataset, num)


def _observe(model: nn.Module, block: nn.Module, inputs: AnalysisInputs):
    """(tokens before the block, after it, CLS attention rows or None), each concatenated over the forward's calls."""
    seen: dict[str, list[torch.Tensor]] = {"before": [], "after": []}

    def keep(module, args, kwargs, output):
        x = args[0] if args else kwargs["x"]
        seen["before"].append(x.detach().float().cpu())
        seen["after"].append(output.detach().float().cpu())

    handle = block.register_forward_hook(keep, with_kwargs=True)
    recorder = CLSAttentionRecorder(inputs.attention, inputs.prefix) if inputs.attention is not None else None
    model.eval()
    try:
        with torch.no_grad(), recorder or contextlib.nullcontext():
            inputs.forward(model)
    finally:
        handle.remove()
    if not seen["before"]:
        raise ConfigError("the analysis inputs' forward never called the model's llm_block")
    return torch.cat(seen["before"]), torch.cat(seen["after"]), recorder.result() if recorder else None


def _check_layout(tokens: torch.Tensor, inputs: AnalysisInputs, rows: torch.Tensor | None) -> None:
    h, w = inputs.grid
    n = inputs.masks.shape[0]
    if tokens.shape[:2] != (n, inputs.prefix + h * w):
        raise ConfigError(
            f"the block saw tokens {tuple(tokens.shape)}; the analysis hook promised {n} images of "
            f"{inputs.prefix} prefix + {h}x{w} patch tokens"
        )
    if rows is not None and tuple(rows.shape) != (n, h * w):
        raise ConfigError(
            f"the attention's CLS rows have shape {tuple(rows.shape)}, expected ({n}, {h * w}): "
            "the attention module's tokens are not laid out as the block's"
        )


def _score(grids: list[torch.Tensor], masks: torch.Tensor) -> float:
    """Each image's own best of the 9 thresholds (looks at the evaluated masks: flatters every map)."""
    return round(100 * mean_iou([best_iou(g, m)[0] for g, m in zip(grids, masks)]), 2)


def _score_held_out(grids: list[torch.Tensor], masks: torch.Tensor, holdout: int) -> tuple[float, float]:
    """(mIoU of the evaluated images at one threshold, that threshold): the threshold is the one that maximises
    the mIoU of the first ``holdout`` images; the score is over the images after them."""
    threshold, _ = held_out_threshold(grids[:holdout], list(masks[:holdout]))
    return round(100 * fixed_threshold_miou(grids[holdout:], list(masks[holdout:]), threshold), 2), threshold


def _run_seed(run_dir: Path) -> int | None:
    """The run's seed as the leaderboard reads it: ``summary.json``'s ``seed`` (None when absent)."""
    import json

    try:
        seed = json.loads((run_dir / "summary.json").read_text()).get("seed")
    except (OSError, ValueError, AttributeError):
        return None
    return None if seed is None else int(seed)


def analyse(
    run_dir: str | Path,
    split: str = "test",
    num: int = 16,
    out: str | Path | None = None,
    figures: int = 4,
    background: str = "plain",
    holdout: int = 4,
) -> dict:
    """Maps, mIoU (in ``analysis.json``) and overlays (``maps_XXX.png``) of a finished run under ``out``.

    The split's first ``holdout`` images choose one threshold per map (the one maximising their mIoU); the
    ``num`` images after them are scored at it: ``miou_<map>`` (primary, with ``threshold_<map>``). Each
    evaluated image's own best of 9 thresholds stays as ``miou_<map>_per_image_best`` (secondary: it looks at
    the evaluated masks). A run trained without the block (kind ``none``) is analysed too: its ``llm_block``
    is the identity in the block's place, so its maps come from the final tokens before the head, where the
    block's output would be (``before`` and ``after`` are the same tokens)."""
    from ..engine.evaluation import load_trained
    from ..engine.registry import all_tasks, resolve_target

    run_dir = Path(run_dir)
    checkpoint = run_dir / "model_final.pt"
    if not checkpoint.is_file():
        raise CheckpointError(f"{checkpoint} does not exist: analyse a finished run (its folder holds model_final.pt)")
    if num < 1:
        raise ConfigError(f"--num must be at least 1, got {num}")
    if holdout < 1:
        raise ConfigError(f"--holdout must be at least 1 (the images that choose the threshold), got {holdout}")
    out = Path(out or run_dir / "analysis")
    task, model, datasets = load_trained(checkpoint, run_dir)
    hook = getattr(task.entry, "analysis", None) if task.entry is not None else None
    if not hook:
        having = sorted(n for n, e in all_tasks().items() if getattr(e, "analysis", None))
        raise ConfigError(
            f"task {task.entry.name if task.entry else '?'} has no analysis hook; tasks with one: {having}"
        )
    block = find_block(model)
    kind = str(getattr(block, "kind", block.__class__.__name__))
    if split not in datasets:
        raise ConfigError(f"split {split!r} is not among the run's datasets {sorted(datasets)}")
    inputs = _call_hook(resolve_target(hook), task, model, datasets[split], holdout + num, background)
    attention_name = _module_name(model, inputs.attention) if inputs.attention is not None else None
    before, after, rows = _observe(model, block, inputs)
    _check_layout(before, inputs, rows)
    total = int(inputs.masks.shape[0])
    if total <= holdout:
        raise ConfigError(f"split {split!r} gave {total} images: not enough for {holdout} held-out + evaluated ones")
    h, w = inputs.grid
    report: dict = {
        "run": str(run_dir),
        "split": split,
        "block": kind,
        "seed": _run_seed(run_dir),
        "images": total - holdout,
        "held_out_images": holdout,
        "background": inputs.background,
        "upsampling": "nearest",
        "thresholds": "0.1..0.9",
        "scoring": "one threshold per map, chosen on the held-out images (miou_*); each image's own "
        "best threshold (miou_*_per_image_best)",
        "cls_attention": attention_name,
    }
    maps: dict[str, list[torch.Tensor]] = {}
    for stage, tokens in (("before", before), ("after", after)):
        for map_kind, fn in (("magnitude", magnitude_map), ("frequency", frequency_map)):
            maps[f"{map_kind}_{stage}"] = [fn(t).reshape(h, w) for t in tokens[:, inputs.prefix :]]
    if rows is not None:
        maps["cls_attention"] = [attention_map(r).reshape(h, w) for r in rows]
    # the level a map that knows nothing reaches: uniform random maps, scored the same way
    generator = torch.Generator().manual_seed(0)
    maps["random"] = [torch.rand(h, w, generator=generator) for _ in range(total)]
    for name, grids in maps.items():
        report[f"miou_{name}"], report[f"threshold_{name}"] = _score_held_out(grids, inputs.masks, holdout)
    for name, grids in maps.items():
        report[f"miou_{name}_per_image_best"] = _score(grids[holdout:], inputs.masks[holdout:])
    del maps["random"]
    out.mkdir(parents=True, exist_ok=True)
    _overlays(inputs.display[holdout:], {k: v[holdout:] for k, v in maps.items()}, out, figures)
    write_json(out / "analysis.json", report)
    return report


def _overlays(display: torch.Tensor, maps: dict[str, list[torch.Tensor]], out: Path, figures: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch.nn.functional as F

    names = list(maps)
    for i in range(min(figures, display.shape[0])):
        image = display[i].float().clamp(0, 1)
        grey = {"cmap": "gray", "vmin": 0, "vmax": 1} if image.dim() == 2 else {}
        fig, axes = plt.subplots(1, 1 + len(names), figsize=(2.2 * (1 + len(names)), 2.4))
        axes[0].imshow(image, **grey)
        axes[0].set_title("image", fontsize=7)
        for ax, name in zip(axes[1:], names):
            up = F.interpolate(maps[name][i][None, None], size=tuple(image.shape[:2]), mode="nearest")[0, 0]
            ax.imshow(image, **grey)
            ax.imshow(up, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.set_title(name.replace("_", " "), fontsize=7)
        for ax in axes:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / f"maps_{i:03d}.png", dpi=100)
        plt.close(fig)


def summarise(reports: list[dict]) -> dict:
    """mean ± sample std over runs (seeds) of every mIoU in their reports: what a figure or a table quotes."""
    from ..stats import mean_std

    keys = [k for k in reports[0] if k.startswith("miou_")]
    missing = [k for k in keys for r in reports if k not in r]
    if missing:
        raise ConfigError(f"the runs' analyses differ: {sorted(set(missing))} missing in some (mixed tasks or hooks?)")
    summary: dict = {"runs": [r["run"] for r in reports], "background": sorted({r["background"] for r in reports})}
    for key in keys:
        mean, sd, n = mean_std([float(r[key]) for r in reports])
        summary[key] = {"mean": round(mean, 2), "std": None if sd is None else round(sd, 2), "n": n}
    return summary


def _by_seed(reports: list[dict], arm: str) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for r in reports:
        seed = r.get("seed")
        if seed is None:
            raise ConfigError(f"{r['run']} ({arm}) has no seed in its summary.json: runs are paired by seed")
        if seed in out:
            raise ConfigError(
                f"{arm}: two runs with seed {seed} ({out[seed]['run']}, {r['run']}): pair one run per seed"
            )
        out[seed] = r
    return out


def compare(with_block: list[dict], without_block: list[dict], confidence: float = 0.95) -> dict:
    """The information-filtering comparison (Pang et al., ICLR 2024, §5): the same maps of runs trained WITH
    the block and runs trained WITHOUT it (kind ``none``: its maps from the final tokens), per mIoU key:
    mean ± sample std of each arm and the paired difference with − without over the seeds both arms have,
    with its Student-t interval (:func:`mmllm.stats.paired_difference`, as the leaderboard)."""
    from ..stats import mean_std, paired_difference

    if not with_block or not without_block:
        raise ConfigError("compare needs at least one run in each arm (with the block, without it)")
    arms = {"with": _by_seed(with_block, "with the block"), "without": _by_seed(without_block, "without the block")}
    keys = [k for k in with_block[0] if k.startswith("miou_")]
    missing = sorted({k for k in keys for r in [*with_block, *without_block] if k not in r})
    if missing:
        raise ConfigError(f"the runs' analyses differ: {missing} missing in some (mixed tasks or hooks?)")
    seeds = sorted(set(arms["with"]) & set(arms["without"]))
    rows = []
    for key in keys:
        row: dict = {"map": key[len("miou_") :]}
        for arm, runs in arms.items():
            mean, sd, n = mean_std([float(r[key]) for r in runs.values()])
            row[arm] = {"mean": mean, "std": sd, "n": n}
        if seeds:
            row.update(
                paired_difference(
                    {s: float(arms["with"][s][key]) for s in seeds},
                    {s: float(arms["without"][s][key]) for s in seeds},
                    confidence,
                )
            )
        else:
            row.update({"diff": None, "low": None, "high": None, "n_paired": 0})
        rows.append(row)
    return {
        "with_block": [r["run"] for r in with_block],
        "without_block": [r["run"] for r in without_block],
        "blocks": sorted({str(r.get("block")) for r in with_block}),
        "paired_seeds": seeds,
        "confidence": confidence,
        "rows": rows,
    }


def _fmt(value: float | None, sd: float | None = None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if sd is None else f"{value:.2f} ± {sd:.2f}"


def compare_markdown(result: dict) -> str:
    """The comparison as a markdown table: one row per map, both arms, Δ (with − without) and its interval."""
    pct = round(100 * result["confidence"])
    lines = [
        f"| map | with block (mean ± std, n) | without block (mean ± std, n) | Δ with − without | {pct}% t interval "
        "| paired seeds |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        w, o = row["with"], row["without"]
        interval = "–" if row["low"] is None else f"[{row['low']:.2f}, {row['high']:.2f}]"
        lines.append(
            f"| {row['map']} | {_fmt(w['mean'], w['std'])} ({w['n']}) | {_fmt(o['mean'], o['std'])} "
            f"({o['n']}) | {_fmt(row['diff'])} | {interval} | {row['n_paired']} |"
        )
    note = (
        "mIoU (%) of each map's pseudo-masks; miou_<map>: one threshold chosen on held-out images; "
        "<map>_per_image_best: each image's own best threshold (secondary). Δ paired by seed, Student-t interval. "
        "Without the block, `after` and `before` are the same final tokens (where the block's output would be)."
    )
    return "\n".join(lines) + "\n\n" + note + "\n"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("analyze", help="activation maps before/after the block of a trained run, and mIoU")
    parser.add_argument(
        "--run",
        required=True,
        nargs="+",
        help="finished run folder(s) (each holds model_final.pt); several: each analysed, then mean ± std over them",
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--num", type=int, default=16, help="images to analyse")
    parser.add_argument("--out", default=None, help="one run: where to write (default: <run>/<--out-name>)")
    parser.add_argument("--out-name", default="analysis", help="the folder inside each run (default: analysis)")
    parser.add_argument("--summary", default=None, help="several runs: also write their mean ± std (JSON) here")
    parser.add_argument("--figures", type=int, default=4, help="overlay PNGs to write")
    parser.add_argument(
        "--background",
        default="plain",
        help="plain (the images as they are) or, where the task's hook offers it, textured",
    )
    parser.add_argument(
        "--holdout",
        type=int,
        default=4,
        help="the split's first images that choose each map's one threshold (scored: the --num after them)",
    )
    parser.add_argument(
        "--without",
        nargs="+",
        default=None,
        help="runs trained without the block (kind none): compare --run (with it) against them, paired by seed",
    )
    parser.add_argument(
        "--compare-out",
        default="analysis_compare",
        help="with --without: where compare.json and compare.md go (default: ./analysis_compare)",
    )

    def run(args: argparse.Namespace) -> int:
        import json

        if args.out and len(args.run) > 1:
            raise ConfigError("--out names one folder: with several runs use --out-name (a folder inside each run)")
        if args.out and args.without:
            raise ConfigError("--out names one folder: with --without use --out-name (a folder inside each run)")

        def each(runs: list[str]) -> list[dict]:
            return [
                analyse(
                    r,
                    args.split,
                    args.num,
                    args.out or Path(r) / args.out_name,
                    args.figures,
                    args.background,
                    args.holdout,
                )
                for r in runs
            ]

        reports = each(args.run)
        if args.without:
            result = compare(reports, each(args.without))
            out = Path(args.compare_out)
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / "compare.json", result)
            (out / "compare.md").write_text(compare_markdown(result))
            print(json.dumps(result, indent=1))
            return 0
        if len(reports) == 1:
            print(json.dumps(reports[0], indent=1))
            return 0
        summary = summarise(reports)
        if args.summary:
            write_json(args.summary, summary)
        print(json.dumps(summary, indent=1))
        return 0

    parser.set_defaults(func=run)
