"""Training cost of each block variant relative to no block, measured side by side in one run,
against the analytic FLOP share of the block.

    python benchmarks/bench_variant_cost.py [--model vit_small_patch16_224_llm] [--batch 8] [--rounds 7]
        [--source smollm2-135m | --llm-config path/to/config.json] [--dtype float32] [--out results/x.md]

Model: the timm ViT + block classifier (``vision.classification``'s ``*_llm`` names), AdamW, one
training step = forward, cross-entropy, backward, optimizer step.

* **Time, side by side**: every variant is built in one process and the timed steps interleave
  (round r runs one step of each variant, in an order rotated every round), so a machine whose load
  changes (this project's shared 2-core CPU) slows every variant alike. Reported: the median step
  time, and the median over rounds of the per-round ratio to no block.
* **Peak memory**: each variant in its own child process (peak RSS on CPU, including the Python and
  library baseline that every variant shares; ``torch.cuda.max_memory_allocated`` on a GPU).
* **FLOP model** (linear layers only, per token, in units of one multiply-add: attention scores,
  norms and the optimizer are left out): a trainable weight costs 3 (forward, input gradient,
  weight gradient), a frozen one 2 (no weight-gradient GEMM; its input gradient is still needed,
  since trainable layers sit below it). So the frozen block ideally adds 2/3 of what an equal
  trainable block adds (Pang et al., ICLR 2024 freeze it; this checks what that saves).

``--llm-config`` (a transformers ``config.json``) measures the architecture alone, where the weights
are not at hand (a GPU machine): ``frozen`` is then built as ``random_frozen`` and ``finetuned`` as
``random_trained`` — the same modules with the same frozen/trainable split, so the same cost.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {
    "none": "none",
    "frozen": "llm_block",
    "random_frozen": "random_frozen",
    "random_trained": "random_trained",
    "finetuned": "llm_block_finetuned",
    "mlp": "mlp",
}
SAME_COST = {"llm_block": "random_frozen", "llm_block_finetuned": "random_trained"}  # --llm-config stand-ins


def block_options(args: argparse.Namespace, variant: str) -> dict:
    kind = VARIANTS[variant]
    if kind == "none":
        return {"kind": "none"}
    if args.llm_config:
        config = json.loads(Path(args.llm_config).read_text())
        config = {k: v for k, v in config.items() if not k.startswith("_")}
        return {"kind": SAME_COST.get(kind, kind), "llm_config": config, "dtype": args.dtype}
    options = {"kind": kind, "source": args.source}
    return options if kind == "mlp" else {**options, "dtype": args.dtype}


def linear_weights(module) -> tuple[int, int]:
    """(frozen, trainable) weights of the module's linear layers: what the FLOP model counts."""
    import torch

    frozen = trainable = 0
    for m in module.modules():
        if isinstance(m, torch.nn.Linear):
            if m.weight.requires_grad:
                trainable += m.weight.numel()
            else:
                frozen += m.weight.numel()
    return frozen, trainable


def build(args: argparse.Namespace, variant: str):
    """(model, optimizer, step function, info) of one variant."""
    import timm
    import torch

    import vision.classification  # noqa: F401 - registers the *_llm timm names

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    # img_size reaches the ViT (its patch grid and position table), so --img-size is the size that runs
    model = timm.create_model(
        args.model, num_classes=100, img_size=args.img_size, llm_block=block_options(args, variant)
    )
    model = model.to(device=device, dtype=dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device, dtype=dtype)
    y = torch.randint(0, 100, (args.batch,), device=device)

    def step() -> float:
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x).float(), y).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    host_frozen, host_trainable = linear_weights(model)
    block = getattr(model, "llm_block", None)
    block_frozen, block_trainable = linear_weights(block) if block is not None else (0, 0)
    info = {
        "trainable": sum(p.numel() for p in params),
        "units": 3 * host_trainable + 2 * host_frozen,
        "block_units": 3 * block_trainable + 2 * block_frozen,
        "kind": block_options(args, variant)["kind"],
    }
    return step, info


def memory_child(args: argparse.Namespace, variant: str) -> dict:
    """Runs in its own process: build, a warm-up step and two more, then the peak memory."""
    import torch

    step, info = build(args, variant)
    for _ in range(3):
        step()
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    return {**info, "peak_mib": peak}


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    from mmllm.precision import cpu_name

    return f"CPU {cpu_name()} ({torch.get_num_threads()} threads)"


def time_side_by_side(args: argparse.Namespace, variants: list[str]) -> dict[str, dict]:
    """Every variant in this process; ``rounds`` interleaved timed steps each after one warm-up."""
    steps, infos = {}, {}
    for v in variants:
        steps[v], infos[v] = build(args, v)
        steps[v]()  # warm-up: allocates the optimizer state, first-call kernels
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for v in order:
            times[v].append(steps[v]())
    out = {}
    for v in variants:
        ratios = [t / b for t, b in zip(times[v], times["none"])] if "none" in times else []
        out[v] = {
            **infos[v],
            "seconds": statistics.median(times[v]),
            "ratio": statistics.median(ratios) if ratios else float("nan"),
        }
    return out


def table(args: argparse.Namespace, results: dict[str, dict], device: str) -> str:
    base = results.get("none")
    weights = f"architecture of {args.llm_config} (random weights)" if args.llm_config else args.source
    lines = [
        f"device: {device}; {args.model} at {args.img_size} px, batch {args.batch}, {args.dtype}, AdamW; "
        f"block: {weights}; {args.rounds} interleaved timed steps per variant after one warm-up",
        "",
        "| variant (kind) | s/step | × none | FLOP model × none | block share of step FLOPs | peak MiB | × none "
        "| trainable params |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, r in results.items():
        flops = r["units"] / base["units"] if base else float("nan")
        share = r["block_units"] / r["units"]
        memory = r["peak_mib"] / base["peak_mib"] if base else float("nan")
        lines.append(
            f"| {variant} ({r['kind']}) | {r['seconds']:.4f} | {r['ratio']:.2f} | {flops:.2f} | "
            f"{share:.1%} | {r['peak_mib']:.0f} | {memory:.2f} | {r['trainable']:,} |"
        )
    if base and "frozen" in results and "finetuned" in results:
        frozen, tuned = results["frozen"], results["finetuned"]
        added = (frozen["ratio"] - 1) / (tuned["ratio"] - 1) if tuned["ratio"] != 1 else float("nan")
        model = (frozen["units"] - base["units"]) / (tuned["units"] - base["units"])
        lines += [
            "",
            f"Added step time of the frozen block / of the same block trained: measured {added:.2f}, "
            f"FLOP model {model:.2f} (a frozen block alone ideally costs 2/3 of a trainable one; the adapters "
            "train in both, so the model is a little above 2/3).",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_small_patch16_224_llm")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--source", default="smollm2-135m", help="the LLM (asset name, HF folder, .gguf)")
    parser.add_argument("--llm-config", default=None, help="a config.json: the architecture with random weights")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--out", default=None, help="also write the table (markdown) here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(memory_child(args, args.child)))
        return
    if "none" not in args.variants:
        args.variants.insert(0, "none")
    passed = [a for a in sys.argv[1:]]
    memory = {}
    for variant in args.variants:
        out = subprocess.run([sys.executable, __file__, *passed, "--child", variant], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"variant {variant} failed:\n{out.stderr[-3000:]}")
        memory[variant] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]
    results = time_side_by_side(args, args.variants)
    for variant, r in results.items():
        r["peak_mib"] = memory[variant]
    text = table(args, results, device_name())
    print(text)
    if args.out:
        from mmllm.jsonio import atomic_write_text

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/bench_variant_cost.py " + " ".join(passed)
        atomic_write_text(args.out, f"`{command}`\n\n{text}\n")


if __name__ == "__main__":
    main()
