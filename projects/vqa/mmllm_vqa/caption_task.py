"""LLaVA's stage 1 as a model of the captioning benchmark (:mod:`.caption_benchmark`): the generative
VQA model (same ``model`` section, so stage 2 loads its weights by name) trained to generate each
image's caption, with the LLM frozen.

As LLaVA's pre-training (haotian-liu/LLaVA): ``--tune_mm_mlp_adapter True`` trains the projector only
(``llava/train/train.py:927-930``; ``scripts/pretrain.sh:22``); the ``plain`` conversation puts the
caption right after the image tokens with no instruction, and the labels mask everything but the
caption (``preprocess_plain``, ``llava/train/train.py:588-607``; here :class:`PromptFormat` ``caption``
mode, EOS ending the caption). LLaViT's stage 1 also trains its visual Q/K/V copies
(``model.llavit.visual_qkv``): they are new weights of the LLM's visual path, not the LLM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from mmllm.data.images import image_transform
from mmllm.engine.benchmark import BenchmarkModel
from mmllm.engine.preprocess import Preprocess
from mmllm.engine.registry import registered_model
from mmllm.errors import ConfigError
from mmllm.models.encoders import vision_input_spec
from mmllm.models.llava import PromptFormat, load_tokenizer

from .caption_benchmark import CaptioningBenchmark, CaptioningDataOptions
from .generative_model import GenerativeVQAOptions, create_generative_vqa_model

ROOT = Path(__file__).resolve().parents[3]


class CaptionModelDataOptions(CaptioningDataOptions):
    """The benchmark's keys and the caption's training length."""

    max_caption_tokens: int = Field(
        16, gt=0, description="captions longer than this (EOS included) are cut in training"
    )


@registered_model(
    "llava",
    task="mmllm_captioning_llava",
    model_arch="mmllm_llava_caption",
    default_config=ROOT / "configs/vqa/easyvqa_llava_stage1.yaml",
    variants={  # the VQA model's (stage 2 loads these weights, so both stages take the same switches)
        "llava": (),
        "llavit": (
            "model.llavit.visual_qkv=true",
            "model.llavit.bidirectional_visual=true",
            "model.llavit.feature_layers=[2,-1]",
        ),
    },
    description="LLaVA stage 1: projector (+ LLaViT's visual Q/K/V) trained to caption images, LLM frozen",
)
class LLaVACaptionTask(BenchmarkModel):
    benchmark = CaptioningBenchmark
    bench: CaptioningBenchmark
    ModelOptions = GenerativeVQAOptions
    DataOptions = CaptionModelDataOptions
    model_cfg: GenerativeVQAOptions
    data_cfg: CaptionModelDataOptions
    compute_dtype_inputs = ("images",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.model_cfg.llm.train != "frozen":
            raise ConfigError(
                f"model.llm.train: {self.model_cfg.llm.train}: stage 1 (captions) trains the projector only, "
                "the LLM stays frozen (LLaVA's tune_mm_mlp_adapter); tune the LLM in stage 2"
            )
        self.fmt: PromptFormat | None = None

    def build_preprocess(self, tokenizer=None) -> Preprocess:
        tok = tokenizer if tokenizer is not None else load_tokenizer(self.model_cfg.llm.source)
        self.fmt = PromptFormat(tok, "caption")
        self.tokenizer = tok
        return Preprocess.shared(image_transform(*vision_input_spec(self.model_cfg.vision)), tok)

    def build_model(self, lm=None):
        self.preprocess  # noqa: B018 - the call-order check: build_preprocess made the prompt format
        assert self.fmt is not None
        return create_generative_vqa_model(self.model_cfg, self.fmt, lm)

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        fmt = self.fmt
        assert fmt is not None
        prompt_ids, prompt_mask = fmt.batch_prompts([""] * len(samples))  # no instruction: all padding
        batch: dict[str, Any] = {
            "images": torch.stack([s["image"] for s in samples]),
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
        }
        if "caption" in samples[0]:  # a training pair
            rows = [fmt.answer_ids(s["caption"])[: self.data_cfg.max_caption_tokens] for s in samples]
            batch["answer_ids"], batch["answer_mask"] = fmt._batch(rows, None)
        else:
            batch["image_id"] = [s["image_id"] for s in samples]
        return batch

    def training_loss(self, model, batch):
        loss = model(
            batch["images"], batch["prompt_ids"], batch["prompt_mask"], batch["answer_ids"], batch["answer_mask"]
        )
        return loss, {}

    def predict(self, model, batch):
        """Greedy captions, decoded."""
        assert self.fmt is not None
        module = getattr(model, "module", model)
        tokens = module.generate(
            batch["images"], batch["prompt_ids"], batch["prompt_mask"], self.model_cfg.max_new_tokens
        )
        return zip(batch["image_id"], self.fmt.decode(tokens))
