"""Train image–text retrieval (``run.task: mmllm_retrieval``) or VL-pretrain the backbone (``mmllm_itm_mlm``).

    python projects/retrieval/train.py --config configs/retrieval/emoji_meter_smollm2.yaml [--options ...]
    deepspeed --num_gpus 2 projects/retrieval/train.py --config ...
"""
from mmllm.engine.cli import train_main

TASKS = {"mmllm_retrieval": "mmllm_retrieval.task:RetrievalTask", "mmllm_itm_mlm": "mmllm.tasks.pretrain:ITMMLMTask"}
PREPARERS = {"twemoji": "mmllm_retrieval.emoji_convert:ensure_converted"}

if __name__ == "__main__":
    train_main(TASKS, PREPARERS, description=__doc__)
