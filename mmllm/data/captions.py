"""Image–caption data in the Karpathy-split format used by LAVIS/ALBEF for COCO and Flickr30k:
train files hold one caption per row ``{"image", "caption", "image_id"?}``; val/test files
hold ``{"image", "caption": [...]}`` per image. Captions are grouped per image either way."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import Dataset

from ..errors import DataError
from ..jsonio import read_json
from ..schema import DataSection, Section
from .images import check_images_exist, load_image


class CaptionSplit(Section):
    annotation: str
    image_root: str


class CaptionDataOptions(DataSection):
    """A ``datasets.<name>`` section of Karpathy-format caption data (pretraining, retrieval)."""

    splits: dict[str, CaptionSplit]
    check_images: bool = True
    max_text_len: int = 40
    mlm_probability: float = 0.15


@dataclass
class CaptionedImage:
    image_path: str
    captions: list[str] = field(default_factory=list)


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


class CaptionPairs(Dataset):
    """One (image, caption) pair per caption; ``image_index`` tells which captions share an image
    (retrieval's contrastive loss treats them as positives of each other)."""

    def __init__(self, items: list[CaptionedImage], transform):
        self.pairs = [(i, item.image_path, cap) for i, item in enumerate(items) for cap in item.captions]
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
        i, path, caption = self.pairs[n]
        return {"image": self.transform(load_image(path)), "caption": caption, "image_index": i}
