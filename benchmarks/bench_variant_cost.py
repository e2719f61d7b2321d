"""Training cost of each block variant relative to no block, measured side by side in one run,
against the analytic FLOP share the block adds.

    python benchmarks/bench_variant_cost.py [--model vit_small_patch16_224_llm] [--batch 8] [--steps 5]

Each variant (no block, frozen pretrained block, random-init frozen, random-init trained,
fine-tuned pretrained, the MLP control) runs in its own process (so peak memory is its own):
the timm ViT + block classifier, AdamW, fp32, ``--steps`` timed training steps after one warm-up.
Printed per variant: median step time, its ratio to no block, peak RSS (CPU) or peak allocated
memory (CUDA), trainable parameters, and the ratio the FLOP model predicts.

FLOP model (linear layers only, 2 FLOPs per multiply-add and token; attention scores ignored): a
trainable layer costs 3 forward passes per step (forward, input gradient, weight gradient); a
frozen one 2 (no weight-gradient GEMMs), so a frozen block ideally costs 2/3 of an equal trainable
one (Pang et al., ICLR 2024 keep the block frozen; the saving is what this checks).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = {
    "none": {"kind": "none"},
    "frozen": {"kind": "llm_block"},
    "random_frozen": {"kind": "random_frozen"},
    "random_trained": {"kind": "random_trained"},
    "finetuned": {"kind": "llm_block_finetuned"},
    "mlp": {"kind": "mlp"},
}


def linear_params(module) -> tuple[int, int]:
    """(frozen, trainable) weights of the module's linear layers: what the FLOP model counts."""
    import torch

    frozen = trainable = 0
    for m in module.modules():
        if isinstance(m, torch.nn.Linear):
            n = m.weight.numel()
            if m.weight.requires_grad:
                trainable += n
            else:
                frozen += n
    return frozen, trainable


def measure(args: argparse.Namespace, variant: str) -> dict:
    """Runs in a child process: build, train ``steps`` steps, report time and memory."""
    import timm
    import torch

    import vision.classification  # noqa: F401 - registers the *_llm timm names

    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    block = {**VARIANTS[variant], "source": args.source, "dtype": "float32"}
    if block["kind"] == "none":
        block = {"kind": "none"}
    model = timm.create_model(args.model, num_classes=100, llm_block=block).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(args.batch, 3, 224, 224, device=device)
    y = torch.randint(0, 100, (args.batch,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up (allocates optimizer state)
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    frozen, trainable = linear_params(model)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    return {"seconds": statistics.median(times), "peak_mib": peak, "trainable": sum(p.numel() for p in params),
            "flops_units": 3 * trainable + 2 * frozen,  # per token, in units of 2 FLOPs
            "device": torch.cuda.get_device_name() if device.type == "cuda" else
            f"CPU ({torch.get_num_threads()} threads)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_small_patch16_224_llm")
    parser.add_argument("--source", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args, args.child)))
        return
    results = {}
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--child", variant, "--model", args.model, "--source", args.source,
               "--batch", str(args.batch), "--steps", str(args.steps)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    base = results.get("none")
    print(f"device: {next(iter(results.values()))['device']}; {args.model}, batch {args.batch}, "
          f"{args.steps} timed steps, fp32, block source {args.source}")
    print(f"{'variant':15s} {'s/step':>8s} {'x none':>7s} {'FLOP model':>10s} {'peak MiB':>9s} {'trainable':>11s}")
    for variant, r in results.items():
        ratio = r["seconds"] / base["seconds"] if base else float("nan")
        flops = r["flops_units"] / base["flops_units"] if base else float("nan")
        print(f"{variant:15s} {r['seconds']:8.3f} {ratio:7.2f} {flops:10.2f} {r['peak_mib']:9.0f} {r['trainable']:11,d}")
    if "frozen" in results and "finetuned" in results:
        print(f"frozen / fine-tuned step time: {results['frozen']['seconds'] / results['finetuned']['seconds']:.2f} "
              f"(FLOP model: {results['frozen']['flops_units'] / results['finetuned']['flops_units']:.2f}; "
              "a frozen block alone ideally costs 2/3 of a trainable one)")


if __name__ == "__main__":
    main()
