"""What ``dtype: auto`` / ``run.precision: auto`` picks on this machine, and why: the CPU's name,
a fresh run of the micro-benchmark (forward+backward of one frozen SmolLM2-shaped decoder layer
on 4x197 visual tokens, SDPA) in bf16 and fp32, and the choice.

    python benchmarks/bench_precision.py [--repeats 5] [--save]

``--save`` stores this measurement as the machine's cached choice ($MMLLM_CACHE/precision.json).
"""

from __future__ import annotations

import argparse
import json

import torch

from mmllm import precision


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--save", action="store_true", help="replace the cached choice with this measurement")
    args = parser.parse_args()
    print(f"CPU: {precision.cpu_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()} -> auto = {precision.resolve_dtype('auto')} (no measurement)")
    timings = precision.benchmark_cpu_dtypes(repeats=args.repeats, budget_s=60.0)
    for name, ms in timings.items():
        print(f"{name:9s}: {ms:8.1f} ms forward+backward")
    faster = min(timings, key=timings.get)
    slower = max(timings, key=timings.get)
    print(f"faster on this CPU: {faster} ({timings[slower] / timings[faster]:.2f}x)")
    cached = (
        json.loads(precision.cache_path().read_text()).get(precision.machine_key())
        if precision.cache_path().is_file()
        else None
    )
    print(f"cached choice ({precision.cache_path()}): {cached['choice'] if cached else 'none yet'}")
    if args.save:
        print(f"saved: CPU auto = {precision.store_cpu_choice(timings)}")
    else:
        print(f"CPU auto resolves to: {precision.resolve_dtype('auto', 'cpu')}")


if __name__ == "__main__":
    main()
