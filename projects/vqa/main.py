"""The main job: easy-VQA with and without the frozen SmolLM2 block, then the leaderboard.

    python projects/vqa/main.py [--runs runs] [--options run.max_steps=400 ...] [--only NAME ...]

Each run trains (DeepSpeed, CPU or GPU) and evaluates on the easy-VQA test split with the
official VQA accuracy; the leaderboard table is printed at the end.
"""
import sys
from pathlib import Path

from mmllm.engine.cli import run_variants

HERE = Path(__file__).resolve().parent
VARIANTS = {
    "easyvqa_smollm2_block": [],
    "easyvqa_no_block": ["model.llm_block.kind=none"],
}

if __name__ == "__main__":
    sys.exit(run_variants(HERE / "train.py", HERE.parents[1] / "configs/vqa/easyvqa_meter_smollm2.yaml", VARIANTS, __doc__))
