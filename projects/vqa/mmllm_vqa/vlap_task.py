"""VLAP as the visual input of the frozen LLM for generative VQA (issue 13, item 3's second half).

The LLaVA-style generative task (:mod:`.generative_task`) with its projector fixed to VLAP's one
linear layer (Park et al., ICLR 2024) and that layer trained with VLAP's assignment-prediction loss
(:mod:`mmllm.models.vlap`) beside the answer's next-token loss through the frozen LLM (VLAP's
"captioning" objective, here on the VQA answer), weighted as the release: ``0.1 · L_map + L_answer``. The
text side of the assignment is the frozen LLM's mean-pooled hidden states (the release's) of the question
and its training answer (easy-VQA has no captions; question + answer is the text that describes the image). The answer is generated and scored exactly as in the LLaVA task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from mmllm.engine.registry import registered_model
from mmllm.errors import ConfigError
from mmllm.models.vlap import (
    AssignmentPrediction,
    fit_prior,
    load_word_embeddings,
    text_representation,
    word_frequency_prior,
)
from mmllm.schema import Section

from .generative_model import GenerativeVQAModel, GenerativeVQAOptions, create_generative_vqa_model
from .generative_task import GenerativeVQATask, training_answer


class VLAPOptions(Section):
    """Defaults as the released training script (github park-jungin/vlap ``train.py``; docs/fidelity.md, "VLAP")."""

    epsilon: float = Field(0.01, gt=0, description="Sinkhorn entropy weight (paper: 0.01)")
    sinkhorn_iterations: int = Field(3, gt=0, description="Sinkhorn–Knopp iterations (paper: 3)")
    temperature: float = Field(0.01, gt=0, description="softmax temperature of the swapped prediction (release: 0.01)")
    swap_loss: Literal["mean", "sum"] = Field(
        "mean", description="the two swapped cross-entropies averaged (release) or summed (SwAV)"
    )
    assignment: Literal["sinkhorn", "prior_softmax"] = Field(
        "sinkhorn",
        description="sinkhorn: Sinkhorn–Knopp with the word prior as word marginal (the paper); "
        "prior_softmax: the released code's shortcut (mmllm.models.vlap.prior_softmax_codes)",
    )
    prior_temperature: float = Field(0.25, gt=0, description="prior_softmax only: the release's 0.25")
    text_features: Literal["embeddings", "llm_hidden"] = Field(
        "llm_hidden",
        description="llm_hidden (release): the frozen LLM's final-normed last hidden states "
        "mean-pooled over the text; embeddings: the mean of its input word embeddings (no LLM forward)",
    )
    prior_smoothing: float = Field(0.1, ge=0, description="add-alpha smoothing of the token-frequency word prior")
    assign_weight: float = Field(
        0.1,
        ge=0,
        description="weight of the assignment loss beside the answer loss "
        "(release: 0.1 · L_map + L_cap, train.py l. 527)",
    )
    text: Literal["question_answer", "answer"] = Field("question_answer", description="text paired with the image")
    max_text_tokens: int = Field(48, gt=0)


class VLAPVQAOptions(GenerativeVQAOptions):
    vlap: VLAPOptions = VLAPOptions()
    # VLAP's runs keep the features they were measured with (the encoder's last output, pooled token first);
    # LLaVA's penultimate-layer patch tokens are the generative model's default, not VLAP's
    feature_select: Literal["penultimate_patch", "final_all"] = "final_all"


class VLAPVQAModel(nn.Module):
    """The generative VQA model + VLAP's assignment head on its (linear) projector's output."""

    def __init__(
        self,
        vqa: GenerativeVQAModel,
        assign: AssignmentPrediction,
        assign_weight: float,
        text_features: str = "llm_hidden",
    ):
        super().__init__()
        self.vqa = vqa
        self.assign = assign
        self.assign_weight = assign_weight
        self.text_features = text_features

    def forward(self, images, prompt_ids, prompt_mask, answer_ids, answer_mask, text_ids, text_mask):
        visual = self.vqa.vision(images)
        answer_loss = self.vqa.lm(visual, prompt_ids, prompt_mask, answer_ids, answer_mask)
        tokens = self.vqa.lm.projector(visual.to(self.vqa.lm.projector_dtype()))
        text = text_representation(self.text_features, text_ids, text_mask, self.assign.raw_words, self.vqa.lm.lm)
        out = self.assign(tokens.mean(1), text)
        return {
            "loss": answer_loss + self.assign_weight * out["loss"],
            "answer_loss": answer_loss,
            "assign_loss": out["loss"],
        }

    @torch.no_grad()
    def generate(self, images, prompt_ids, prompt_mask, max_new_tokens: int) -> list[list[int]]:
        return self.vqa.generate(images, prompt_ids, prompt_mask, max_new_tokens)


ROOT = Path(__file__).resolve().parents[3]


@registered_model(  # VLAP's linear layer + assignment loss as the LLaVA path's visual input (issue 13)
    "vlap_vqa",
    task="mmllm_vqa_vlap",
    model_arch="mmllm_vlap_vqa",
    default_config=ROOT / "configs/vqa/easyvqa_vlap_smollm2.yaml",
    variants={"vlap": (), "vlap_no_assign": ("model.vlap.assign_weight=0",)},
    description="VLAP: frozen ViT -> linear (assignment prediction + answer loss) -> whole frozen LLM; VQA accuracy",
)
class VLAPVQATask(GenerativeVQATask):
    ModelOptions = VLAPVQAOptions

    def _text(self, question: str, answer: str) -> list[int]:
        text = answer if self.model_cfg.vlap.text == "answer" else f"{question.strip()} {answer}"
        ids = self.fmt.tokenizer(text, add_special_tokens=False)["input_ids"]
        return list(ids)[: self.model_cfg.vlap.max_text_tokens]

    def word_prior(self) -> torch.Tensor:
        """Token frequencies of the training texts (question + most frequent answer) in the LLM's vocabulary."""
        split = self._split("train")
        if not split.annotations:
            raise ConfigError("the train split needs annotations for VLAP's word prior")
        texts = (
            self._text(q["question"], training_answer(split.annotations[q["question_id"]])) for q in split.questions
        )
        return word_frequency_prior(
            texts, len(self.fmt.tokenizer), self.model_cfg.vlap.prior_smoothing, ignore_ids=[self.fmt.pad_id]
        )

    def build_model(self, lm=None):
        opts = self.model_cfg
        if opts.llm.projector != "linear":
            raise ConfigError(f"model.llm.projector: VLAP trains one linear layer, got {opts.llm.projector!r}")
        self.preprocess  # noqa: B018 - the call-order check: build_preprocess made the prompt format
        vqa = create_generative_vqa_model(opts, self.fmt, lm)
        v = opts.vlap
        words = load_word_embeddings(opts.llm.source)
        assign = AssignmentPrediction(
            words,
            fit_prior(self.word_prior(), words.shape[0]),
            v.epsilon,
            v.sinkhorn_iterations,
            v.temperature,
            swap_loss=v.swap_loss,
            assignment=v.assignment,
            prior_temperature=v.prior_temperature,
        )
        if assign.dim != vqa.lm.lm.config.hidden_size:
            raise ConfigError(
                f"word embeddings are {assign.dim}-d but the LLM's hidden size is {vqa.lm.lm.config.hidden_size}"
            )
        return VLAPVQAModel(vqa, assign, v.assign_weight, v.text_features)

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().collate(samples)
        if "answers" in samples[0]:
            rows = [self._text(s["question"], self.answer_of(s)) for s in samples]
            batch["text_ids"], batch["text_mask"] = self.fmt._batch(rows, None)
        return batch

    def training_loss(self, model, batch):
        out = model(
            batch["images"],
            batch["prompt_ids"],
            batch["prompt_mask"],
            batch["answer_ids"],
            batch["answer_mask"],
            batch["text_ids"],
            batch["text_mask"],
        )
        return out["loss"], {"answer_loss": out["answer_loss"].item(), "assign_loss": out["assign_loss"].item()}
