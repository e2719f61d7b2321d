"""Point-cloud classification task for the shared engine (ModelNet40 / ScanObjectNN / embedded pybullet set)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from mmllm.engine import distributed
from mmllm.engine.evaluation import predict_split
from mmllm.engine.preprocess import Preprocess
from mmllm.engine.registry import InsertionDepths, registered_task
from mmllm.engine.task import Task
from mmllm.errors import ConfigError
from mmllm.jsonio import write_json
from mmllm.models.point_groups import min_points_required

from .data import PointCloudDataOptions, PointCloudDataset, collate_clouds, load_class_names, load_source
from .evaluate import classification_metrics
from .model import PointBERTOptions, create_pointbert_model, point_bert_lr_multipliers

MAIN_SPLITS = ("train", "val", "test")


ROOT = Path(__file__).resolve().parents[2]


@registered_task(
    "mmllm_pointcloud_cls",
    model_arch="mmllm_pointbert_cls",
    metric="oa",
    higher_is_better=True,
    default_config=ROOT / "configs/vision/pointcloud_pybullet.yaml",
    preparers={"pybullet_pointcloud": "vision.pointcloud.data:prepare_pybullet"},
    insertion_depths=InsertionDepths("model.insert_after", "model.depth", offset=0),
    description="Point-BERT-style point-cloud classifier with the frozen LLM block after transformer block k; "
    "overall / mean class accuracy (clean and ScanObjectNN-like hard split)",
)
class PointCloudClsTask(Task):
    """Splits other than train/val/test (e.g. ``test_hard``) are scored together with ``test``:
    their metrics come back as ``hard_oa``/``hard_macc`` (the split name without ``test_``), so the
    run's summary holds ``test_oa``, ``test_macc``, ``test_hard_oa``, ``test_hard_macc``."""

    ModelOptions = PointBERTOptions
    DataOptions = PointCloudDataOptions
    compute_dtype_inputs = ()  # coordinates stay fp32; the model casts group features after grouping

    def __init__(self, cfg, entry=None):
        super().__init__(cfg, entry)
        self.classes: list[str] | None = None
        self._model_names: dict[str, nn.Parameter] | None = None
        self.datasets: dict[str, PointCloudDataset] = {}
        need = min_points_required(self.model_cfg.num_groups, self.model_cfg.group_size)
        if self.data_cfg.num_points < need:
            raise ConfigError(
                f"datasets.{self.dataset_key}.num_points={self.data_cfg.num_points} is too few for "
                f"model.num_groups={self.model_cfg.num_groups} groups of model.group_size={self.model_cfg.group_size} "
                f"points: overlapping kNN groups need at least max(num_groups, group_size) = {need}"
            )
        if self.model_cfg.recipe == "point_bert" and self.run.lr_multipliers:
            raise ConfigError(
                f"run.lr_multipliers={dict(self.run.lr_multipliers)} with model.recipe=point_bert: the recipe sets "
                "Point-BERT's own groups (tools/builder.py: adapters 0.5x, no-decay parameters 0.1x); remove "
                "run.lr_multipliers or use model.recipe=point_mae"
            )
        channels = 3 if self.data_cfg.use_normals else 0
        if self.model_cfg.in_channels != channels:
            raise ConfigError(
                f"model.in_channels={self.model_cfg.in_channels} but datasets.{self.dataset_key}."
                f"use_normals={self.data_cfg.use_normals} gives {channels} feature channels"
            )

    # --- data
    def build_preprocess(self) -> Preprocess:
        """The class list (from the config or its class-name file); clouds need no transform."""
        self.classes = load_class_names(self.data_cfg)
        return Preprocess()

    def _classes(self) -> list[str]:
        self.preprocess  # noqa: B018 - the call-order check: build_preprocess read the class list
        return self.classes

    def build_model(self) -> nn.Module:
        model = create_pointbert_model(self.model_cfg, len(self._classes()))
        self._model_names = {n: p for n, p in model.named_parameters()}
        return model

    def lr_multipliers(self) -> dict[str, float]:
        """``run.lr_multipliers``; with ``model.recipe: point_bert`` the parameter groups of the official
        ``tools/builder.py`` instead (:func:`~vision.pointcloud.model.point_bert_lr_multipliers`: adapters 0.5x,
        no-decay parameters 0.1x), which replace ``run.lr_multipliers`` (setting both is an error)."""
        if self.model_cfg.recipe != "point_bert":
            return super().lr_multipliers()
        names = self._model_names
        if names is None:
            raise ConfigError("lr_multipliers() of model.recipe=point_bert is read after build_model()")
        return point_bert_lr_multipliers(names.items())

    def build_datasets(self) -> dict[str, Dataset]:
        classes = self._classes()
        if "train" not in self.data_cfg.splits:
            raise ConfigError(f"datasets.{self.dataset_key}.splits needs a 'train' split")
        self.datasets = {
            name: PointCloudDataset(
                load_source(self.data_cfg, name, classes), self.data_cfg, train=name == "train", split=name
            )
            for name in self.data_cfg.splits
        }
        return dict(self.datasets)

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_clouds(samples)

    # --- objective
    @staticmethod
    def _logits(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return model(batch["points"], batch.get("features"))

    def training_loss(self, model, batch):
        logits = self._logits(model, batch).float()
        loss = F.cross_entropy(logits, batch["labels"], label_smoothing=self.model_cfg.label_smoothing)
        acc = (logits.argmax(-1) == batch["labels"]).float().mean().item()
        return loss, {"train_acc": 100.0 * acc}

    def predictions(self, model: nn.Module, dataset: PointCloudDataset) -> list[tuple[int, int]]:
        """``(index, predicted class)`` for every sample in dataset order, gathered from every rank."""

        def step(m, batch):
            return zip(batch["index"].tolist(), self._logits(m, batch).argmax(-1).tolist())

        found = predict_split(
            model,
            dataset,
            self.collate,
            self.run.batch_size_eval,
            step,
            desc=f"eval {dataset.split}",
            task=self,
            ids=range(len(dataset)),  # the batch carries indices; dataset.ids[i] names sample i in the result files
        )
        return list(found.items())

    def _score(self, model: nn.Module, dataset: PointCloudDataset, split: str, out_dir: Path) -> dict[str, float]:
        pairs = self.predictions(model, dataset)
        src, classes = dataset.source, dataset.classes
        labels = [int(src.labels[i]) for i, _ in pairs]
        metrics = classification_metrics(labels, [p for _, p in pairs])
        if distributed.is_main():
            write_json(
                Path(out_dir) / f"annotations_{split}.json",
                [{"id": src.ids[i], "label": classes[src.labels[i]]} for i, _ in pairs],
            )
            write_json(
                Path(out_dir) / f"results_{split}.json", [{"id": src.ids[i], "pred": classes[p]} for i, p in pairs]
            )
            write_json(
                Path(out_dir) / f"metrics_{split}.json",
                {**metrics, "per_class": {classes[int(k)]: v for k, v in metrics["per_class"].items()}},
            )
        return {"oa": metrics["oa"], "macc": metrics["macc"]}

    def evaluate(self, model, dataset, split: str, out_dir: Path) -> dict[str, float]:
        metrics = self._score(model, dataset, split, out_dir)
        if split == "test":
            for name, extra in self.datasets.items():
                if name not in MAIN_SPLITS:
                    short = name.removeprefix("test_")
                    metrics.update({f"{short}_{k}": v for k, v in self._score(model, extra, name, out_dir).items()})
        return metrics
