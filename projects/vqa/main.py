"""The main job: easy-VQA with and without the frozen SmolLM2 block, then the leaderboard
(the same as ``mmllm main --task mmllm_vqa``).

    python projects/vqa/main.py [--runs runs] [--options run.max_steps=400 ...] [--only block ...]

Each run trains (DeepSpeed, CPU or GPU) and evaluates on the easy-VQA test split with the
official VQA accuracy; the leaderboard table is printed at the end.
"""

import sys

from mmllm.cli import variants_main

if __name__ == "__main__":
    sys.exit(variants_main("mmllm_vqa", description=__doc__))
