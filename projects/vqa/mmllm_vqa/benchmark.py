"""The VQA benchmark: VQAv2-format questions, annotations and images (files, or a hub split: :mod:`.hub`),
the official VQA accuracy.

Every VQA model (METER's classifier, the LLaVA/LLaViT generative path, VLAP) reads this one data
section, ``datasets.mmllm_vqa``, and is scored here: one answer string per question, every question of
the split exactly once, results written in the official results format (``results_<split>.json``) and
scored by the official evaluator's rules (:mod:`.metrics`, which normalises each answer itself).
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from torch.utils.data import Dataset

from mmllm.data.hub_datasets import HubSplitSpec
from mmllm.data.images import load_image
from mmllm.engine import distributed
from mmllm.engine.benchmark import Benchmark
from mmllm.engine.evaluation import PredictionSet
from mmllm.engine.preprocess import Preprocess
from mmllm.engine.registry import registered_benchmark
from mmllm.errors import DataError
from mmllm.jsonio import write_json
from mmllm.schema import DataSection, Section

from . import metrics
from .data import COCO_PATTERN, VQASplit, load_split, question_image
from .hub import load_hub_vqa_split


class VQASplitSpec(Section):
    """A split's questions (+ annotations) files and images, or a hub split (``hub``, :mod:`.hub`)."""

    questions: str | None = None
    annotations: str | None = None
    image_root: str | None = None
    image_pattern: str | None = None
    image_split: str | None = None
    hub: HubSplitSpec | None = None

    @model_validator(mode="after")
    def _one_source(self) -> VQASplitSpec:
        if (self.questions is None) == (self.hub is None):
            raise ValueError("give either questions (with annotations, image_root) or hub, not both or neither")
        return self


class VQADataOptions(DataSection):
    """The benchmark's keys; a model adds its own answer-side keys in a subclass (METER's vocabulary,
    the generative path's answer length)."""

    splits: dict[str, VQASplitSpec]
    image_root: str | None = None
    image_pattern: str = COCO_PATTERN
    check_images: bool = True
    eval_limit: int | None = Field(
        None,
        gt=0,
        description="score a fixed random subset of this many questions per evaluated split (CPU budgets); null = all",
    )
    eval_subset_seed: int = Field(
        0,
        description="the seed drawing that subset: fixed, not run.seed, so runs of "
        "every seed and every model are scored on the same questions",
    )


class VQAQuestions(Dataset):
    """One split's questions as items every VQA model reads: the transformed image, the question, its id
    and (annotated splits) the annotators' answers. An evaluation split (:class:`~mmllm.engine.splits.EvalSplit`)."""

    def __init__(self, split: VQASplit, transform):
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split.questions)

    @property
    def ids(self) -> list[int]:
        return [q["question_id"] for q in self.split.questions]

    def head(self, n: int) -> VQAQuestions:
        """The first ``n`` questions (``run.max_eval_samples``)."""
        return VQAQuestions(dataclasses.replace(self.split, questions=self.split.questions[:n]), self.transform)

    def __getitem__(self, i: int) -> dict[str, Any]:
        q = self.split.questions[i]
        item = {
            "image": self.transform(load_image(question_image(q))),
            "question": q["question"],
            "question_id": q["question_id"],
        }
        if self.split.annotations:
            item["answers"] = [a["answer"] for a in self.split.annotations[q["question_id"]]["answers"]]
        return item


@registered_benchmark(
    "mmllm_vqa",
    metric="accuracy",
    preparers={"easy_vqa": "mmllm_vqa.easy_vqa_convert:ensure_converted"},
    dataset_aliases=("mmllm_vqa_generative", "mmllm_vqa_vlap"),  # the generative models' sections before one
    description="VQAv2 format (real VQAv2 or the embedded easy-VQA); official VQA accuracy",
)
class VQABenchmark(Benchmark):
    DataOptions = VQADataOptions
    data: VQADataOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._splits: dict[str, VQASplit] = {}

    def split(self, name: str) -> VQASplit:
        """Split ``name`` joined (questions, image paths, annotations); an evaluated split (not ``train``)
        is the fixed ``eval_limit`` subset when one is set."""
        if name not in self._splits:
            d = self.data
            if name not in d.splits:
                raise DataError(f"{self.section}.splits has no split {name!r} (splits: {sorted(d.splits)})")
            split = self._load(name, d.splits[name])
            if name != "train" and d.eval_limit is not None and d.eval_limit < len(split.questions):
                rng = random.Random(d.eval_subset_seed)
                chosen = sorted(rng.sample(split.questions, d.eval_limit), key=lambda q: q["question_id"])
                split = dataclasses.replace(split, questions=chosen)
            self._splits[name] = split
        return self._splits[name]

    def _load(self, name: str, spec: VQASplitSpec) -> VQASplit:
        """Split ``name`` from its hub split or from its files."""
        if spec.hub is not None:
            return load_hub_vqa_split(name, spec.hub)
        root = spec.image_root or self.data.image_root
        if root is None:
            raise DataError(f"{self.section}.splits.{name} needs image_root")
        assert spec.questions is not None  # the section's validator
        return load_split(
            name,
            spec.questions,
            spec.annotations,
            root,
            spec.image_pattern or self.data.image_pattern,
            spec.image_split,
            self.data.check_images,
        )

    def build_datasets(self, preprocess: Preprocess) -> dict[str, Dataset]:
        return {
            name: VQAQuestions(self.split(name), preprocess.train if name == "train" else preprocess.eval)
            for name in self.data.splits
        }

    def score(self, predictions: PredictionSet, dataset: Dataset, split: str, out_dir: Path) -> dict[str, float]:
        """``results_<split>.json`` (official results format) and, on an annotated split, the official
        accuracy of the questions answered (``accuracy_<split>.json``)."""
        answers = dict(predictions)
        if distributed.is_main():
            write_json(
                out_dir / f"results_{split}.json", [{"question_id": q, "answer": a} for q, a in sorted(answers.items())]
            )
        annotations = getattr(getattr(dataset, "split", None), "annotations", None)
        if not annotations:
            return {}
        acc = metrics.evaluate([annotations[q] for q in predictions.ids], answers, f"split {split}")
        if distributed.is_main():
            write_json(out_dir / f"accuracy_{split}.json", {**acc, "questions": len(answers)})
        return {
            "accuracy": acc["overall"],
            "questions": float(len(answers)),
            **{f"acc_{k}": v for k, v in acc["perAnswerType"].items()},
        }
