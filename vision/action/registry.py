"""Registry entry of action recognition (SSv2 / Kinetics formats; embedded MNIST-motion clips)."""
from pathlib import Path

from mmllm.engine.registry import InsertionDepths, TaskEntry

ROOT = Path(__file__).resolve().parents[2]


def entries() -> list[TaskEntry]:
    return [TaskEntry(
        name="mmllm_action", task="vision.action.task:ActionRecognitionTask", dataset="mmllm_action",
        model_arch="mmllm_videovit_cls", metric="top1", higher_is_better=True,
        default_config=ROOT / "configs/vision/action_mnist.yaml",
        preparers={"mnist_motion": "vision.action.data:prepare_mnist_motion"},
        insertion_depths=InsertionDepths("model.insert_after", "model.depth", offset=-1),
        variants={
            "block": (),
            "no_block": ("model.llm_block.kind=none",),
            # one frame per clip (a tubelet of one frame): the check that the motion, not a frame, is the class
            "single_frame": ("datasets.mmllm_action.num_frames=1", "model.num_frames=1", "model.tubelet_size=1"),
        },
        description="VideoMAE-style video ViT with the frozen LLM block after ViT block k; multi-view top-1/top-5",
    )]
