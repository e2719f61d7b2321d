"""Registry entry of the core's own task: METER's ITM + MLM VL pretraining."""
from pathlib import Path

from ..engine.registry import InsertionDepths, TaskEntry

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = Path(__file__).resolve().parents[1] / "lavis" / "defaults"


def entries() -> list[TaskEntry]:
    return [TaskEntry(
        name="mmllm_itm_mlm", task="mmllm.tasks.pretrain:ITMMLMTask", dataset="mmllm_captions",
        model_arch="mmllm_meter_pretrain", metric="itm_acc",
        default_config=ROOT / "configs/vqa/easyvqa_pretrain_itm_mlm.yaml",
        lavis_model_config=DEFAULTS / "mmllm_meter_pretrain.yaml",
        lavis_dataset_config=DEFAULTS / "mmllm_captions.yaml",
        insertion_depths=InsertionDepths(fixed={"head": ("model.llm_block_at=before_fusion",), "tail": ("model.llm_block_at=after_fusion",)}),
        variants={"block": ()},
        description="METER stage 1: image-text matching + masked language modelling on Karpathy-format captions",
    )]
