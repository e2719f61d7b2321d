"""Train a task config (VQA: ``run.task: mmllm_vqa``; VL pretraining: ``mmllm_itm_mlm``): the same as ``mmllm train``.

python projects/vqa/train.py --config configs/vqa/easyvqa_meter_smollm2.yaml [--options run.max_epoch=2 ...]
deepspeed --num_gpus 2 projects/vqa/train.py --config ...      (on CPU: DS_ACCELERATOR=cpu, gloo)
"""

import sys

from mmllm.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main(description=__doc__))
