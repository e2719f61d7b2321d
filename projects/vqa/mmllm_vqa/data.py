"""VQAv2-format data: questions JSON + annotations JSON + an image folder.

The same loader reads real VQAv2 (COCO images, ``COCO_{split}2014_{image_id:012d}.jpg``)
and the embedded easy-VQA conversion; only ``image_pattern`` differs.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from mmllm.data.images import ImageRef, check_images_exist, image_transform, load_image
from mmllm.errors import ConfigError, DataError
from mmllm.jsonio import read_json

from .metrics import normalize_answer

COCO_PATTERN = "COCO_{split}2014_{image_id:012d}.jpg"


def load_json_records(path: str | Path, field: str) -> list[dict[str, Any]]:
    """Records under ``field`` of a VQAv2 JSON file, checked to be JSON objects (plain JSON: the
    records are used as Python dicts, so an Arrow round trip would only cost time)."""
    path = Path(path)
    head = read_json(path, f"{field} file")
    if not isinstance(head, dict) or field not in head or not isinstance(head[field], list):
        raise DataError(f"{path}: expected a JSON object with a list under {field!r} (VQAv2 format)")
    records = head[field]
    kinds: dict[str, str] = {}
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(
                f"{path}: inconsistent records under {field!r}: item {i} is a {type(record).__name__}, not an object"
            )
        for key, value in record.items():  # one type per key, as a table column would need
            kind = "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value).__name__
            if value is not None and kinds.setdefault(key, kind) != kind:
                raise DataError(
                    f"{path}: inconsistent records under {field!r}: item {i} has {key!r} of type "
                    f"{kind}, earlier items {kinds[key]}"
                )
    return records


def _require(record: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise DataError(f"{where}: record {record.get('question_id', '?')} lacks {missing}")


@dataclass
class VQASplit:
    """One split joined: every question with its image path and (if annotated) its answers."""

    name: str
    questions: list[dict[str, Any]]
    annotations: dict[int, dict[str, Any]] | None

    def annotation_list(self) -> list[dict[str, Any]]:
        return [self.annotations[q["question_id"]] for q in self.questions] if self.annotations else []


def question_image(question: dict[str, Any]) -> ImageRef:
    """A question's image: its file, or the image source of a hub row (:mod:`.hub`)."""
    source = question.get("image_source")  # (a distinct key: a questions file may hold its own "image")
    return source if source is not None else question["image_path"]


def load_split(
    name: str,
    questions: str | Path,
    annotations: str | Path | None,
    image_root: str | Path,
    image_pattern: str = COCO_PATTERN,
    image_split: str | None = None,
    check_images: bool = True,
) -> VQASplit:
    qs = load_json_records(questions, "questions")
    if not qs:
        raise DataError(f"{questions}: the question list of split {name!r} is empty")
    for q in qs:
        _require(q, ("question_id", "image_id", "question"), str(questions))
    root = Path(image_root)
    for q in qs:
        q["image_path"] = str(root / image_pattern.format(image_id=q["image_id"], split=image_split or name))
    if check_images:
        check_images_exist([Path(q["image_path"]) for q in qs], f"split {name!r} ({root})")
    anns = None
    if annotations:
        records = load_json_records(annotations, "annotations")
        for a in records:
            _require(a, ("question_id", "answers", "question_type", "answer_type"), str(annotations))
        anns = {}
        for a in records:
            if a["question_id"] in anns:
                raise DataError(f"{annotations}: question {a['question_id']} is annotated twice")
            anns[a["question_id"]] = a
        unannotated = [q["question_id"] for q in qs if q["question_id"] not in anns]
        if unannotated:
            raise DataError(
                f"{questions}: {len(unannotated)} question(s) have no annotation in {annotations}, e.g. {unannotated[:5]}"
            )
    return VQASplit(name, qs, anns)


def build_answer_vocab(split: VQASplit, top_k: int) -> list[str]:
    """The ``top_k`` most frequent normalised annotator answers (ties: alphabetical), as METER's 3129."""
    if not split.annotations:
        raise DataError("the answer vocabulary needs an annotated training split")
    counts = Counter(normalize_answer(a["answer"]) for ann in split.annotations.values() for a in ann["answers"])
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [answer for answer, _ in ranked[:top_k]]


def _meter_score(n: int) -> float:
    """METER/ViLT's ``get_score``: 0.3, 0.6, 0.9, 1.0 for 1, 2, 3, >= 4 annotators. With 10 annotators this
    is exactly the official accuracy of that answer (the mean of min(1, matches/3) over the 10
    leave-one-out subsets of 9), which min(1, n/3) overstates for n = 1, 2, 3."""
    return (0.0, 0.3, 0.6, 0.9)[n] if n < 4 else 1.0


def _vqa_min3_score(n: int) -> float:
    """The VQA accuracy formula without the leave-one-out average: min(1, n / 3)."""
    return min(1.0, n / 3)


# named soft-target schemes (``datasets.mmllm_vqa.soft_score``)
SOFT_SCORES = {"meter": _meter_score, "vqa_min3": _vqa_min3_score}


def soft_scores(answers: list[dict], vocab_index: dict[str, int], scheme: str = "meter") -> dict[int, float]:
    """VQA soft targets {answer index: score} from the count of annotators giving each (normalised)
    answer: ``meter`` (0.3/0.6/0.9/1.0 for 1/2/3/>=4, METER's and ViLT's training targets) or
    ``vqa_min3`` (min(1, n/3))."""
    if scheme not in SOFT_SCORES:
        raise ConfigError(f"datasets.mmllm_vqa.soft_score must be one of {sorted(SOFT_SCORES)}, got {scheme!r}")
    score = SOFT_SCORES[scheme]
    counts = Counter(normalize_answer(a["answer"]) for a in answers)
    return {vocab_index[ans]: score(n) for ans, n in counts.items() if ans in vocab_index}


class VQADataset(Dataset):
    def __init__(self, split: VQASplit, vocab: list[str], image_size: int, mean, std, soft_score: str = "meter"):
        self.split = split
        self.vocab = vocab
        self.index = {a: i for i, a in enumerate(vocab)}
        self.transform = image_transform(image_size, mean, std)
        self._targets = None
        if split.annotations:
            self._targets = [
                soft_scores(split.annotations[q["question_id"]]["answers"], self.index, soft_score)
                for q in split.questions
            ]

    def __len__(self) -> int:
        return len(self.split.questions)

    @property
    def ids(self) -> list[int]:
        return [q["question_id"] for q in self.split.questions]

    def head(self, n: int) -> VQADataset:
        """The first ``n`` questions, scored against their own annotations (``run.max_eval_samples``)."""
        part = copy.copy(self)
        part.split = dataclasses.replace(self.split, questions=self.split.questions[:n])
        part._targets = None if self._targets is None else self._targets[:n]
        return part

    def __getitem__(self, i: int) -> dict[str, Any]:
        q = self.split.questions[i]
        item = {
            "image": self.transform(load_image(question_image(q))),
            "question": q["question"],
            "question_id": q["question_id"],
        }
        if self._targets is not None:
            item["target"] = self._targets[i]
        return item


def make_collate(tokenizer, num_answers: int, max_text_len: int = 40):
    def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
        text = tokenizer(
            [s["question"] for s in samples],
            padding="longest",
            truncation=True,
            max_length=max_text_len,
            return_tensors="pt",
        )
        batch = {
            "images": torch.stack([s["image"] for s in samples]),
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "question_id": torch.tensor([s["question_id"] for s in samples]),
        }
        if "target" in samples[0]:
            targets = torch.zeros(len(samples), num_answers)
            for row, s in enumerate(samples):
                for idx, score in s["target"].items():
                    targets[row, idx] = score
            batch["targets"] = targets
        return batch

    return collate
