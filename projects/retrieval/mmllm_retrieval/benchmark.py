"""The image–text retrieval benchmark: Karpathy-format captions (COCO, Flickr30k, the embedded emoji set),
Recall@K in both directions.

Every retrieval model (METER's ITC + ITM re-ranking, VLAP's word-embedding space) reads this one data section,
``datasets.mmllm_retrieval``. The training split holds image–caption pairs; an evaluated split holds the images
and captions of its file (text order = caption order in the file). A model's evaluation is its two score
matrices, scored here: ``scores_<split>.npz`` (what ``projects/retrieval/evaluate.py --scores`` reads) and
``recall_<split>.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from mmllm.data.captions import CaptionDataOptions, CaptionPairs, load_captions
from mmllm.data.images import load_image
from mmllm.engine import distributed
from mmllm.engine.benchmark import Benchmark
from mmllm.engine.evaluation import PredictionSet
from mmllm.engine.preprocess import Preprocess
from mmllm.engine.registry import registered_benchmark
from mmllm.errors import ConfigError
from mmllm.jsonio import write_json

from .metrics import caption_index, retrieval_metrics


class RetrievalEvalSet:
    """Images and texts of a Karpathy val/test file; text order = caption order in the file.

    An evaluation split (:class:`~mmllm.engine.splits.EvalSplit`) of images: ``ids`` are the image
    paths (a hub split's: ``<hub id>/<filename>``), ``len()`` the number of images, ``head(n)`` the first ``n`` images with all their captions
    (the recalls of that smaller gallery: every query still has its own positives)."""

    def __init__(self, items, transform):
        self.items = items
        self.transform = transform
        self.texts = [c for item in items for c in item.captions]
        self.img2txt, self.txt2img = caption_index([len(item.captions) for item in items])

    def __len__(self) -> int:
        return len(self.items)

    @property
    def ids(self) -> list[str]:
        return [item.image_path for item in self.items]

    def head(self, n: int) -> RetrievalEvalSet:
        return RetrievalEvalSet(self.items[:n], self.transform)

    def images(self) -> Dataset:
        return _View(len(self.items), lambda i: {"index": i, "image": self.transform(load_image(self.items[i].image))})

    def captions(self) -> Dataset:
        return _View(len(self.texts), lambda t: {"index": t, "caption": self.texts[t]})


class _View(Dataset):
    """A sized, indexable view for the evaluation loops (images or captions of an eval set)."""

    def __init__(self, size: int, get):
        self.size, self.get = size, get

    def __len__(self) -> int:
        return self.size

    @property
    def ids(self) -> range:
        """Image or caption indices (captions: their order in the annotation file)."""
        return range(self.size)

    def __getitem__(self, i):
        return self.get(i)


def check_eval_set(dataset, split: str, task: str) -> None:
    """Retrieval ranks the images and captions of a val/test file; the train split holds caption pairs."""
    if not isinstance(dataset, RetrievalEvalSet):
        raise ConfigError(
            f"split {split!r} of task {task!r} is not an evaluation split ({type(dataset).__name__}: "
            "image-caption pairs); evaluate a val/test split"
        )


@registered_benchmark(
    "mmllm_retrieval",
    metric="r_mean",
    preparers={"twemoji": "mmllm_retrieval.emoji_convert:ensure_converted"},
    dataset_aliases=("mmllm_retrieval_vlap",),  # VLAP's section before the benchmark had one
    description="Karpathy-format image-caption files (COCO, Flickr30k, the embedded emoji set); Recall@K",
)
class RetrievalBenchmark(Benchmark):
    DataOptions = CaptionDataOptions
    data: CaptionDataOptions

    def build_datasets(self, preprocess: Preprocess) -> dict[str, Dataset]:
        out: dict[str, Any] = {}
        for name, spec in self.data.splits.items():
            items = load_captions(spec, self.data.check_images)
            out[name] = (
                CaptionPairs(items, preprocess.train) if name == "train" else RetrievalEvalSet(items, preprocess.eval)
            )
        return out

    def score(self, predictions: PredictionSet, dataset: Dataset, split: str, out_dir: Path) -> dict[str, float]:
        raise ConfigError(
            "retrieval scores a model's two score matrices (RetrievalBenchmark.score_rankings), "
            "not one prediction per item"
        )

    def score_rankings(
        self,
        scores_i2t: np.ndarray,
        scores_t2i: np.ndarray,
        dataset: RetrievalEvalSet,
        split: str,
        out_dir: Path,
        report: dict[str, Any] | None = None,
    ) -> dict[str, float]:
        """Recall@1/5/10 both ways and their mean (rounded to 2 places) of ``scores_i2t`` [images x texts] and
        ``scores_t2i`` [texts x images]; rank 0 writes them (``scores_<split>.npz``) and the recalls with the
        model's ``report`` (``recall_<split>.json``)."""
        metrics = retrieval_metrics(scores_i2t, scores_t2i, dataset.img2txt, dataset.txt2img)
        if distributed.is_main():
            np.savez(Path(out_dir) / f"scores_{split}.npz", scores_i2t=scores_i2t, scores_t2i=scores_t2i)
            write_json(Path(out_dir) / f"recall_{split}.json", {**metrics, **(report or {})})
        return {k: round(v, 2) for k, v in metrics.items()}
