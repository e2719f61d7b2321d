"""LAVIS registration of the core's own task: ITM + MLM pretraining (entry point ``mmllm.lavis``)."""
from pathlib import Path

from ..config import to_dict
from .adapters import LavisEntry

DEFAULTS = Path(__file__).resolve().parent / "defaults"


def _pretrain_model(model_cfg):
    from ..models.meter import build_meter_backbone
    from ..models.pretrain_heads import PretrainModel

    backbone, tokenizer = build_meter_backbone(to_dict(model_cfg))
    return PretrainModel(backbone, len(tokenizer))


def entries() -> list[LavisEntry]:
    from ..tasks.pretrain import ITMMLMTask

    return [LavisEntry(ITMMLMTask, "mmllm_itm_mlm", "mmllm_meter_pretrain", "mmllm_captions",
                       DEFAULTS / "mmllm_meter_pretrain.yaml", DEFAULTS / "mmllm_captions.yaml", _pretrain_model,
                       preparers=(("easy_vqa", "mmllm_vqa.easy_vqa_convert:ensure_converted"),
                                  ("twemoji", "mmllm_retrieval.emoji_convert:ensure_converted")))]
