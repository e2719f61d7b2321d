"""Action recognition for the shared engine: a video ViT with the LLM block, cross-entropy training,
multi-view top-1/top-5 evaluation (VideoMAE's protocol)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torch.utils.data import Dataset

from mmllm.engine import distributed
from mmllm.engine.evaluation import predict_split
from mmllm.engine.preprocess import Preprocess
from mmllm.engine.registry import InsertionDepths, registered_task
from mmllm.engine.run_config import RunConfig
from mmllm.engine.task import Task
from mmllm.errors import ConfigError
from mmllm.jsonio import write_json

from .data import ActionDataOptions, ClipSampler, ClipTransform, build_datasets
from .evaluate import action_metrics
from .model import VideoViTOptions, create_videovit_model


class ActionRunOptions(RunConfig):
    label_smoothing: float | None = Field(None, description="moved: model.label_smoothing (as every classifier)")

    @model_validator(mode="after")
    def _moved(self) -> ActionRunOptions:
        if self.label_smoothing is not None:
            raise ValueError(
                "run.label_smoothing moved to model.label_smoothing (the loss is the model's, as in "
                "image and point-cloud classification)"
            )
        return self


ROOT = Path(__file__).resolve().parents[2]


@registered_task(
    "mmllm_action",
    model_arch="mmllm_videovit_cls",
    metric="top1",
    higher_is_better=True,
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
)
class ActionRecognitionTask(Task):
    ModelOptions = VideoViTOptions
    DataOptions = ActionDataOptions
    RunOptions = ActionRunOptions
    compute_dtype_inputs = ("video",)  # pixels follow the model's dtype; labels are integers

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        m, d, key = self.model_cfg, self.data_cfg, f"datasets.{self.dataset_key}"
        if m.num_frames != d.num_frames:
            raise ConfigError(f"model.num_frames ({m.num_frames}) must equal {key}.num_frames ({d.num_frames})")
        if m.img_size != d.input_size:
            raise ConfigError(f"model.img_size ({m.img_size}) must equal {key}.input_size ({d.input_size})")
        if m.in_chans != 3:
            raise ConfigError(f"model.in_chans must be 3: videos are decoded as RGB, got {m.in_chans}")
        self.sampler: ClipSampler | None = None
        self.transform: ClipTransform | None = None

    def build_preprocess(self) -> Preprocess:
        """The clip sampler and the clip transform (``.train(frames)``, ``.crops(frames, n)``: one object
        for training and evaluation)."""
        d = self.data_cfg
        self.sampler = ClipSampler(d.sampling_mode, d.num_frames, d.sampling_rate)
        self.transform = ClipTransform(d.input_size, d.mean, d.std, d.train_crop_scale, d.train_crop_ratio, d.flip)
        return Preprocess.shared(self.transform)

    def build_model(self) -> nn.Module:
        return create_videovit_model(self.model_cfg)

    def build_datasets(self) -> dict[str, Dataset]:
        transform = self.preprocess.eval  # the call-order check: build_preprocess made the sampler too
        return build_datasets(self.data_cfg, self.model_cfg.num_classes, self.sampler, transform)

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "video": torch.stack([s["video"] for s in samples]),
            "labels": torch.tensor([s["label"] for s in samples], dtype=torch.long),
            "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
        }

    def training_loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(batch["video"]).float()
        loss = F.cross_entropy(logits, batch["labels"], label_smoothing=self.model_cfg.label_smoothing)
        accuracy = (logits.argmax(-1) == batch["labels"]).float().mean().item()
        return loss, {"train_acc": round(accuracy * 100, 2)}

    @torch.no_grad()
    def view_logits(self, model: nn.Module, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
        """(logits [N, V, K] of every view of every video, labels [N]) in dataset order, on every rank."""

        def step(m, batch):
            video = batch["video"]  # [B, V, C, T, H, W]
            logits = m(video.flatten(0, 1)).float().view(video.shape[0], video.shape[1], -1)
            return zip(batch["index"].tolist(), zip(logits.cpu().numpy(), batch["labels"].tolist()))

        rows = list(
            predict_split(
                model,
                dataset,
                self.collate,
                self.run.batch_size_eval,
                step,
                "eval views",
                task=self,
                ids=range(len(dataset)),
            ).values()
        )
        return np.stack([r[0] for r in rows]), np.array([r[1] for r in rows], dtype=np.int64)

    def evaluate(self, model: nn.Module, dataset: Dataset, split: str, out_dir: Path) -> dict[str, float]:
        logits, labels = self.view_logits(model, dataset)
        metrics = action_metrics(labels, logits=logits)
        if distributed.is_main():
            out_dir = Path(out_dir)
            tmp = out_dir / f".scores_{split}.tmp.npz"
            np.savez_compressed(tmp, logits=logits.astype(np.float32), labels=labels)
            tmp.replace(out_dir / f"scores_{split}.npz")
            write_json(out_dir / f"metrics_{split}.json", metrics)
        return {k: v for k, v in metrics.items() if k.startswith("top")}
