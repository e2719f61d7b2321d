"""``mmllm analyze --run DIR``: activation maps before and after the block of a trained run, overlays and mIoU.

A task takes part by naming, in its registry entry, a function ``analysis: "module:function"`` with the
signature ``fn(task, model, dataset, num) -> AnalysisInputs``: model inputs, foreground masks and how the
block's tokens form a patch grid. The block is found as the model's ``llm_block`` module and observed
with forward hooks, whatever its kind.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError
from ..jsonio import write_json
from .maps import best_iou, frequency_map, magnitude_map, mean_iou


@dataclass
class AnalysisInputs:
    """What a task hands the analysis: ``forward(model)`` runs the inputs through the model; ``masks`` are
    [B, H, W] bool foregrounds, ``display`` [B, H, W] images to draw under the maps; the block's tokens
    are ``prefix`` non-patch tokens followed by a ``grid`` (h, w) of patches."""

    forward: object
    masks: torch.Tensor
    display: torch.Tensor
    prefix: int
    grid: tuple[int, int]


def find_block(model: torch.nn.Module) -> torch.nn.Module:
    for name, module in model.named_modules():
        if name.split(".")[-1] == "llm_block":
            return module
    raise ConfigError("the model has no `llm_block` module to analyse")


def analyse(run_dir: str | Path, split: str = "test", num: int = 16, out: str | Path | None = None,
            figures: int = 4) -> dict:
    from ..engine.evaluation import load_trained
    from ..engine.registry import all_tasks, resolve_target

    run_dir = Path(run_dir)
    checkpoint = run_dir / "model_final.pt"
    if not checkpoint.is_file():
        raise CheckpointError(f"{checkpoint} does not exist: analyse a finished run (its folder holds model_final.pt)")
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
    inputs: AnalysisInputs = resolve_target(hook)(task, model, datasets[split], num)
    seen: dict[str, torch.Tensor] = {}
    handle = block.register_forward_hook(lambda m, args, output: seen.update(before=args[0], after=output))
    model.eval()
    with torch.no_grad():
        inputs.forward(model)
    handle.remove()
    h, w = inputs.grid
    report: dict = {"run": str(run_dir), "split": split, "images": int(inputs.masks.shape[0]),
                    "upsampling": "nearest", "thresholds": "0.1..0.9"}
    maps: dict[str, list[torch.Tensor]] = {}
    for stage in ("before", "after"):
        tokens = seen[stage].float()[:, inputs.prefix:]
        for kind, fn in (("magnitude", magnitude_map), ("frequency", frequency_map)):
            grids = [fn(t).reshape(h, w) for t in tokens]
            maps[f"{kind}_{stage}"] = grids
            ious = [best_iou(g, m)[0] for g, m in zip(grids, inputs.masks)]
            report[f"miou_{kind}_{stage}"] = round(100 * mean_iou(ious), 2)
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
        fig, axes = plt.subplots(1, 1 + len(names), figsize=(2.2 * (1 + len(names)), 2.4))
        axes[0].imshow(display[i], cmap="gray")
        axes[0].set_title("image", fontsize=7)
        for ax, name in zip(axes[1:], names):
            up = F.interpolate(maps[name][i][None, None], size=tuple(display[i].shape), mode="nearest")[0, 0]
            ax.imshow(display[i], cmap="gray")
            ax.imshow(up, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.set_title(name.replace("_", " "), fontsize=7)
        for ax in axes:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / f"maps_{i:03d}.png", dpi=100)
        plt.close(fig)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("analyze", help="activation maps before/after the block of a trained run, and mIoU")
    parser.add_argument("--run", required=True, help="a finished run folder (holds model_final.pt)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num", type=int, default=16, help="images to analyse")
    parser.add_argument("--out", default=None, help="default: <run>/analysis")

    def run(args: argparse.Namespace) -> int:
        import json

        print(json.dumps(analyse(args.run, args.split, args.num, args.out), indent=1))
        return 0

    parser.set_defaults(func=run)
