"""VQAv2-format data: questions JSON + annotations JSON + an image folder.

The same loader reads real VQAv2 (COCO images, ``COCO_{split}2014_{image_id:012d}.jpg``)
and the embedded easy-VQA conversion; only ``image_pattern`` differs.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from mmllm.data.images import check_images_exist, image_transform, load_image
from mmllm.errors import DataError
from mmllm.jsonio import read_json

from .vqa_eval import normalize_answer

COCO_PATTERN = "COCO_{split}2014_{image_id:012d}.jpg"


def load_json_records(path: str | Path, field: str) -> list[dict[str, Any]]:
    """Records under ``field`` of a VQAv2 JSON file, read with the ``datasets`` library (Arrow-cached)."""
    import datasets

    path = Path(path)
    head = read_json(path, f"{field} file")
    if not isinstance(head, dict) or field not in head or not isinstance(head[field], list):
        raise DataError(f"{path}: expected a JSON object with a list under {field!r} (VQAv2 format)")
    if not head[field]:
        return []
    try:
        table = datasets.Dataset.from_list(head[field])
    except Exception as exc:  # arrow type errors: inconsistent records
        raise DataError(f"{path}: inconsistent records under {field!r}: {exc}") from exc
    return table.to_list()


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


def load_split(name: str, questions: str | Path, annotations: str | Path | None, image_root: str | Path,
               image_pattern: str = COCO_PATTERN, image_split: str | None = None, check_images: bool = True) -> VQASplit:
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
            raise DataError(f"{questions}: {len(unannotated)} question(s) have no annotation in {annotations}, e.g. {unannotated[:5]}")
    return VQASplit(name, qs, anns)


def build_answer_vocab(split: VQASplit, top_k: int) -> list[str]:
    """The ``top_k`` most frequent normalised annotator answers (ties: alphabetical), as METER's 3129."""
    if not split.annotations:
        raise DataError("the answer vocabulary needs an annotated training split")
    counts = Counter(normalize_answer(a["answer"]) for ann in split.annotations.values() for a in ann["answers"])
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [answer for answer, _ in ranked[:top_k]]


def soft_scores(answers: list[dict], vocab_index: dict[str, int]) -> dict[int, float]:
    """VQA soft target: min(1, #annotators giving the (normalised) answer / 3)."""
    counts = Counter(normalize_answer(a["answer"]) for a in answers)
    return {vocab_index[ans]: min(1.0, n / 3) for ans, n in counts.items() if ans in vocab_index}


class VQADataset(Dataset):
    def __init__(self, split: VQASplit, vocab: list[str], image_size: int, mean, std):
        self.split = split
        self.vocab = vocab
        self.index = {a: i for i, a in enumerate(vocab)}
        self.transform = image_transform(image_size, mean, std)
        self._targets = None
        if split.annotations:
            self._targets = [soft_scores(split.annotations[q["question_id"]]["answers"], self.index) for q in split.questions]

    def __len__(self) -> int:
        return len(self.split.questions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        q = self.split.questions[i]
        item = {"image": self.transform(load_image(q["image_path"])), "question": q["question"], "question_id": q["question_id"]}
        if self._targets is not None:
            item["target"] = self._targets[i]
        return item


def make_collate(tokenizer, num_answers: int, max_text_len: int = 40):
    def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
        text = tokenizer([s["question"] for s in samples], padding="longest", truncation=True,
                         max_length=max_text_len, return_tensors="pt")
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
