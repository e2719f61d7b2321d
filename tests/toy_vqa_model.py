"""A toy model on the VQA benchmark, added as CONTRIBUTING.md tells a newcomer: this one module (and a config).

Image: mean colour of 4x4 patches -> tokens -> the LLM block kind of ``model.llm_block``; question: a bag of
hashed words. The answer classifier covers the training split's most frequent answers. Data section, items,
official scoring and result files are the VQA benchmark's (:mod:`mmllm_vqa.benchmark`). Importing this module
registers the model ``toy_vqa`` and its pair ``toy_vqa_pair`` (``mmllm train --import toy_vqa_model``).
"""

from __future__ import annotations

import zlib
from collections import Counter
from typing import Any

import torch
from pydantic import Field
from torch import nn
from torchvision import transforms

from mmllm import build_visual_llm_layer
from mmllm.blocks import BlockOptions
from mmllm.engine.benchmark import BenchmarkModel
from mmllm.engine.preprocess import Preprocess
from mmllm.engine.registry import registered_model
from mmllm.schema import ModelSection
from mmllm_vqa.benchmark import VQABenchmark
from mmllm_vqa.data import build_answer_vocab
from mmllm_vqa.metrics import normalize_answer


class ToyVQAOptions(ModelSection):
    width: int = Field(16, gt=0)
    buckets: int = Field(64, gt=0, description="hashed question-word buckets")
    answers: int = Field(8, gt=0, description="answer classes: the training split's most frequent answers")
    llm_block: BlockOptions = None  # validated once, when the section is parsed


class ToyVQANet(nn.Module):
    def __init__(self, options: ToyVQAOptions):
        super().__init__()
        self.patch = nn.Linear(3, options.width)
        self.llm_block = build_visual_llm_layer(options.llm_block, options.width)
        self.words = nn.EmbeddingBag(options.buckets, options.width)
        self.head = nn.Linear(2 * options.width, options.answers)

    def forward(self, images: torch.Tensor, words: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        patches = nn.functional.adaptive_avg_pool2d(images, 4).flatten(2).transpose(1, 2)  # B x 16 x 3
        visual = self.llm_block(self.patch(patches)).mean(1)
        return self.head(torch.cat([visual, self.words(words, offsets).to(visual.dtype)], -1))


@registered_model("toy_vqa", task="toy_vqa_pair", model_arch="mmllm_toy_vqa", description="toy VQA model (tests)")
class ToyVQA(BenchmarkModel):
    benchmark = VQABenchmark
    bench: VQABenchmark
    ModelOptions = ToyVQAOptions
    compute_dtype_inputs = ("images",)

    def build_preprocess(self) -> Preprocess:
        return Preprocess.shared(transforms.Compose([transforms.Resize((16, 16)), transforms.ToTensor()]))

    def build_model(self) -> nn.Module:
        self.answers = build_answer_vocab(self.bench.split("train"), self.model_cfg.answers)
        return ToyVQANet(self.model_cfg)

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        buckets = self.model_cfg.buckets
        ids = [[zlib.crc32(w.encode()) % buckets for w in s["question"].lower().split()] for s in samples]
        batch = {
            "images": torch.stack([s["image"] for s in samples]),
            "words": torch.tensor([i for row in ids for i in row]),
            "offsets": torch.tensor([0] + [len(row) for row in ids[:-1]]).cumsum(0),
            "question_id": torch.tensor([s["question_id"] for s in samples]),
        }
        if "answers" in samples[0]:
            index = {a: i for i, a in enumerate(self.answers)}
            targets = torch.zeros(len(samples), self.model_cfg.answers)
            for row, s in enumerate(samples):
                for answer, n in Counter(normalize_answer(a) for a in s["answers"]).items():
                    if answer in index:
                        targets[row, index[answer]] = min(1.0, n / 3)
            batch["targets"] = targets
        return batch

    def training_loss(self, model, batch):
        logits = model(batch["images"], batch["words"], batch["offsets"]).float()
        return nn.functional.binary_cross_entropy_with_logits(logits, batch["targets"]), {}

    def predict(self, model, batch):
        best = model(batch["images"], batch["words"], batch["offsets"]).argmax(-1).tolist()
        return zip(batch["question_id"].tolist(), (self.answers[i] for i in best))
