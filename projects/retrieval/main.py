"""Retrieval on the embedded emoji data with and without the frozen SmolLM2 block, then the leaderboard.

    python projects/retrieval/main.py [--runs runs] [--options ...]
"""
import sys
from pathlib import Path

from mmllm.engine.cli import run_variants

HERE = Path(__file__).resolve().parent
VARIANTS = {
    "emoji_smollm2_block": [],
    "emoji_no_block": ["model.llm_block.kind=none"],
}

if __name__ == "__main__":
    sys.exit(run_variants(HERE / "train.py", HERE.parents[1] / "configs/retrieval/emoji_meter_smollm2.yaml", VARIANTS, __doc__))
