"""Retrieval on the embedded emoji data with and without the frozen SmolLM2 block, then the
leaderboard (the same as ``mmllm main --task mmllm_retrieval``).

    python projects/retrieval/main.py [--runs runs] [--options ...]
"""

import sys

from mmllm.cli import variants_main

if __name__ == "__main__":
    sys.exit(variants_main("mmllm_retrieval", description=__doc__))
