"""Registry entry of 3D VQA (SQA3D / ScanQA formats; embedded pybullet scenes)."""
from pathlib import Path

from mmllm.engine.registry import TaskEntry

ROOT = Path(__file__).resolve().parents[3]
DEFAULTS = Path(__file__).resolve().parent / "lavis_defaults"


def entries() -> list[TaskEntry]:
    return [TaskEntry(
        name="mmllm_3dvqa", task="mmllm_3dvqa.task:SceneQATask", dataset="mmllm_3dvqa",
        model_arch="mmllm_meter_3dvqa", metric="em1", higher_is_better=True,
        default_config=ROOT / "configs/3dvqa/scenes_meter_smollm2.yaml",
        preparers={"pb_scenes": "mmllm_3dvqa.scenes:ensure_generated"},
        lavis_model_config=DEFAULTS / "mmllm_meter_3dvqa.yaml", lavis_dataset_config=DEFAULTS / "mmllm_3dvqa.yaml",
        variants={
            "block": (),
            "no_block": ("model.llm_block.kind=none",),
            "no_situation": ("datasets.mmllm_3dvqa.blank_situation=true",),  # with the block, situation text dropped
        },
        description="3D VQA: point-cloud scene tokens + MiniLM situation/question, METER co-attention, "
                    "the frozen LLM block on the fused 3D tokens; EM@1/EM@10 (ScanQA/SQA3D)",
    )]
