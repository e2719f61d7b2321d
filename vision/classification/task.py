"""Image classification task for the shared engine: typed options, transforms, datasets, loss, evaluation."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import timm
import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, field_validator
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_transform
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from mmllm.engine import distributed
from mmllm.engine.evaluation import predict_split
from mmllm.engine.preprocess import Preprocess
from mmllm.engine.registry import InsertionDepths, registered_task
from mmllm.engine.task import DataSection, Task
from mmllm.errors import ConfigError, DataError
from mmllm.jsonio import write_json

from .data import ClassificationSplit, ImageFolderSplit, collate, load_corrupted
from .evaluate import corruption_summary, topk_accuracy
from .model import ClsModelOptions, create_vit_cls_model

RANDAUGMENT = re.compile(r"rand(-(m|n|mstd|mmax|inc|p)\d+(\.\d+)?|-t\w+)*")


class ClsDataOptions(DataSection):
    """``datasets.mmllm_image_cls`` section: folders, input size/normalisation, augmentation (DeiT recipe)."""

    splits: dict[str, str] = Field(
        default_factory=lambda: {"train": "train", "val": "val", "test": "test"},
        description="split -> ImageFolder folder (relative to root); train required",
    )
    corrupted: str | None = Field(
        None,
        description="ImageNet-C-style folder <corruption>/<severity>/<class>/ "
        "(relative to root), evaluated with the test split",
    )
    per_class: dict[str, PositiveInt] = Field(
        default_factory=dict, description="split (or 'corrupted') -> keep the first N images per class"
    )
    verify_images: bool = Field(False, description="decode every image when the datasets are built")
    image_size: PositiveInt | None = Field(
        None, description="default: model.vit_kwargs.img_size, else timm's input size"
    )
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD
    interpolation: Literal["bicubic", "bilinear", "nearest"] = "bicubic"
    crop_pct: float = Field(0.875, gt=0, le=1, description="eval: resize to size/crop_pct, centre crop")
    # --- training augmentation (timm's create_transform); DeiT: randaugment rand-m9-mstd0.5-inc1, reprob 0.25
    augment: bool = Field(True, description="False: training images get the eval transform")
    scale: tuple[float, float] = Field((0.08, 1.0), description="RandomResizedCrop area range")
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = Field(0.5, ge=0, le=1)
    color_jitter: float = Field(0.4, ge=0, description="ignored by timm when randaugment is set")
    randaugment: str | None = Field(None, description="timm auto-augment string, e.g. rand-m9-mstd0.5-inc1")
    reprob: float = Field(0.0, ge=0, le=1, description="random erasing probability")
    # --- batch mixing (timm's Mixup; DeiT: mixup 0.8, cutmix 1.0)
    mixup_alpha: float = Field(0.0, ge=0)
    cutmix_alpha: float = Field(0.0, ge=0)
    mixup_prob: float = Field(1.0, ge=0, le=1)
    mixup_switch_prob: float = Field(0.5, ge=0, le=1)

    @field_validator("randaugment")
    @classmethod
    def _randaugment(cls, value: str | None) -> str | None:
        """timm skips sections it cannot parse ('rand-zz' would be RandAugment with defaults): check the grammar."""
        if value is not None and not RANDAUGMENT.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a timm RandAugment string like 'rand-m9-mstd0.5-inc1' "
                "(sections m, n, mstd, mmax, inc, p followed by a number, or t<name>)"
            )
        return value

    @field_validator("splits")
    @classmethod
    def _train_split(cls, value: dict[str, str]) -> dict[str, str]:
        if "train" not in value:
            raise ValueError("splits needs a 'train' folder")
        return value


ROOT = Path(__file__).resolve().parents[2]


@registered_task(
    "mmllm_image_cls",
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
class ImageClassificationTask(Task):
    """A timm ViT (+ the block after ViT block k) trained with cross-entropy on ImageFolder data;
    evaluated by top-1/top-5 and, on the test split, accuracy on the corrupted copies."""

    ModelOptions = ClsModelOptions
    DataOptions = ClsDataOptions
    compute_dtype_inputs = ("images",)
    model_cfg: ClsModelOptions
    data_cfg: ClsDataOptions

    def __init__(self, cfg, entry=None):
        super().__init__(cfg, entry)
        self.train_transform = self.eval_transform = None
        self.mixup: Mixup | None = None
        self._classes: list[str] | None = None

    # ------------------------------------------------------------------ config-derived pieces
    def folder(self, relative: str) -> Path:
        path = Path(relative)
        if path.is_absolute():
            return path
        if not self.data_cfg.root:
            raise ConfigError(f"datasets.{self.dataset_key}.root is needed for the relative folder {relative!r}")
        return Path(self.data_cfg.root) / path

    def classes(self) -> list[str]:
        """The training class list (sorted class folders of the train split)."""
        if self._classes is None:
            train = self.folder(self.data_cfg.splits["train"])
            if not train.is_dir():
                raise DataError(f"datasets.{self.dataset_key}: train folder {train} does not exist")
            self._classes = sorted(e.name for e in os.scandir(train) if e.is_dir() and not e.name.startswith("."))
            if not self._classes:
                raise DataError(f"datasets.{self.dataset_key}: {train} has no class sub-folders")
        return self._classes

    def num_classes(self) -> int:
        found = len(self.classes())
        wanted = self.model_cfg.num_classes
        if wanted is not None and wanted != found:
            raise ConfigError(f"model.num_classes={wanted} but the train split has {found} class folders")
        return found

    def image_size(self) -> int:
        if self.data_cfg.image_size:
            return self.data_cfg.image_size
        size = self.model_cfg.vit_kwargs.get("img_size")
        if size is None:
            cfg = timm.get_pretrained_cfg(self.model_cfg.vit)
            if cfg is None:
                raise ConfigError(
                    f"set datasets.{self.dataset_key}.image_size: timm has no default size for {self.model_cfg.vit}"
                )
            size = cfg.input_size[-1]
        if not isinstance(size, int):
            raise ConfigError(f"model.vit_kwargs.img_size must be one int (square images), got {size!r}")
        return size

    def build_preprocess(self) -> Preprocess:
        """Train/eval transforms (timm's create_transform) and the batch Mixup, from the config alone."""
        d = self.data_cfg
        size = self.image_size()
        if len(d.mean) != len(d.std):
            raise ConfigError(f"datasets.{self.dataset_key}: mean {d.mean} and std {d.std} differ in length")
        common = dict(input_size=size, interpolation=d.interpolation, mean=tuple(d.mean), std=tuple(d.std))
        self.eval_transform = create_transform(is_training=False, crop_pct=d.crop_pct, **common)
        if d.augment:
            try:
                self.train_transform = create_transform(
                    is_training=True,
                    scale=tuple(d.scale),
                    ratio=tuple(d.ratio),
                    hflip=d.hflip,
                    color_jitter=d.color_jitter,
                    auto_augment=d.randaugment,
                    re_prob=d.reprob,
                    **common,
                )
            except (AssertionError, ValueError, KeyError) as exc:
                raise ConfigError(
                    f"datasets.{self.dataset_key}: bad augmentation option ({exc!r}); "
                    f"randaugment looks like 'rand-m9-mstd0.5-inc1'"
                ) from exc
        else:
            self.train_transform = self.eval_transform
        if d.mixup_alpha > 0 or d.cutmix_alpha > 0:
            if self.run.batch_size_train % 2:
                raise ConfigError(f"mixup/cutmix need an even run.batch_size_train, got {self.run.batch_size_train}")
            self.mixup = Mixup(
                mixup_alpha=d.mixup_alpha,
                cutmix_alpha=d.cutmix_alpha,
                prob=d.mixup_prob,
                switch_prob=d.mixup_switch_prob,
                label_smoothing=self.model_cfg.label_smoothing,
                num_classes=self.num_classes(),
            )
        return Preprocess(train=self.train_transform, eval=self.eval_transform)

    def build_model(self) -> nn.Module:
        return create_vit_cls_model(self.model_cfg, self.num_classes())

    def build_datasets(self) -> dict[str, Any]:
        pre, d, key = self.preprocess, self.data_cfg, self.dataset_key
        train = ImageFolderSplit(
            self.folder(d.splits["train"]),
            None,
            d.per_class.get("train"),
            pre.train,
            d.verify_images,
            what=f"datasets.{key} train",
        )
        self._classes = train.classes
        self.num_classes()
        unknown = sorted(set(d.per_class) - set(d.splits) - {"corrupted"})
        if unknown:
            raise ConfigError(f"datasets.{key}.per_class: {unknown} name no split (splits: {sorted(d.splits)})")
        out: dict[str, Any] = {"train": train}
        for name, relative in d.splits.items():
            if name == "train":
                continue
            images = ImageFolderSplit(
                self.folder(relative),
                train.classes,
                d.per_class.get(name),
                pre.eval,
                d.verify_images,
                what=f"datasets.{key} {name}",
            )
            corrupted = None
            if name == "test" and d.corrupted:
                corrupted = load_corrupted(
                    self.folder(d.corrupted),
                    train.classes,
                    pre.eval,
                    d.per_class.get("corrupted"),
                    d.verify_images,
                )
            out[name] = ClassificationSplit(name, images, corrupted)
        if d.corrupted and "test" not in d.splits:
            raise ConfigError(f"datasets.{key}.corrupted is evaluated with the test split, but splits has no 'test'")
        return out

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return collate(samples)

    # ------------------------------------------------------------------ objective
    def training_loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        images, labels = batch["images"], batch["labels"]
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)  # soft targets, label smoothing included
            return SoftTargetCrossEntropy()(model(images).float(), targets), {}
        logits = model(images).float()
        return F.cross_entropy(logits, labels, label_smoothing=self.model_cfg.label_smoothing), {}

    # ------------------------------------------------------------------ evaluation
    def predict_logits(self, model: nn.Module, dataset: ImageFolderSplit, desc: str) -> tuple[np.ndarray, np.ndarray]:
        """(logits float32 [N, C], labels [N]) in dataset order, every image exactly once."""

        keys = dataset.ids

        def step(m, batch):
            logits = m(batch["images"]).float().cpu().numpy()
            return ((keys[i], row) for i, row in zip(batch["index"].tolist(), zip(logits, batch["labels"].tolist())))

        rows = list(
            predict_split(model, dataset, self.collate, self.run.batch_size_eval, step, desc, task=self).values()
        )
        return np.stack([r[0] for r in rows]), np.array([r[1] for r in rows], dtype=np.int64)

    def evaluate(self, model: nn.Module, dataset, split: str, out_dir: Path) -> dict[str, float]:
        images = dataset.images if isinstance(dataset, ClassificationSplit) else dataset
        logits, labels = self.predict_logits(model, images, f"eval {split}")
        metrics = topk_accuracy(logits, labels)
        per_severity: dict[tuple[str, int], float] = {}
        for (name, severity), corrupted in getattr(dataset, "corrupted", {}).items():
            c_logits, c_labels = self.predict_logits(model, corrupted, f"eval {split} {name}/{severity}")
            per_severity[(name, severity)] = topk_accuracy(c_logits, c_labels, ks=(1,))["top1"]
        metrics.update(corruption_summary(per_severity))
        if distributed.is_main():
            out_dir = Path(out_dir)
            save_predictions(out_dir / f"predictions_{split}.npz", logits, labels, images.keys, images.classes)
            write_json(
                out_dir / f"metrics_{split}.json",
                {
                    **metrics,
                    "num_samples": len(labels),
                    "corrupted_top1_by_severity": {f"{n}/{s}": v for (n, s), v in sorted(per_severity.items())},
                },
            )
        return metrics


def save_predictions(path: Path, logits: np.ndarray, labels: np.ndarray, keys: list[str], classes: list[str]) -> None:
    """The evaluate CLI's predictions format, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                logits=logits.astype(np.float32),
                labels=labels,
                paths=np.array(keys, dtype=str),
                classes=np.array(classes, dtype=str),
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
