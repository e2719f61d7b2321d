"""Train a VQA model (``run.task: mmllm_vqa``) or VL-pretrain its backbone (``run.task: mmllm_itm_mlm``)
from a LAVIS-style YAML config.

    python projects/vqa/train.py --config configs/vqa/easyvqa_meter_smollm2.yaml [--options run.max_epoch=2 ...]
    deepspeed --num_gpus 2 projects/vqa/train.py --config ...      (on CPU: DS_ACCELERATOR=cpu, gloo)
"""
from mmllm.engine.cli import train_main

TASKS = {"mmllm_vqa": "mmllm_vqa.task:VQATask", "mmllm_itm_mlm": "mmllm.tasks.pretrain:ITMMLMTask"}
PREPARERS = {"easy_vqa": "mmllm_vqa.easy_vqa_convert:ensure_converted"}

if __name__ == "__main__":
    train_main(TASKS, PREPARERS, description=__doc__)
