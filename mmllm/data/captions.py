"""Image–caption data in the Karpathy-split format used by LAVIS/ALBEF for COCO and Flickr30k:
train files hold one caption per row ``{"image", "caption", "image_id"?}``; val/test files
hold ``{"image", "caption": [...]}`` per image. Captions are grouped per image either way.

The same splits from the hub (:mod:`.hub_datasets`), one image per row with its caption list:
``coco_karpathy`` (yerevann/coco-karpathy: ``sentences``, ``filepath``, ``filename``; the images are
files under ``image_root``) and ``flickr30k`` (nlphuji/flickr30k: ``caption``, ``filename`` and the
image itself; its Karpathy split is the ``split`` column: ``where: {split: test}``)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import model_validator
from torch.utils.data import Dataset

from ..errors import DataError
from ..jsonio import read_json
from ..schema import DataSection, Section
from .hub_datasets import HubSplitSpec, iter_rows, open_hub_split
from .images import ImageRef, ImageSource, check_images_exist, load_image


class CaptionSplit(Section):
    """A Karpathy-format annotation file with its image folder, or a hub split (``hub``)."""

    annotation: str | None = None
    image_root: str | None = None
    hub: HubSplitSpec | None = None

    @model_validator(mode="after")
    def _one_source(self) -> CaptionSplit:
        if (self.annotation is None) == (self.hub is None):
            raise ValueError("give either annotation (with image_root) or hub, not both or neither")
        if self.annotation is not None and self.image_root is None:
            raise ValueError("annotation needs image_root")
        return self


class CaptionDataOptions(DataSection):
    """A ``datasets.<name>`` section of Karpathy-format caption data (pretraining, retrieval)."""

    splits: dict[str, CaptionSplit]
    check_images: bool = True
    max_text_len: int = 40
    mlm_probability: float = 0.15


@dataclass
class CaptionedImage:
    """An image and its captions; ``image_path`` is its id (a file, or where a hub row came from),
    ``source`` the image when it is not a file of its own."""

    image_path: str
    captions: list[str] = field(default_factory=list)
    source: ImageSource | None = None

    @property
    def image(self) -> ImageRef:
        """What :func:`~mmllm.data.images.load_image` reads."""
        return self.source if self.source is not None else self.image_path


def load_karpathy(annotation: str | Path, image_root: str | Path, check_images: bool = True) -> list[CaptionedImage]:
    """Images with their captions, in first-appearance order (which defines text indices in evaluation)."""
    annotation = Path(annotation)
    rows = read_json(annotation, "annotation file")
    if not isinstance(rows, list):
        raise DataError(f"{annotation}: expected a JSON list of {{'image', 'caption'}} records (Karpathy format)")
    grouped: dict[str, CaptionedImage] = {}
    for n, row in enumerate(rows):
        if not isinstance(row, dict) or "image" not in row or "caption" not in row:
            raise DataError(f"{annotation}: record {n} lacks 'image' or 'caption'")
        caps = row["caption"] if isinstance(row["caption"], list) else [row["caption"]]
        if not caps or any(not isinstance(c, str) or not c.strip() for c in caps):
            raise DataError(f"{annotation}: record {n} ({row['image']}) has an empty caption list or an empty caption")
        path = str(Path(image_root) / row["image"])
        grouped.setdefault(path, CaptionedImage(path)).captions.extend(caps)
    items = list(grouped.values())
    if check_images:
        check_images_exist([Path(i.image_path) for i in items], str(annotation))
    return items


def load_captions(spec: CaptionSplit, check_images: bool = True) -> list[CaptionedImage]:
    """A caption split from its annotation file or its hub split, as the same records."""
    if spec.hub is not None:
        return load_hub_captions(spec.hub, spec.image_root, check_images)
    assert spec.annotation is not None and spec.image_root is not None  # the section's validator
    return load_karpathy(spec.annotation, spec.image_root, check_images)


# a layout: (image id, captions, image source or None for a file named by the id) per row
_HubRows = Callable[[HubSplitSpec, str | None], Iterator[tuple[str, Any, ImageSource | None]]]


def _coco_karpathy_rows(spec: HubSplitSpec, image_root: str | None):
    """yerevann/coco-karpathy: captions under ``sentences``, the image a COCO file ``filepath/filename``."""
    if image_root is None:
        raise DataError(f"{spec.describe()}: layout coco_karpathy holds no images: set the split's image_root")
    table = open_hub_split(spec, ("sentences", "filepath", "filename"))
    for row in iter_rows(table, ("sentences", "filepath", "filename"), None, spec.describe()):
        yield str(Path(image_root) / row["filepath"] / row["filename"]), row["sentences"], None


def _flickr30k_rows(spec: HubSplitSpec, image_root: str | None):
    """nlphuji/flickr30k (lmms-lab/flickr30k too): captions under ``caption``, the image in the row."""
    table = open_hub_split(spec, ("caption", "filename"), "image")
    for row in iter_rows(table, ("caption", "filename"), "image", spec.describe()):
        yield f"{spec.path}/{row['filename']}", row["caption"], row["image"]


CAPTION_LAYOUTS: dict[str, _HubRows] = {"coco_karpathy": _coco_karpathy_rows, "flickr30k": _flickr30k_rows}


def load_hub_captions(spec: HubSplitSpec, image_root: str | None, check_images: bool = True) -> list[CaptionedImage]:
    """A hub caption split as :class:`CaptionedImage` records, in row order, refused as the file reader
    refuses (an empty caption list or caption, a missing image file)."""
    if spec.layout not in CAPTION_LAYOUTS:
        raise DataError(f"{spec.describe()}: unknown caption layout {spec.layout!r} (known: {sorted(CAPTION_LAYOUTS)})")
    grouped: dict[str, CaptionedImage] = {}
    for key, captions, source in CAPTION_LAYOUTS[spec.layout](spec, image_root):
        if not _nonempty_captions(captions):
            raise DataError(f"{spec.describe()}: image {key} has an empty caption list or an empty caption")
        grouped.setdefault(key, CaptionedImage(key, source=source)).captions.extend(captions)
    items = list(grouped.values())
    if check_images:
        check_images_exist([Path(i.image_path) for i in items if i.source is None], spec.describe())
    return items


def _nonempty_captions(captions: Any) -> bool:
    return isinstance(captions, list) and bool(captions) and all(isinstance(c, str) and c.strip() for c in captions)


class CaptionPairs(Dataset):
    """One (image, caption) pair per caption; ``image_index`` tells which captions share an image
    (retrieval's contrastive loss treats them as positives of each other)."""

    def __init__(self, items: list[CaptionedImage], transform):
        self.pairs = [(i, item.image, cap) for i, item in enumerate(items) for cap in item.captions]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def ids(self) -> range:
        """Pair indices (caption order in the annotation file)."""
        return range(len(self.pairs))

    def head(self, n: int) -> CaptionPairs:
        """The first ``n`` pairs (an evaluation split of pretraining: :class:`mmllm.engine.splits.EvalSplit`)."""
        part = copy.copy(self)
        part.pairs = self.pairs[:n]
        return part

    def __getitem__(self, n: int) -> dict:
        i, image, caption = self.pairs[n]
        return {"image": self.transform(load_image(image)), "caption": caption, "image_index": i}
