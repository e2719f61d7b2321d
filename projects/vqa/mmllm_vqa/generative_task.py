"""Generative VQA task (LLaVA-style baseline and LLaViT) for the shared engine.

Same VQAv2-format data and the same official evaluator as the METER-style task, but the answer
is generated as free text (greedy, ``model.max_new_tokens``) and scored after the official
normalisation (:func:`vqa_eval.evaluate` normalises every result answer itself). Training
target: the most frequent normalised annotator answer of each question (ties: alphabetical).
"""
from __future__ import annotations

import copy
import random
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch.utils.data import Dataset

from mmllm.data.images import image_transform, load_image
from mmllm.engine import distributed
from mmllm.engine.evaluation import PredictionSet, predict_split
from mmllm.engine.preprocess import Preprocess
from mmllm.engine.registry import registered_task
from mmllm.engine.task import Task
from mmllm.errors import DataError
from mmllm.jsonio import write_json
from mmllm.models.encoders import vision_input_spec
from mmllm.schema import DataSection

from . import vqa_eval
from .data import COCO_PATTERN, VQASplit, load_split
from .generative_model import GenerativeVQAOptions, build_prompt_format, create_generative_vqa_model
from .task import VQASplitSpec


class GenerativeVQADataOptions(DataSection):
    splits: dict[str, VQASplitSpec]
    image_root: str | None = None
    image_pattern: str = COCO_PATTERN
    check_images: bool = True
    max_answer_tokens: int = Field(8, gt=0, description="answers longer than this (EOS included) are cut in training")
    eval_limit: int | None = Field(None, gt=0, description="score a fixed random subset of this many questions "
                                   "per evaluated split (CPU budgets); null = all")
    eval_subset_seed: int = Field(0, description="the seed drawing that subset: fixed, not run.seed, so runs of "
                                  "every seed and every method are scored on the same questions")


def training_answer(annotation: dict[str, Any]) -> str:
    """The most frequent normalised annotator answer (ties broken alphabetically)."""
    counts = Counter(vqa_eval.normalize_answer(a["answer"]) for a in annotation["answers"])
    if not counts:
        raise DataError(f"question {annotation.get('question_id')}: no annotator answer to train on")
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


def score_generated(split: VQASplit, answers: dict[int, str]) -> dict[str, Any]:
    """Official VQA accuracy of generated (raw, un-normalised) answers on the questions answered.

    The official evaluator normalises each result answer (punctuation, number words, articles,
    contractions), so "Two." scores as "2"."""
    if not split.annotations:
        raise DataError(f"split {split.name!r} has no annotations to score against")
    return vqa_eval.evaluate([split.annotations[qid] for qid in sorted(answers)], answers, f"split {split.name}")


class GenerativeVQADataset(Dataset):
    def __init__(self, split: VQASplit, image_size: int, mean, std, limit: int | None = None, seed: int = 0):
        self.split = split
        self.transform = image_transform(image_size, mean, std)
        self.items = list(split.questions)
        if limit is not None and limit < len(self.items):
            rng = random.Random(seed)
            self.items = sorted(rng.sample(self.items, limit), key=lambda q: q["question_id"])
        self.answers = [training_answer(split.annotations[q["question_id"]]) for q in self.items] \
            if split.annotations else None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def ids(self) -> list[int]:
        return [q["question_id"] for q in self.items]

    def head(self, n: int) -> GenerativeVQADataset:
        """The first ``n`` questions (of the ``eval_limit`` subset when one is drawn)."""
        part = copy.copy(self)
        part.items = self.items[:n]
        part.answers = None if self.answers is None else self.answers[:n]
        return part

    def __getitem__(self, i: int) -> dict[str, Any]:
        q = self.items[i]
        item = {"image": self.transform(load_image(q["image_path"])), "question": q["question"],
                "question_id": q["question_id"]}
        if self.answers is not None:
            item["answer"] = self.answers[i]
        return item


ROOT = Path(__file__).resolve().parents[3]


@registered_task(  # LLaVA-style generative baseline and LLaViT (issue 13)
    "mmllm_vqa_generative", model_arch="mmllm_llava_vqa", metric="accuracy",
    default_config=ROOT / "configs/vqa/easyvqa_llava_smollm2.yaml",
    variants={  # LLaViT's three modifications together and each on its own (the paper's ablation)
        "llava": (),
        "llavit": ("model.llavit.visual_qkv=true", "model.llavit.bidirectional_visual=true",
                   "model.llavit.feature_layers=[2,-1]"),
        "llavit_qkv": ("model.llavit.visual_qkv=true",),
        "llavit_bidirectional": ("model.llavit.bidirectional_visual=true",),
        "llavit_multidepth": ("model.llavit.feature_layers=[2,-1]",),
    },
    description="LLaVA-style: ViT -> projector -> whole LLM, answers generated; LLaViT switches; official VQA accuracy",
)
class GenerativeVQATask(Task):
    ModelOptions = GenerativeVQAOptions
    DataOptions = GenerativeVQADataOptions
    compute_dtype_inputs = ("images",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._splits: dict[str, VQASplit] = {}
        self.fmt = None

    def _split(self, name: str) -> VQASplit:
        if name not in self._splits:
            d = self.data_cfg
            spec = d.splits[name]
            root = spec.image_root or d.image_root
            if root is None:
                raise DataError(f"datasets.{self.dataset_key}.splits.{name} needs image_root")
            self._splits[name] = load_split(name, spec.questions, spec.annotations, root,
                                            spec.image_pattern or d.image_pattern, spec.image_split, d.check_images)
        return self._splits[name]

    def build_preprocess(self, tokenizer=None) -> Preprocess:
        """Tokenizer (the LM's own: from the GGUF for embedded assets) and image spec, from the config alone."""
        self.fmt = build_prompt_format(self.model_cfg, tokenizer)
        self.tokenizer = self.fmt.tokenizer
        self.image_spec = vision_input_spec(self.model_cfg.vision)
        return Preprocess.shared(image_transform(*self.image_spec), self.tokenizer)

    def build_model(self, lm=None):
        self.preprocess  # noqa: B018 - the call-order check: build_preprocess made the prompt format
        return create_generative_vqa_model(self.model_cfg, self.fmt, lm)

    def build_datasets(self) -> dict[str, Dataset]:
        Path(self.run.output_dir).mkdir(parents=True, exist_ok=True)
        out = {}
        for name in self.data_cfg.splits:
            limit = None if name == "train" else self.data_cfg.eval_limit
            out[name] = GenerativeVQADataset(self._split(name), *self.image_spec, limit=limit,
                                             seed=self.data_cfg.eval_subset_seed)
        return out

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        fmt = self.fmt
        prompt_ids, prompt_mask = fmt.batch_prompts([s["question"] for s in samples], self.model_cfg.max_question_tokens)
        batch = {"images": torch.stack([s["image"] for s in samples]), "prompt_ids": prompt_ids,
                 "prompt_mask": prompt_mask, "question_id": torch.tensor([s["question_id"] for s in samples])}
        if "answer" in samples[0]:
            rows = [fmt.answer_ids(s["answer"])[: self.data_cfg.max_answer_tokens] for s in samples]
            batch["answer_ids"], batch["answer_mask"] = fmt._batch(rows, None)
        return batch

    def training_loss(self, model, batch):
        loss = model(batch["images"], batch["prompt_ids"], batch["prompt_mask"], batch["answer_ids"], batch["answer_mask"])
        return loss, {}

    def generate_answers(self, model, dataset: GenerativeVQADataset) -> PredictionSet:
        module = getattr(model, "module", model)
        limit = self.model_cfg.max_new_tokens

        def step(m, batch):
            tokens = module.generate(batch["images"], batch["prompt_ids"], batch["prompt_mask"], limit)
            return zip(batch["question_id"].tolist(), self.fmt.decode(tokens))

        return predict_split(model, dataset, self.collate, self.run.batch_size_eval, step,
                             desc=f"generate {dataset.split.name}", task=self)

    def evaluate(self, model, dataset, split: str, out_dir: Path) -> dict[str, float]:
        answers = self.generate_answers(model, dataset)
        if distributed.is_main():
            write_json(Path(out_dir) / f"results_{split}.json",
                       [{"question_id": q, "answer": a} for q, a in sorted(answers.items())])
        if not dataset.split.annotations:
            return {}
        acc = score_generated(dataset.split, answers)
        if distributed.is_main():
            write_json(Path(out_dir) / f"accuracy_{split}.json", {**acc, "questions": len(answers)})
        return {"accuracy": acc["overall"], "questions": float(len(answers)),
                **{f"acc_{k}": v for k, v in acc["perAnswerType"].items()}}
