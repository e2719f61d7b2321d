"""Why does the main job's block arm sit at the answer prior? Per-group gradient norms, the block's output
scale entering the pooler, and the training loss over the first steps of both arms, side by side.

    python benchmarks/diagnose_block_arm.py [--steps 100] [--config configs/vqa/easyvqa_meter_smollm2.yaml]
        [--options run.init_lr=3e-4 ...]

Trains each arm (``model.llm_block.kind`` llm_block and none) in this process with the engine's own parameter
groups (``run.lr_multipliers`` applied) and AdamW, fp32, on the config's training split, and prints one JSON
object: for each arm, per parameter group (vision, text, fusion, poolers, head, adapters) the mean gradient norm
over the steps, the RMS of the image tokens entering the image pooler (fused, after the block when there is one)
at the first and last step, and the loss every 10 steps. Nothing is written.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {  # parameter-name prefix -> group (longest prefix wins)
    "backbone.vision.": "vision",
    "backbone.text.": "text",
    "backbone.image_proj.": "fusion",
    "backbone.text_proj.": "fusion",
    "backbone.image_layers.": "fusion",
    "backbone.text_layers.": "fusion",
    "backbone.modality_embed.": "fusion",
    "backbone.image_pooler.": "poolers",
    "backbone.text_pooler.": "poolers",
    "vqa_head.": "head",
    "backbone.llm_block.": "adapters",
}


def group_of(name: str) -> str:
    prefix = max((p for p in GROUPS if name.startswith(p)), key=len, default=None)
    return GROUPS[prefix] if prefix else "other"


def run_arm(config: str, options: list[str], kind: str, steps: int, seed: int) -> dict:
    from torch.utils.data import DataLoader

    from mmllm.config import load_config
    from mmllm.engine.launch import prepare_embedded_data, task_for
    from mmllm.engine.trainer import seed_everything
    from mmllm.params import param_groups

    cfg = load_config(
        config,
        [
            *options,
            f"model.llm_block.kind={kind}",
            "model.llm_block.dtype=float32",
            f"run.output_dir=/tmp/diagnose_block_arm/{kind}",
        ],
    )
    task = task_for(cfg)
    prepare_embedded_data(cfg)
    seed_everything(seed)
    task.build_preprocess()
    model = task.build_model()
    train = task.build_datasets()["train"]
    run = task.run
    optimizer = torch.optim.AdamW(param_groups(model, run.init_lr, run.weight_decay, task.lr_multipliers()))
    loader = DataLoader(
        train,
        batch_size=run.batch_size_train,
        shuffle=True,
        collate_fn=task.collate,
        generator=torch.Generator().manual_seed(seed),
    )
    pooled_rms: list[float] = []
    hook = model.backbone.image_pooler.register_forward_hook(
        lambda module, args, out: pooled_rms.append(args[0].detach().pow(2).mean().sqrt().item())
    )
    grads: dict[str, list[float]] = defaultdict(list)
    losses = []
    batches = iter(loader)
    model.train()
    for _ in range(steps):
        batch = next(batches)
        loss, _ = task.training_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        per_group: dict[str, float] = defaultdict(float)
        for name, p in model.named_parameters():
            if p.grad is not None:
                per_group[group_of(name)] += p.grad.pow(2).sum().item()
        for group, sq in per_group.items():
            grads[group].append(math.sqrt(sq))
        optimizer.step()
        losses.append(loss.item())
    hook.remove()
    return {
        "grad_norm_mean": {g: statistics.fmean(v) for g, v in sorted(grads.items())},
        "image_tokens_rms_into_pooler": {"first": pooled_rms[0], "last": pooled_rms[-1]},
        "loss_every_10": [round(x, 4) for x in losses[::10]],
        "loss_last": round(losses[-1], 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs/vqa/easyvqa_meter_smollm2.yaml"))
    parser.add_argument("--options", nargs="*", default=[])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = {kind: run_arm(args.config, args.options, kind, args.steps, args.seed) for kind in ("llm_block", "none")}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
