"""Generative VQA (LLaVA-style baseline and LLaViT) as a model of the VQA benchmark (:mod:`.benchmark`).

Same data section and the same official evaluator as METER's classifier, but the answer is
generated as free text (greedy, ``model.max_new_tokens``) and scored after the official
normalisation (:func:`metrics.evaluate` normalises every result answer itself). Training
target: the most frequent normalised annotator answer of each question (ties: alphabetical).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from mmllm.data.images import image_transform
from mmllm.engine.benchmark import BenchmarkModel
from mmllm.engine.preprocess import Preprocess
from mmllm.engine.registry import registered_model
from mmllm.errors import DataError
from mmllm.models.encoders import vision_input_spec

from . import metrics
from .benchmark import VQABenchmark, VQADataOptions
from .data import VQASplit
from .generative_model import GenerativeVQAOptions, build_prompt_format, create_generative_vqa_model


class GenerativeVQADataOptions(VQADataOptions):
    """The benchmark's keys and the generated answer's training length."""

    max_answer_tokens: int = Field(8, gt=0, description="answers longer than this (EOS included) are cut in training")


def most_frequent_answer(answers: Iterable[str], question_id: Any = None) -> str:
    """The most frequent normalised annotator answer (ties broken alphabetically)."""
    counts = Counter(metrics.normalize_answer(a) for a in answers)
    if not counts:
        raise DataError(f"question {question_id}: no annotator answer to train on")
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


def training_answer(annotation: dict[str, Any]) -> str:
    """:func:`most_frequent_answer` of a VQAv2 annotation record."""
    return most_frequent_answer((a["answer"] for a in annotation["answers"]), annotation.get("question_id"))


ROOT = Path(__file__).resolve().parents[3]


@registered_model(  # LLaVA-style generative baseline and LLaViT (issue 13)
    "llava_vqa",
    task="mmllm_vqa_generative",
    model_arch="mmllm_llava_vqa",
    default_config=ROOT / "configs/vqa/easyvqa_llava_smollm2.yaml",
    variants={  # LLaViT's three modifications together and each on its own (the paper's ablation)
        "llava": (),
        "llavit": (
            "model.llavit.visual_qkv=true",
            "model.llavit.bidirectional_visual=true",
            "model.llavit.feature_layers=[2,-1]",
        ),
        "llavit_qkv": ("model.llavit.visual_qkv=true",),
        "llavit_bidirectional": ("model.llavit.bidirectional_visual=true",),
        "llavit_multidepth": ("model.llavit.feature_layers=[2,-1]",),
    },
    description="LLaVA-style: ViT -> projector -> whole LLM, answers generated; LLaViT switches; official VQA accuracy",
)
class GenerativeVQATask(BenchmarkModel):
    benchmark = VQABenchmark
    bench: VQABenchmark
    ModelOptions = GenerativeVQAOptions
    DataOptions = GenerativeVQADataOptions
    compute_dtype_inputs = ("images",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fmt = None

    def _split(self, name: str) -> VQASplit:
        return self.bench.split(name)

    def build_preprocess(self, tokenizer=None) -> Preprocess:
        """Tokenizer (the LM's own: from the GGUF for embedded assets) and image spec, from the config alone."""
        self.fmt = build_prompt_format(self.model_cfg, tokenizer)
        self.tokenizer = self.fmt.tokenizer
        self.image_spec = vision_input_spec(self.model_cfg.vision)
        return Preprocess.shared(image_transform(*self.image_spec), self.tokenizer)

    def build_model(self, lm=None):
        self.preprocess  # noqa: B018 - the call-order check: build_preprocess made the prompt format
        return create_generative_vqa_model(self.model_cfg, self.fmt, lm)

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        fmt = self.fmt
        prompt_ids, prompt_mask = fmt.batch_prompts(
            [s["question"] for s in samples], self.model_cfg.max_question_tokens
        )
        batch = {
            "images": torch.stack([s["image"] for s in samples]),
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "question_id": torch.tensor([s["question_id"] for s in samples]),
        }
        if "answers" in samples[0]:
            rows = [fmt.answer_ids(self.answer_of(s))[: self.data_cfg.max_answer_tokens] for s in samples]
            batch["answer_ids"], batch["answer_mask"] = fmt._batch(rows, None)
        return batch

    @staticmethod
    def answer_of(item: dict[str, Any]) -> str:
        """The training answer of a benchmark item."""
        return most_frequent_answer(item["answers"], item["question_id"])

    def training_loss(self, model, batch):
        loss = model(
            batch["images"], batch["prompt_ids"], batch["prompt_mask"], batch["answer_ids"], batch["answer_mask"]
        )
        return loss, {}

    def predict(self, model, batch):
        """Greedy answers, decoded (the official evaluator normalises them)."""
        module = getattr(model, "module", model)
        tokens = module.generate(
            batch["images"], batch["prompt_ids"], batch["prompt_mask"], self.model_cfg.max_new_tokens
        )
        return zip(batch["question_id"].tolist(), self.fmt.decode(tokens))
