"""VLAP for image–text retrieval: frozen ViT -> one linear layer -> the LLM's word-embedding space.

Images and captions are compared by cosine similarity in that space. Training: VLAP's
assignment-prediction loss (:mod:`mmllm.models.vlap`) plus, with ``caption_weight > 0``, its
captioning loss through the whole frozen LLM (the LLaVA path of :mod:`mmllm.models.llava`,
projector ``none``: the projected tokens are the LLM's visual inputs as they are), weighted
``assign_weight · L_map + caption_weight · L_cap`` (release: 0.1 and 1, train.py l. 527).
Defaults follow the released training script (docs/fidelity.md, "VLAP").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from mmllm.models.encoders import VisionOptions, build_vision_encoder
from mmllm.models.vlap import (
    AssignmentPrediction,
    VLAPProjector,
    fit_prior,
    load_word_embeddings,
    text_representation,
)
from mmllm.schema import ModelSection


class VLAPRetrievalOptions(ModelSection):
    vision: VisionOptions = VisionOptions()
    train_vision: bool = Field(
        False,
        description="VLAP keeps the (pretrained) vision encoder frozen; true trains it "
        "too (a random-init ViT frozen gives the linear layer little to map: use model.vision.cnn)",
    )
    llm: str = Field(
        "smollm2-135m", description="LLM source: embedded asset name, HF folder or .gguf (never downloaded)"
    )
    llm_dtype: str = Field("auto", description="dtype of the whole frozen LLM (captioning, llm_hidden)")
    text_features: Literal["embeddings", "llm_hidden"] = Field(
        "llm_hidden",
        description="llm_hidden (release): mean final-normed last hidden state of the frozen LLM "
        "over the caption; embeddings: mean input word embedding of the caption's tokens (no LLM forward)",
    )
    epsilon: float = Field(0.01, gt=0, description="Sinkhorn entropy weight (paper: 0.01)")
    sinkhorn_iterations: int = Field(3, gt=0, description="Sinkhorn–Knopp iterations (paper: 3)")
    temperature: float = Field(0.01, gt=0, description="softmax temperature of the swapped prediction (release: 0.01)")
    swap_loss: Literal["mean", "sum"] = Field(
        "mean", description="the two swapped cross-entropies averaged (release) or summed (SwAV)"
    )
    assignment: Literal["sinkhorn", "prior_softmax"] = Field(
        "sinkhorn",
        description="sinkhorn: Sinkhorn–Knopp with the word prior as word marginal (the paper); "
        "prior_softmax: the released code's shortcut (multiply by softmax(prior / prior_temperature), "
        "normalise each sample over words)",
    )
    prior_temperature: float = Field(0.25, gt=0, description="prior_softmax only: the release's 0.25")
    prior_smoothing: float = Field(0.1, ge=0, description="add-alpha smoothing of the token-frequency word prior")
    assign_weight: float = Field(0.1, ge=0, description="weight of the assignment loss (release: 0.1)")
    caption_weight: float = Field(
        1.0,
        ge=0,
        description="weight of the captioning loss (0: no captioning; "
        "text_features llm_hidden still runs the LLM forward on the captions)",
    )
    caption_prompt: str = Field("A picture of", description="text between the visual tokens and the caption")
    max_text_tokens: int = Field(32, gt=0, description="caption tokens kept (text features and captioning target)")


class VLAPRetrievalModel(nn.Module):
    def __init__(
        self,
        vision: nn.Module,
        assign: AssignmentPrediction,
        options: VLAPRetrievalOptions,
        captioner: nn.Module | None = None,
    ):
        super().__init__()
        self.vision = vision
        self.train_vision = options.train_vision
        vision.set_trainable(self.train_vision)
        self.projector = VLAPProjector(vision.width, assign.dim)
        self.assign = assign
        self.captioner = captioner  # VisualPrefixLM with projector "none" (frozen LM), or None
        self.text_kind = options.text_features
        self.caption_weight = options.caption_weight
        self.assign_weight = options.assign_weight

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.train_vision:
            self.vision.eval()  # a frozen encoder never runs in training mode
        return self

    # --- the two sides, both in the word-embedding space
    def visual_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Projected visual tokens [B, N, D] (the LLM's visual inputs)."""
        if self.train_vision:
            feats = self.vision(images)
        else:
            with torch.no_grad():
                feats = self.vision(images)
        return self.projector(feats)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual_tokens(images).mean(1)

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        lm = self.captioner.lm if self.captioner is not None else None
        return text_representation(self.text_kind, input_ids, attention_mask, self.assign.raw_words, lm)

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        tokens = self.visual_tokens(batch["images"])
        out = self.assign(tokens.mean(1), self.text_features(batch["input_ids"], batch["attention_mask"]))
        loss = self.assign_weight * out["loss"]
        result = {"assign_loss": out["loss"], "v_from_t": out["v_from_t"], "t_from_v": out["t_from_v"]}
        if self.caption_weight > 0:
            caption = self.captioner(
                tokens, batch["prompt_ids"], batch["prompt_mask"], batch["answer_ids"], batch["answer_mask"]
            )
            loss = loss + self.caption_weight * caption
            result["caption_loss"] = caption
        return {"loss": loss, **result}


def needs_lm(options: VLAPRetrievalOptions) -> bool:
    return options.caption_weight > 0 or options.text_features == "llm_hidden"


def create_vlap_retrieval_model(
    options: VLAPRetrievalOptions, word_prior: torch.Tensor, tokenizer, lm: nn.Module | None = None
) -> VLAPRetrievalModel:
    """Factory: encoder + linear layer + frozen word space (+ the frozen LLM when captioning or
    ``llm_hidden`` need it; ``lm`` given: tests' tiny LMs)."""
    from mmllm.models.llava import VisualPrefixLM, load_causal_lm

    words = load_word_embeddings(options.llm)
    assign = AssignmentPrediction(
        words,
        fit_prior(word_prior, words.shape[0]),
        options.epsilon,
        options.sinkhorn_iterations,
        options.temperature,
        swap_loss=options.swap_loss,
        assignment=options.assignment,
        prior_temperature=options.prior_temperature,
    )
    captioner = None
    if needs_lm(options):
        if lm is None:
            lm = load_causal_lm(options.llm, options.llm_dtype)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        captioner = VisualPrefixLM(lm, assign.dim, "none", (), pad, (tokenizer.eos_token_id,))
        captioner.freeze_lm()
    return VLAPRetrievalModel(build_vision_encoder(options.vision), assign, options, captioner)
