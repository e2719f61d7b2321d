"""ImageFolder splits with errors that name the folder or file: read by the task's data (:mod:`.data`)
and by the corrupted-copy writer (:mod:`.corruptions`), so it sits below both."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, DatasetFolder

from mmllm.data.images import load_image
from mmllm.errors import DataError


def _is_image_file(path: str) -> bool:
    """An image by extension; hidden files (macOS ``._x.png`` resource forks) are not images."""
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


class ImageFolderSplit(DatasetFolder):
    """One split in ImageFolder layout, with errors that name the folder or file.

    ``classes``: the class list the split must have (the training split's); ``per_class``:
    keep only the first N images of each class (sorted file order: deterministic);
    ``verify``: decode every image now rather than when first used. Hidden folders
    (``.ipynb_checkpoints``) are not classes, hidden files not images.
    """

    def __init__(
        self,
        root: str | Path,
        classes: list[str] | None = None,
        per_class: int | None = None,
        transform: Callable | None = None,
        verify: bool = False,
        what: str = "split",
    ):
        root = Path(root)
        self.what = what
        self.expected_classes = list(classes) if classes is not None else None
        if not root.is_dir():
            raise DataError(f"{what}: folder {root} does not exist")
        super().__init__(str(root), loader=load_image, is_valid_file=_is_image_file, transform=transform)
        if per_class is not None:
            if per_class <= 0:
                raise DataError(f"{what}: per_class must be positive, got {per_class}")
            kept, seen = [], {}
            for path, label in self.samples:
                seen[label] = seen.get(label, 0) + 1
                if seen[label] <= per_class:
                    kept.append((path, label))
            self.samples = kept
        self.targets = [label for _, label in self.samples]
        self.keys = [Path(path).relative_to(root).as_posix() for path, _ in self.samples]
        if verify:
            for index in range(len(self.samples)):
                self.load(index)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise DataError(f"{self.what}: {directory} has no class sub-folders (expected <class>/<image> files)")
        if self.expected_classes is not None and classes != self.expected_classes:
            missing = sorted(set(self.expected_classes) - set(classes))
            extra = sorted(set(classes) - set(self.expected_classes))
            raise DataError(
                f"{self.what}: the classes of {directory} differ from the training classes: "
                f"missing {missing[:10]}, not in the training class list {extra[:10]}"
            )
        return classes, {name: i for i, name in enumerate(classes)}

    def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        samples = super().make_dataset(directory, class_to_idx, extensions, is_valid_file, allow_empty=True)
        counts = np.bincount([label for _, label in samples], minlength=len(class_to_idx))
        empty = [name for name, i in class_to_idx.items() if counts[i] == 0]
        if empty:
            shown = ", ".join(str(Path(directory) / name) for name in empty[:5])
            raise DataError(f"{self.what}: empty class folder(s) {shown} (no {'/'.join(IMG_EXTENSIONS)} image)")
        return samples

    @property
    def ids(self) -> list[str]:
        """Each image's path relative to the split folder (an :class:`~mmllm.engine.splits.EvalSplit`)."""
        return self.keys

    def head(self, n: int) -> ImageFolderSplit:
        """The first ``n`` images in file order (class folders sorted; ``per_class`` keeps classes balanced)."""
        part = copy.copy(self)
        part.samples = part.imgs = self.samples[:n]
        part.targets, part.keys = self.targets[:n], self.keys[:n]
        return part

    def load(self, index: int) -> Image.Image:
        """The image at ``index`` (DataError naming the file if it does not decode)."""
        return load_image(self.samples[index][0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.load(index)
        if self.transform is not None:
            image = self.transform(image)
        return {"image": image, "label": self.samples[index][1], "index": index}
