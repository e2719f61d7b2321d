"""Registry entry of point-cloud classification (ModelNet40 / ScanObjectNN formats; embedded pybullet clouds)."""

from pathlib import Path

from mmllm.engine.registry import InsertionDepths, TaskEntry

ROOT = Path(__file__).resolve().parents[2]


def entries() -> list[TaskEntry]:
    return [
        TaskEntry(
            name="mmllm_pointcloud_cls",
            task="vision.pointcloud.task:PointCloudClsTask",
            dataset="mmllm_pointcloud_cls",
            model_arch="mmllm_pointbert_cls",
            metric="oa",
            higher_is_better=True,
            default_config=ROOT / "configs/vision/pointcloud_pybullet.yaml",
            preparers={"pybullet_pointcloud": "vision.pointcloud.data:prepare_pybullet"},
            insertion_depths=InsertionDepths("model.insert_after", "model.depth", offset=0),
            description="Point-BERT-style point-cloud classifier with the frozen LLM block after transformer block k; "
            "overall / mean class accuracy (clean and ScanObjectNN-like hard split)",
        )
    ]
