"""The main job: easy-VQA with and without the frozen SmolLM2 block, then the leaderboard.

    python projects/vqa/main.py [--runs runs] [--options run.max_steps=400 ...]

Each run trains (DeepSpeed, CPU or GPU) and evaluates on the easy-VQA test split with the
official VQA accuracy; the leaderboard table is printed at the end.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parents[1] / "configs" / "vqa" / "easyvqa_meter_smollm2.yaml"
VARIANTS = {
    "easyvqa_smollm2_block": [],
    "easyvqa_no_block": ["model.llm_block.kind=none"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs")
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--options", nargs="*", default=[])
    args = parser.parse_args()
    for name, extra in VARIANTS.items():
        out = Path(args.runs) / name
        print(f"=== {name}", flush=True)
        cmd = [sys.executable, str(HERE / "train.py"), "--config", args.config, "--options",
               f"run.output_dir={out}", *extra, *args.options]
        subprocess.run(cmd, check=True)
    from mmllm.cli import main as cli

    return cli(["leaderboard", "--runs", args.runs])


if __name__ == "__main__":
    sys.exit(main())
