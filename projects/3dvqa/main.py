"""The 3D VQA main job: the embedded pybullet scenes with the frozen SmolLM2 block, without it, and with
the block but without the situation text, then the leaderboard (the same as ``mmllm main --task mmllm_3dvqa``).

    python projects/3dvqa/main.py [--runs runs] [--options run.max_steps=300 ...] [--only block no_block ...]

Each run trains (DeepSpeed, CPU or GPU) and evaluates EM@1/EM@10 on the test scenes.
"""

import sys

from mmllm.cli import variants_main

if __name__ == "__main__":
    sys.exit(variants_main("mmllm_3dvqa", description=__doc__))
