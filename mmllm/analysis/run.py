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
from .maps import attention_map, best_iou, frequency_map, magnitude_map, mean_iou


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
    raise ConfigError("the model has no `llm_block` module to analyse (a run trained with llm_block.kind=none "
                      "has nothing to analyse)")


def _module_name(model: nn.Module, module: nn.Module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise ConfigError("the analysis hook's attention module is not part of the model")


def _call_hook(fn: Callable, task, model: nn.Module, dataset, num: int, background: str) -> AnalysisInputs:
    if "background" in inspect.signature(fn).parameters:
        return fn(task, model, dataset, num, background=background)
    if background != "plain":
        raise ConfigError(f"task {task.entry.name}'s analysis hook has no background option: "
                          f"--background {background} is not available for it")
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
        raise ConfigError(f"the block saw tokens {tuple(tokens.shape)}; the analysis hook promised {n} images of "
                          f"{inputs.prefix} prefix + {h}x{w} patch tokens")
    if rows is not None and tuple(rows.shape) != (n, h * w):
        raise ConfigError(f"the attention's CLS rows have shape {tuple(rows.shape)}, expected ({n}, {h * w}): "
                          "the attention module's tokens are not laid out as the block's")


def _score(grids: list[torch.Tensor], masks: torch.Tensor) -> float:
    return round(100 * mean_iou([best_iou(g, m)[0] for g, m in zip(grids, masks)]), 2)


def analyse(run_dir: str | Path, split: str = "test", num: int = 16, out: str | Path | None = None,
            figures: int = 4, background: str = "plain") -> dict:
    """Maps, mIoU (in ``analysis.json``) and overlays (``maps_XXX.png``) of a finished run under ``out``."""
    from ..engine.evaluation import load_trained
    from ..engine.registry import all_tasks, resolve_target

    run_dir = Path(run_dir)
    checkpoint = run_dir / "model_final.pt"
    if not checkpoint.is_file():
        raise CheckpointError(f"{checkpoint} does not exist: analyse a finished run (its folder holds model_final.pt)")
    if num < 1:
        raise ConfigError(f"--num must be at least 1, got {num}")
    out = Path(out or run_dir / "analysis")
    task, model, datasets = load_trained(checkpoint, run_dir)
    hook = getattr(task.entry, "analysis", None) if task.entry is not None else None
    if not hook:
        having = sorted(n for n, e in all_tasks().items() if getattr(e, "analysis", None))
        raise ConfigError(f"task {task.entry.name if task.entry else '?'} has no analysis hook; tasks with one: {having}")
    block = find_block(model)
    if block.__class__.__name__ == "NoBlock":
        raise ConfigError(f"{run_dir} was trained without a block (kind none): nothing to analyse")
    if split not in datasets:
        raise ConfigError(f"split {split!r} is not among the run's datasets {sorted(datasets)}")
    inputs = _call_hook(resolve_target(hook), task, model, datasets[split], num, background)
    attention_name = _module_name(model, inputs.attention) if inputs.attention is not None else None
    before, after, rows = _observe(model, block, inputs)
    _check_layout(before, inputs, rows)
    h, w = inputs.grid
    report: dict = {"run": str(run_dir), "split": split, "images": int(inputs.masks.shape[0]),
                    "background": inputs.background, "upsampling": "nearest", "thresholds": "0.1..0.9",
                    "cls_attention": attention_name}
    maps: dict[str, list[torch.Tensor]] = {}
    for stage, tokens in (("before", before), ("after", after)):
        for kind, fn in (("magnitude", magnitude_map), ("frequency", frequency_map)):
            maps[f"{kind}_{stage}"] = [fn(t).reshape(h, w) for t in tokens[:, inputs.prefix:]]
            report[f"miou_{kind}_{stage}"] = _score(maps[f"{kind}_{stage}"], inputs.masks)
    if rows is not None:
        maps["cls_attention"] = [attention_map(r).reshape(h, w) for r in rows]
        report["miou_cls_attention"] = _score(maps["cls_attention"], inputs.masks)
    # the level a map that knows nothing reaches: uniform random maps, scored the same way (best of 9 thresholds)
    generator = torch.Generator().manual_seed(0)
    report["miou_random"] = _score([torch.rand(h, w, generator=generator) for _ in inputs.masks], inputs.masks)
    out.mkdir(parents=True, exist_ok=True)
    _overlays(inputs.display, maps, out, figures)
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


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("analyze", help="activation maps before/after the block of a trained run, and mIoU")
    parser.add_argument("--run", required=True, nargs="+",
                        help="finished run folder(s) (each holds model_final.pt); several: each analysed, then "
                             "mean ± std over them")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num", type=int, default=16, help="images to analyse")
    parser.add_argument("--out", default=None, help="one run: where to write (default: <run>/<--out-name>)")
    parser.add_argument("--out-name", default="analysis", help="the folder inside each run (default: analysis)")
    parser.add_argument("--summary", default=None, help="several runs: also write their mean ± std (JSON) here")
    parser.add_argument("--figures", type=int, default=4, help="overlay PNGs to write")
    parser.add_argument("--background", default="plain",
                        help="plain (the images as they are) or, where the task's hook offers it, textured")

    def run(args: argparse.Namespace) -> int:
        import json

        if args.out and len(args.run) > 1:
            raise ConfigError("--out names one folder: with several runs use --out-name (a folder inside each run)")
        reports = [analyse(r, args.split, args.num, args.out or Path(r) / args.out_name, args.figures, args.background)
                   for r in args.run]
        if len(reports) == 1:
            print(json.dumps(reports[0], indent=1))
            return 0
        summary = summarise(reports)
        if args.summary:
            write_json(args.summary, summary)
        print(json.dumps(summary, indent=1))
        return 0

    parser.set_defaults(func=run)
