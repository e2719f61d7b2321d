"""Image captioning as a benchmark: Karpathy-format caption files, one generated caption per image,
scored by exact match. It is the evaluation of LLaVA's stage 1 (projector pre-training on
image–caption pairs) and knows no model.

Metric, kept honest and simple: ``exact_match`` = % of images whose generated caption, lower-cased
with outer spaces and a final period stripped, equals one of the image's reference captions. On
easy-VQA's label captions ("a red circle") that is the share of images whose shape and colour both come
out right; a paraphrase would score 0, which is why it is not a metric for free-form captions
(CIDEr is what COCO uses; it is not needed for captions of one fixed form).
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

from pydantic import Field
from torch.utils.data import Dataset

from mmllm.data.captions import CaptionedImage, CaptionPairs, CaptionSplit, load_captions
from mmllm.data.images import load_image
from mmllm.engine import distributed
from mmllm.engine.benchmark import Benchmark
from mmllm.engine.evaluation import PredictionSet
from mmllm.engine.preprocess import Preprocess
from mmllm.engine.registry import registered_benchmark
from mmllm.errors import DataError
from mmllm.jsonio import write_json
from mmllm.schema import DataSection


class CaptioningDataOptions(DataSection):
    """Caption splits (``train`` trained on, one item per caption; the others scored, one item per image)."""

    splits: dict[str, CaptionSplit]
    check_images: bool = True
    eval_limit: int | None = Field(
        None, gt=0, description="score a fixed random subset of this many images per evaluated split; null = all"
    )
    eval_subset_seed: int = Field(0, description="the seed drawing that subset (fixed: every run scores the same)")


def normalize_caption(text: str) -> str:
    """Lower case, inner spaces collapsed, outer spaces and a final period stripped."""
    return " ".join(text.lower().split()).rstrip(".").strip()


def exact_match(generated: str, references: list[str]) -> bool:
    return normalize_caption(generated) in {normalize_caption(r) for r in references}


@dataclasses.dataclass
class CaptionImages(Dataset):
    """An evaluation split: one item per image (id = its path), its captions as the references."""

    items: list[CaptionedImage]
    transform: Any

    def __len__(self) -> int:
        return len(self.items)

    @property
    def ids(self) -> list[str]:
        return [i.image_path for i in self.items]

    def head(self, n: int) -> CaptionImages:
        return CaptionImages(self.items[:n], self.transform)

    def __getitem__(self, n: int) -> dict[str, Any]:
        item = self.items[n]
        return {"image": self.transform(load_image(item.image)), "image_id": item.image_path, "captions": item.captions}


@registered_benchmark(
    "mmllm_captioning",
    metric="exact_match",
    preparers={"easy_vqa_captions": "mmllm_vqa.easy_vqa_captions:ensure_converted"},
    description="image captioning (Karpathy format; easy-VQA's captions from its labels); exact match",
)
class CaptioningBenchmark(Benchmark):
    DataOptions = CaptioningDataOptions
    data: CaptioningDataOptions

    def images(self, name: str) -> list[CaptionedImage]:
        """Split ``name``'s images; an evaluated split is the fixed ``eval_limit`` subset when one is set."""
        d = self.data
        if name not in d.splits:
            raise DataError(f"{self.section}.splits has no split {name!r} (splits: {sorted(d.splits)})")
        items = load_captions(d.splits[name], d.check_images)
        if name != "train" and d.eval_limit is not None and d.eval_limit < len(items):
            chosen = set(random.Random(d.eval_subset_seed).sample(range(len(items)), d.eval_limit))
            items = [item for i, item in enumerate(items) if i in chosen]
        return items

    def build_datasets(self, preprocess: Preprocess) -> dict[str, Dataset]:
        return {
            name: CaptionPairs(self.images(name), preprocess.train)
            if name == "train"
            else CaptionImages(self.images(name), preprocess.eval)
            for name in self.data.splits
        }

    def score(self, predictions: PredictionSet, dataset: Dataset, split: str, out_dir: Path) -> dict[str, float]:
        """``captions_<split>.json`` (image, generated, references, match) and the exact-match rate."""
        if not isinstance(dataset, CaptionImages):
            raise DataError(
                f"split {split}: captions are scored per image (CaptionImages), got {type(dataset).__name__}"
            )
        references = {i.image_path: i.captions for i in dataset.items}
        rows = [
            {"image": k, "caption": v, "references": references[k], "match": exact_match(v, references[k])}
            for k, v in predictions.items()
        ]
        if distributed.is_main():
            write_json(Path(out_dir) / f"captions_{split}.json", rows)
        hits = sum(r["match"] for r in rows)
        return {"exact_match": round(100 * hits / max(1, len(rows)), 2), "images": float(len(rows))}
