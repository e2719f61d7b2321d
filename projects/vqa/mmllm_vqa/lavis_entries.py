"""LAVIS registration of the VQA project (entry point ``mmllm.lavis``): model ``mmllm_meter_vqa``,
task ``mmllm_vqa`` (official-parity VQA accuracy), dataset builder ``mmllm_vqa`` (VQAv2 format)."""
from pathlib import Path

from mmllm.config import to_dict
from mmllm.lavis.adapters import LavisEntry

DEFAULTS = Path(__file__).resolve().parent / "lavis_defaults"


def _model(model_cfg):
    from .model import create_vqa_model

    return create_vqa_model(to_dict(model_cfg), int(model_cfg.get("num_answers", 3129)))[0]


def entries() -> list[LavisEntry]:
    from .task import VQATask

    return [LavisEntry(VQATask, "mmllm_vqa", "mmllm_meter_vqa", "mmllm_vqa",
                       DEFAULTS / "mmllm_meter_vqa.yaml", DEFAULTS / "mmllm_vqa.yaml", _model,
                       preparers=(("easy_vqa", "mmllm_vqa.easy_vqa_convert:ensure_converted"),))]
