"""Train a task config (retrieval: ``run.task: mmllm_retrieval``; VL pretraining: ``mmllm_itm_mlm``): the same as ``mmllm train``.

python projects/retrieval/train.py --config configs/retrieval/emoji_meter_smollm2.yaml [--options run.max_epoch=2 ...]
deepspeed --num_gpus 2 projects/retrieval/train.py --config ...      (on CPU: DS_ACCELERATOR=cpu, gloo)
"""

import sys

from mmllm.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main(description=__doc__))
