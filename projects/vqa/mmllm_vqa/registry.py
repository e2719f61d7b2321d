"""Registry entry of 2D VQA (VQAv2 format; embedded easy-VQA)."""
from pathlib import Path

from mmllm.engine.registry import TaskEntry

ROOT = Path(__file__).resolve().parents[3]
DEFAULTS = Path(__file__).resolve().parent / "lavis_defaults"


def entries() -> list[TaskEntry]:
    return [TaskEntry(
        name="mmllm_vqa", task="mmllm_vqa.task:VQATask", dataset="mmllm_vqa", model_arch="mmllm_meter_vqa",
        metric="accuracy", default_config=ROOT / "configs/vqa/easyvqa_meter_smollm2.yaml",
        preparers={"easy_vqa": "mmllm_vqa.easy_vqa_convert:ensure_converted"},
        lavis_model_config=DEFAULTS / "mmllm_meter_vqa.yaml", lavis_dataset_config=DEFAULTS / "mmllm_vqa.yaml",
        description="METER-style VQA with the frozen LLM block after fusion; official VQA accuracy",
    )]
