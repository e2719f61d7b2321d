"""The point-cloud main job: the embedded pybullet clouds with and without the frozen SmolLM2 block,
then the leaderboard (the same as ``mmllm main --task mmllm_pointcloud_cls``).

    python -m vision.pointcloud.main [--runs runs] [--options run.max_steps=300 ...] [--only block ...]
"""

import sys

from mmllm.cli import variants_main

if __name__ == "__main__":
    sys.exit(variants_main("mmllm_pointcloud_cls", description=__doc__))
