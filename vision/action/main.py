"""The main job: MNIST-motion clips with the frozen SmolLM2 block, without it, and a single-frame
baseline (the block arm shown one frame), then the leaderboard (the same as ``mmllm main --task mmllm_action``).

    python -m vision.action.main [--runs runs/action] [--options run.max_steps=100 ...] [--only block ...]
"""

import sys

from mmllm.cli import variants_main

if __name__ == "__main__":
    sys.exit(variants_main("mmllm_action", description=__doc__))
