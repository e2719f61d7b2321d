"""The image-classification main job: embedded MNIST (low-data regime) with and without the frozen
SmolLM2 block, then the leaderboard (the same as ``mmllm main --task mmllm_image_cls``).

    python -m vision.classification.main [--runs runs] [--options run.max_steps=200 ...] [--only block ...]
"""

import sys

from mmllm.cli import variants_main

if __name__ == "__main__":
    sys.exit(variants_main("mmllm_image_cls", description=__doc__))
