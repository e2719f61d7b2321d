"""Train a 3D VQA config (``run.task: mmllm_3dvqa``): the same as ``mmllm train``.

python projects/3dvqa/train.py --config configs/3dvqa/scenes_meter_smollm2.yaml [--options run.max_steps=100 ...]
deepspeed --num_gpus 2 projects/3dvqa/train.py --config ...      (on CPU: DS_ACCELERATOR=cpu, gloo)
"""

import sys

from mmllm.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main(description=__doc__))
