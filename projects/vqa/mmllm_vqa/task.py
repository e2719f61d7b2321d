"""METER's VQA classifier as a model of the VQA benchmark (:mod:`.benchmark`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch.utils.data import Dataset

from mmllm.data.images import image_transform
from mmllm.engine.benchmark import BenchmarkModel
from mmllm.engine.evaluation import model_dtype
from mmllm.engine.preprocess import Preprocess
from mmllm.engine.registry import InsertionDepths, registered_model
from mmllm.errors import DataError
from mmllm.jsonio import read_json, write_json
from mmllm.models.encoders import build_tokenizer, vision_input_spec
from mmllm.models.meter import METEROptions

from .benchmark import VQABenchmark, VQADataOptions, VQASplitSpec
from .data import VQADataset, build_answer_vocab, make_collate
from .model import create_vqa_model, vqa_loss

__all__ = ["METERVQADataOptions", "VQADataOptions", "VQAModelOptions", "VQASplitSpec", "VQATask"]


class VQAModelOptions(METEROptions):
    num_answers: int | None = Field(None, description="LAVIS default-config key; the vocabulary sets the real size")


class METERVQADataOptions(VQADataOptions):
    """The benchmark's keys and the classifier's answer side: its vocabulary, soft targets, question length."""

    answer_vocab: str | None = Field(None, description="JSON list of answers; default: top num_answers of train")
    num_answers: int = Field(3129, gt=0)
    max_text_len: int = Field(40, gt=0)
    soft_score: Literal["meter", "vqa_min3"] = Field(
        "meter",
        description="training targets: meter = 0.3/0.6/0.9/1.0 for 1/2/3/>=4 annotators (METER, ViLT); "
        "vqa_min3 = min(1, n/3)",
    )


ROOT = Path(__file__).resolve().parents[3]
DEFAULTS = Path(__file__).resolve().parent / "lavis_defaults"


@registered_model(
    "meter_vqa",
    task="mmllm_vqa",
    model_arch="mmllm_meter_vqa",
    default_config=ROOT / "configs/vqa/easyvqa_meter_smollm2.yaml",
    analysis="mmllm_vqa.analysis:analysis_inputs",
    lavis_model_config=DEFAULTS / "mmllm_meter_vqa.yaml",
    lavis_dataset_config=DEFAULTS / "mmllm_vqa.yaml",
    insertion_depths=InsertionDepths(
        fixed={"head": ("model.llm_block_at=before_fusion",), "tail": ("model.llm_block_at=after_fusion",)}
    ),
    description="METER-style VQA with the frozen LLM block after fusion; official VQA accuracy",
)
class VQATask(BenchmarkModel):
    """METER's VQA classifier (a model of the VQA benchmark): soft-score targets over an answer vocabulary."""

    benchmark = VQABenchmark
    bench: VQABenchmark
    ModelOptions = VQAModelOptions
    DataOptions = METERVQADataOptions
    compute_dtype_inputs = ("images",)  # soft-score targets stay fp32

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.vocab: list[str] | None = None

    # --- data
    def _split(self, name: str):
        return self.bench.split(name)

    def _vocab(self) -> list[str]:
        if self.vocab is None:
            vocab_file = self.data_cfg.answer_vocab
            if vocab_file and Path(vocab_file).is_file():
                self.vocab = read_json(vocab_file, "answer vocabulary")
            else:
                self.vocab = build_answer_vocab(self._split("train"), self.data_cfg.num_answers)
            if not self.vocab:
                raise DataError("empty answer vocabulary")
        return self.vocab

    def build_preprocess(self) -> Preprocess:
        self.tokenizer = build_tokenizer(self.model_cfg.text)
        self.image_spec = vision_input_spec(self.model_cfg.vision)
        return Preprocess.shared(image_transform(*self.image_spec), self.tokenizer)

    def build_model(self):
        return create_vqa_model(self.model_cfg, len(self._vocab()))

    def build_datasets(self) -> dict[str, Dataset]:
        self.preprocess  # noqa: B018 - the call-order check: build_preprocess set image_spec and the tokenizer
        out_dir = Path(self.run.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "answer_vocab.json", self._vocab())
        return {
            name: VQADataset(self._split(name), self._vocab(), *self.image_spec, soft_score=self.data_cfg.soft_score)
            for name in self.data_cfg.splits
        }

    def collate(self, samples):
        return make_collate(self.tokenizer, len(self._vocab()), self.data_cfg.max_text_len)(samples)

    # --- objective
    def training_loss(self, model, batch):
        logits = model(batch["images"], batch["input_ids"], batch["attention_mask"])
        return vqa_loss(logits, batch["targets"]), {}

    def predict(self, model, batch):
        """The best vocabulary answer to each question of ``batch``."""
        vocab = self._vocab()
        logits = model(batch["images"], batch["input_ids"], batch["attention_mask"])
        return zip(batch["question_id"].tolist(), (vocab[i] for i in logits.argmax(-1).tolist()))

    @torch.no_grad()
    def answer_questions(self, model, images: torch.Tensor, questions: list[str]) -> list[str]:
        """The best vocabulary answer to each question about its (transformed) image: LAVIS's
        ``model.predict_answers`` calls this; tokenized exactly as :meth:`collate` does."""
        text = self.tokenizer(
            list(questions),
            padding="longest",
            truncation=True,
            max_length=self.data_cfg.max_text_len,
            return_tensors="pt",
        )
        batch = self.move_batch(
            {"images": images, "input_ids": text["input_ids"], "attention_mask": text["attention_mask"]},
            next(model.parameters()).device,
            model_dtype(model),
        )
        logits = model(batch["images"], batch["input_ids"], batch["attention_mask"])
        vocab = self._vocab()
        return [vocab[i] for i in logits.argmax(-1).tolist()]
