"""One prepared script for a GPU session (one H100, < 8 minutes): every measurement into one folder.

    python benchmarks/gpu_check.py [--out results/gpu_check/NAME] [--llm-config path/config.json]
    python benchmarks/gpu_check.py --dry-run --out /tmp/x     # tiny sizes on CPU (CI: tests/engine/test_gpu_check.py)

Writes ``<out>/``:

* ``block.json``: the block's forward+backward, bf16 + SDPA vs the official fp32 + eager (timed with
  ``bench_block_speed.time_block``), the two outputs and input gradients compared, peak GPU memory per variant;
* ``variant_cost.md``: ``bench_variant_cost.py`` (no block / frozen / fine-tuned, interleaved steps, its
  peak memory per variant) whose table gives the frozen vs fine-tuned added step time against the FLOP
  model (ideal 2/3);
* ``train_<name>.json`` for each training run (METER VQA, image classification through ``mmllm train``,
  ``run.max_steps`` steps): steps/s from the run's own ``sec_per_step`` records, peak GPU memory,
  and the run folder ``train_<name>/``;
* ``summary.json``: all of the above with the device's name and each part's wall time; a failed part is
  recorded with its error and the others still run (exit status 1 then).

The training runs need their data and LLM assets prepared on the machine (``mmllm assets``, the configs'
``prepare``); ``--train NAME=CONFIG`` replaces the default list. ``--dry-run`` uses a random 128-wide
block, a batch-1 ViT-tiny cost benchmark and the registry's toy task (``--import toy_task``) instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

TRAIN = {"meter_vqa": "configs/vqa/easyvqa_meter_smollm2.yaml", "image_cls": "configs/vision/image_cls_mnist.yaml"}


def peak_reset(torch) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_mib(torch) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None


def block_speed(args: argparse.Namespace) -> dict:
    """bf16 SDPA vs fp32 eager: time, peak memory, outputs and input gradients compared."""
    import torch
    from bench_block_speed import block_config, time_block

    from mmllm import FrozenLLMBlock

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(args.batch, args.tokens, 384, generator=g).to(device)
    rows, outs = {}, {}
    for dtype, attn in (("float32", "eager"), ("bfloat16", "sdpa")):
        torch.manual_seed(0)  # same random weights (random:H) in both variants
        block = FrozenLLMBlock(block_config(args.source, dtype, attn)).to(device)
        x = x0.clone().requires_grad_(True)
        out = block(x)
        out.float().square().mean().backward()
        outs[(dtype, attn)] = (out.detach().float().cpu(), x.grad.detach().float().cpu())
        peak_reset(torch)
        sec = time_block(block, x, args.repeats)
        rows[f"{dtype}_{attn}"] = {"ms": round(sec * 1000, 3), "peak_mib": peak_mib(torch)}
        del block
    (ref_out, ref_grad), (out, grad) = outs[("float32", "eager")], outs[("bfloat16", "sdpa")]

    def rel(a, b):
        return float((a - b).norm() / b.norm().clamp_min(1e-30))

    fast = rows["bfloat16_sdpa"]["ms"]
    return {
        "source": args.source,
        "batch": args.batch,
        "tokens": args.tokens,
        "variants": rows,
        "speedup_bf16_sdpa_vs_fp32_eager": round(rows["float32_eager"]["ms"] / fast, 3) if fast else None,
        "output_rel_error": rel(out, ref_out),
        "input_grad_rel_error": rel(grad, ref_grad),
        "output_max_abs_error": float((out - ref_out).abs().max()),
    }


def variant_cost(args: argparse.Namespace, out: Path) -> dict:
    cmd = [
        sys.executable,
        str(HERE / "bench_variant_cost.py"),
        "--variants",
        "frozen",
        "finetuned",
        "--batch",
        str(args.cost_batch),
        "--rounds",
        str(args.rounds),
        "--dtype",
        args.cost_dtype,
        "--img-size",
        str(args.img_size),
        "--model",
        args.vit,
        "--out",
        str(out / "variant_cost.md"),
    ]
    cmd += ["--llm-config", args.llm_config] if args.llm_config else ["--source", args.source_cost]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=args.part_timeout)
    if done.returncode != 0:
        raise RuntimeError(f"bench_variant_cost.py failed:\n{done.stderr[-3000:]}")
    return {"command": " ".join(cmd[1:]), "table": done.stdout.strip()}


def train_child(config: str, out_dir: str, steps: int, imports: list[str]) -> None:
    """In a child process: ``mmllm train`` for ``steps`` steps, then this process's peak GPU memory."""
    import torch

    from mmllm.cli import main as mmllm

    argv = [
        "train",
        *[a for name in imports for a in ("--import", name)],
        "--config",
        config,
        "--options",
        f"run.output_dir={out_dir}",
        f"run.max_steps={steps}",
        "run.log_every=1",
        "--overwrite",
    ]
    peak_reset(torch)
    code = mmllm(argv)
    print(json.dumps({"code": code, "peak_mib": peak_mib(torch)}))


def train_rate(args: argparse.Namespace, name: str, config: str, out: Path) -> dict:
    run_dir = out / f"train_{name}"
    cmd = [sys.executable, __file__, "--train-child", config, "--out", str(run_dir), "--steps", str(args.steps)]
    cmd += [a for i in args.imports for a in ("--import", i)]
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=args.part_timeout)
    wall = time.perf_counter() - t
    lines = [line for line in done.stdout.strip().splitlines() if line.startswith('{"code"')]
    if done.returncode != 0 or not lines or json.loads(lines[-1])["code"] != 0:
        raise RuntimeError(f"training {name} failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    secs = [r["sec_per_step"] for r in records if r.get("split") == "train" and "sec_per_step" in r]
    timed = secs[1:] or secs  # the first step includes warm-up
    return {
        "config": config,
        "steps": len(secs),
        "median_sec_per_step": statistics.median(timed),
        "steps_per_s": round(1 / statistics.median(timed), 3),
        "peak_mib": json.loads(lines[-1])["peak_mib"],
        "wall_s": round(wall, 1),
        "run_dir": str(run_dir),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU: checks the script, measures nothing")
    parser.add_argument("--source", default="random:576", help="block of the speed test (bench_block_speed --source)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=197)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--llm-config", default=None, help="cost benchmark: an architecture with random weights")
    parser.add_argument("--source-cost", default="smollm2-135m")
    parser.add_argument("--vit", default="vit_small_patch16_224_llm")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--cost-batch", type=int, default=64)
    parser.add_argument("--cost-dtype", default="bfloat16")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--train", nargs="*", default=None, metavar="NAME=CONFIG")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--import", dest="imports", action="append", default=[])
    parser.add_argument("--part-timeout", type=int, default=240)
    parser.add_argument("--train-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_child:
        train_child(args.train_child, args.out, args.steps, args.imports)
        return 0
    train = dict(TRAIN)
    if args.dry_run:
        args.source, args.batch, args.tokens, args.repeats = "random:128", 2, 8, 1
        args.vit, args.img_size, args.cost_batch, args.rounds, args.cost_dtype = (
            "vit_tiny_patch16_224_llm",
            64,
            1,
            1,
            "float32",
        )
        args.steps, args.imports = 3, [*args.imports, "toy_task"]
        tiny = Path(args.out or "results/gpu_check/dry_run") / "inputs"
        tiny.mkdir(parents=True, exist_ok=True)
        llm = {
            "model_type": "llama",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "vocab_size": 16,
        }
        (tiny / "llm.json").write_text(json.dumps(llm))
        args.llm_config = args.llm_config or str(tiny / "llm.json")
        (tiny / "toy.yaml").write_text(
            json.dumps(
                {
                    "model": {
                        "width": 16,
                        "llm_block": {
                            "kind": "random_frozen",
                            "layers": "last",
                            "dtype": "float32",
                            "llm_config": {**llm, "hidden_size": 16, "intermediate_size": 32},
                        },
                    },
                    "datasets": {"toy_tokens": {"num_train": 32, "num_test": 8}},
                    "run": {
                        "task": "toy_tokens",
                        "batch_size_train": 4,
                        "batch_size_eval": 8,
                        "precision": "fp32",
                        "init_lr": 1e-2,
                    },
                }
            )
        )
        train = {"toy": str(tiny / "toy.yaml")}
    if args.train is not None:
        train = dict(item.split("=", 1) for item in args.train)
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    out = Path(args.out or f"results/gpu_check/{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"device": device, "torch": torch.__version__, "dry_run": args.dry_run, "parts": {}}
    parts = [("block", lambda: block_speed(args)), ("variant_cost", lambda: variant_cost(args, out))]
    parts += [(f"train_{name}", lambda n=name, c=config: train_rate(args, n, c, out)) for name, config in train.items()]
    failed = False
    for name, part in parts:
        t = time.perf_counter()
        try:
            result = part()
        except Exception as exc:  # noqa: BLE001 - one failed part must not cost the others
            failed = True
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        result["part_wall_s"] = round(time.perf_counter() - t, 1)
        summary["parts"][name] = result
        (out / f"{name}.json").write_text(json.dumps(result, indent=1))
        print(
            f"{name}: {'FAILED ' + result['error'] if 'error' in result else 'ok'} ({result['part_wall_s']} s)",
            flush=True,
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"results in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
