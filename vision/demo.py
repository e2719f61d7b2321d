"""Smoke demo: a small ViT with the real SmolLM2 last block, a few training steps on one batch.

    python -m vision.demo [--llm smollm2-135m] [--steps 5]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from mmllm.params import param_groups
from vision import create_vit_llm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", default="smollm2-135m", help="embedded asset name or checkpoint path")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = create_vit_llm(
        {
            "vit_kwargs": {"img_size": 64, "patch_size": 8, "depth": 4},
            "num_classes": 10,
            "llm_block": {"kind": "llm_block", "source": args.llm, "layers": "last"},
        }
    )
    block = model.llm_block
    print(f"built in {time.perf_counter() - t0:.1f}s: {block.extra_repr()}")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    print(f"parameters: {trainable:,} trainable, {frozen:,} frozen")
    frozen_before = {k: v.clone() for k, v in block.layers.state_dict().items()}
    opt = torch.optim.AdamW(param_groups(model, lr=1e-3, lr_multipliers={"llm_block.adapter": 10}))
    images, labels = torch.randn(8, 3, 64, 64), torch.arange(8) % 10
    model.train()
    for step in range(args.steps):
        t = time.perf_counter()
        loss = nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"step {step}: loss {loss.item():.4f} ({time.perf_counter() - t:.2f}s forward+backward+step)")
    unchanged = all(torch.equal(v, frozen_before[k]) for k, v in block.layers.state_dict().items())
    print(f"frozen LLM weights unchanged: {unchanged}")
    return 0 if unchanged else 1


if __name__ == "__main__":
    raise SystemExit(main())
