"""Registry entry of image classification (ImageFolder / ImageNet-style data; embedded MNIST)."""

from pathlib import Path

from mmllm.engine.registry import InsertionDepths, TaskEntry

ROOT = Path(__file__).resolve().parents[2]


def entries() -> list[TaskEntry]:
    return [
        TaskEntry(
            name="mmllm_image_cls",
            task="vision.classification.task:ImageClassificationTask",
            dataset="mmllm_image_cls",
            model_arch="mmllm_vit_cls",
            metric="top1",
            higher_is_better=True,
            default_config=ROOT / "configs/vision/image_cls_mnist.yaml",
            preparers={"mnist": "vision.classification.data:prepare_mnist"},
            analysis="vision.classification.analysis:analysis_inputs",
            insertion_depths=InsertionDepths("model.insert_after", "model.vit_kwargs.depth", offset=-1),
            variants={"block": (), "no_block": ("model.llm_block.kind=none",)},
            description="timm ViT/DeiT with the LLM block after ViT block k; top-1/top-5 and corrupted-set accuracy",
        )
    ]
