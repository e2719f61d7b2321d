"""The motion-forecasting main job: the embedded simulated scenes with and without the frozen SmolLM2
block, then the leaderboard (the same as ``mmllm main --task mmllm_motion``; lower is better).

    python -m vision.motion.main [--runs runs] [--options run.max_steps=100 ...] [--only block ...]
"""

import sys

from mmllm.cli import variants_main

if __name__ == "__main__":
    sys.exit(variants_main("mmllm_motion", description=__doc__))
