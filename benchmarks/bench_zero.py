"""Per-rank training state under ZeRO-2 and ZeRO-3, 1 and 2 processes, side by side in one run.

    python benchmarks/bench_zero.py [--width 256] [--layers 2] [--out results/x.json]

Model: a linear embedding, the visual LLM block (``random_frozen``: a llama layer of width ``--width``,
frozen, plus its trainable adapters) and a trainable linear head; fp32, torch AdamW as client optimizer.
Each configuration runs under ``torchrun --nproc_per_node N`` (gloo on CPU), takes two training steps
and reports, per rank, DeepSpeed's own accounting of what that rank holds:

* **params**: the local storage of each parameter (``ds_tensor`` under ZeRO-3, the full tensor otherwise),
  trainable and frozen separately;
* **grads**: the gradient partitions the ZeRO optimizer keeps for its step (``averaged_gradients``);
* **master**: the fp32 partitions the ZeRO optimizer steps (``fp32_partitioned_groups_flat`` under ZeRO-3,
  ``single_partition_of_fp32_groups`` under ZeRO-1/2);
* **optimizer state**: the inner optimizer's ``state`` tensors (AdamW's two moments).

Ratios are to the single-process run of the same stage; the ideal under ZeRO-3 is 1/N for every
trainable column. Frozen parameters (``requires_grad=False``) are converted by ``zero.Init``-style
partitioning like every other parameter: the frozen column shows what DeepSpeed does with them.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

COLUMNS = ("trainable_params", "frozen_params", "grads", "master", "optimizer_state")


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def worker(stage: int, width: int, layers: int, out: str) -> None:
    """One rank: build, two steps, write this rank's byte counts to ``out``.rank<r>.json."""
    import deepspeed
    import torch
    from torch import nn

    from mmllm import build_visual_llm_layer

    torch.manual_seed(0)
    block = {
        "kind": "random_frozen",
        "layers": "last",
        "dtype": "float32",
        "llm_config": {
            "model_type": "llama",
            "hidden_size": width,
            "intermediate_size": 4 * width,
            "num_hidden_layers": layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 16,
        },
    }
    model = nn.Sequential(nn.Linear(32, width), build_visual_llm_layer(block, width), nn.Linear(width, 10))
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen_names = [n for n, p in model.named_parameters() if not p.requires_grad]
    config = {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
    }
    engine, optimizer, _, _ = deepspeed.initialize(
        model=model, optimizer=torch.optim.AdamW(trainable, lr=1e-3), config=config
    )
    g = torch.Generator().manual_seed(engine.global_rank)
    grads = 0
    for _ in range(2):
        x, y = torch.randn(4, 6, 32, generator=g), torch.randint(0, 10, (4,), generator=g)
        loss = nn.functional.cross_entropy(engine(x).mean(1), y)
        engine.backward(loss)
        avg = getattr(optimizer, "averaged_gradients", {})
        grads = nbytes(t for v in avg.values() for t in (v if isinstance(v, list) else [v]))
        engine.step()

    def local(p):
        return p.ds_tensor if hasattr(p, "ds_tensor") else p

    inner = optimizer.optimizer
    row = {
        "trainable_params": nbytes(local(p) for p in model.parameters() if p.requires_grad),
        "frozen_params": nbytes(local(p) for p in model.parameters() if not p.requires_grad),
        "grads": grads,
        "master": nbytes(
            getattr(optimizer, "fp32_partitioned_groups_flat", None)  # ZeRO-3
            or getattr(optimizer, "single_partition_of_fp32_groups", None)  # ZeRO-1/2
            or [p for group in inner.param_groups for p in group["params"]]
        ),
        "optimizer_state": nbytes(
            t for s in inner.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0
        ),
        "frozen_partitioned": all(hasattr(p, "ds_tensor") for n, p in model.named_parameters() if n in frozen_names),
        "frozen_full_numel": sum(
            p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters() if not p.requires_grad
        ),
    }
    Path(f"{out}.rank{engine.global_rank}.json").write_text(json.dumps(row))


def measure(stage: int, nproc: int, width: int, layers: int, tmp: Path) -> list[dict]:
    out = tmp / f"zero{stage}_n{nproc}"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        free_port(),
        __file__,
        "--worker",
        str(stage),
        "--width",
        str(width),
        "--layers",
        str(layers),
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise SystemExit(f"ZeRO-{stage} with {nproc} processes failed:\n{done.stderr[-4000:]}")
    return [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(nproc)]


def table(results: dict[tuple[int, int], list[dict]]) -> str:
    lines = [
        "| stage | procs | rank | "
        + " | ".join(f"{c} (B)" for c in COLUMNS)
        + " | "
        + " | ".join(f"{c} ratio" for c in COLUMNS)
        + " | frozen partitioned |",
        "|" + "---|" * (4 + 2 * len(COLUMNS)),
    ]
    for (stage, nproc), rows in sorted(results.items()):
        base = results[(stage, 1)][0]
        for rank, row in enumerate(rows):
            ratios = [f"{row[c] / base[c]:.3f}" if base[c] else "-" for c in COLUMNS]
            lines.append(
                f"| {stage} | {nproc} | {rank} | "
                + " | ".join(str(row[c]) for c in COLUMNS)
                + " | "
                + " | ".join(ratios)
                + f" | {row['frozen_partitioned']} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--stages", default="2,3")
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--out", help="write the table and raw numbers here (.json)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args.worker, args.width, args.layers, args.out)
        return 0
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for stage in (int(s) for s in args.stages.split(",")):
            for nproc in (int(n) for n in args.procs.split(",")):
                results[(stage, nproc)] = measure(stage, nproc, args.width, args.layers, Path(tmp))
    text = table(results)
    print(text)
    if args.out:
        Path(args.out).write_text(
            json.dumps({"table": text, "rows": {f"zero{s}_n{n}": r for (s, n), r in results.items()}}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
