"""VQA fine-tuning task for the shared engine."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch.utils.data import Dataset

from mmllm.data.images import image_transform
from mmllm.engine import distributed
from mmllm.engine.evaluation import PredictionSet, model_dtype, predict_split
from mmllm.engine.preprocess import Preprocess
from mmllm.engine.registry import InsertionDepths, registered_task
from mmllm.engine.task import Task
from mmllm.errors import DataError
from mmllm.jsonio import read_json, write_json
from mmllm.models.encoders import build_tokenizer, vision_input_spec
from mmllm.models.meter import METEROptions
from mmllm.schema import DataSection, Section

from . import vqa_eval
from .data import COCO_PATTERN, VQADataset, build_answer_vocab, load_split, make_collate
from .model import create_vqa_model, vqa_loss


class VQAModelOptions(METEROptions):
    num_answers: int | None = Field(None, description="LAVIS default-config key; the vocabulary sets the real size")


class VQASplitSpec(Section):
    questions: str
    annotations: str | None = None
    image_root: str | None = None
    image_pattern: str | None = None
    image_split: str | None = None


class VQADataOptions(DataSection):
    splits: dict[str, VQASplitSpec]
    image_root: str | None = None
    image_pattern: str = COCO_PATTERN
    answer_vocab: str | None = Field(None, description="JSON list of answers; default: top num_answers of train")
    num_answers: int = Field(3129, gt=0)
    max_text_len: int = Field(40, gt=0)
    soft_score: Literal["meter", "vqa_min3"] = Field(
        "meter", description="training targets: meter = 0.3/0.6/0.9/1.0 for 1/2/3/>=4 annotators (METER, ViLT); "
        "vqa_min3 = min(1, n/3)")
    check_images: bool = True


ROOT = Path(__file__).resolve().parents[3]
DEFAULTS = Path(__file__).resolve().parent / "lavis_defaults"


@registered_task(
    "mmllm_vqa", model_arch="mmllm_meter_vqa", metric="accuracy",
    default_config=ROOT / "configs/vqa/easyvqa_meter_smollm2.yaml",
    preparers={"easy_vqa": "mmllm_vqa.easy_vqa_convert:ensure_converted"},
    analysis="mmllm_vqa.analysis:analysis_inputs",
    lavis_model_config=DEFAULTS / "mmllm_meter_vqa.yaml", lavis_dataset_config=DEFAULTS / "mmllm_vqa.yaml",
    insertion_depths=InsertionDepths(fixed={"head": ("model.llm_block_at=before_fusion",), "tail": ("model.llm_block_at=after_fusion",)}),
    description="METER-style VQA with the frozen LLM block after fusion; official VQA accuracy",
)
class VQATask(Task):
    ModelOptions = VQAModelOptions
    DataOptions = VQADataOptions
    compute_dtype_inputs = ("images",)  # soft-score targets stay fp32

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._splits: dict[str, Any] = {}
        self.vocab: list[str] | None = None

    # --- data
    def _split(self, name: str):
        if name not in self._splits:
            d = self.data_cfg
            spec = d.splits[name]
            root = spec.image_root or d.image_root
            if root is None:
                raise DataError(f"datasets.{self.dataset_key}.splits.{name} needs image_root")
            self._splits[name] = load_split(name, spec.questions, spec.annotations, root,
                                            spec.image_pattern or d.image_pattern, spec.image_split, d.check_images)
        return self._splits[name]

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
        return {name: VQADataset(self._split(name), self._vocab(), *self.image_spec, soft_score=self.data_cfg.soft_score)
                for name in self.data_cfg.splits}

    def collate(self, samples):
        return make_collate(self.tokenizer, len(self._vocab()), self.data_cfg.max_text_len)(samples)

    # --- objective
    def training_loss(self, model, batch):
        logits = model(batch["images"], batch["input_ids"], batch["attention_mask"])
        return vqa_loss(logits, batch["targets"]), {}

    def predict_answers(self, model, dataset: VQADataset) -> PredictionSet:
        """Question id -> the best vocabulary answer, every question of ``dataset`` exactly once."""
        vocab = self._vocab()

        def step(m, batch):
            logits = m(batch["images"], batch["input_ids"], batch["attention_mask"])
            best = logits.argmax(-1).tolist()
            return zip(batch["question_id"].tolist(), (vocab[i] for i in best))

        return predict_split(model, dataset, self.collate, self.run.batch_size_eval, step,
                             desc=f"eval {dataset.split.name}", task=self)

    @torch.no_grad()
    def answer_questions(self, model, images: torch.Tensor, questions: list[str]) -> list[str]:
        """The best vocabulary answer to each question about its (transformed) image: LAVIS's
        ``model.predict_answers`` calls this; tokenized exactly as :meth:`collate` does."""
        text = self.tokenizer(list(questions), padding="longest", truncation=True,
                              max_length=self.data_cfg.max_text_len, return_tensors="pt")
        batch = self.move_batch({"images": images, "input_ids": text["input_ids"],
                                 "attention_mask": text["attention_mask"]},
                                next(model.parameters()).device, model_dtype(model))
        logits = model(batch["images"], batch["input_ids"], batch["attention_mask"])
        vocab = self._vocab()
        return [vocab[i] for i in logits.argmax(-1).tolist()]

    def evaluate(self, model, dataset, split: str, out_dir: Path) -> dict[str, float]:
        answers = self.predict_answers(model, dataset)
        results = [{"question_id": qid, "answer": ans} for qid, ans in sorted(answers.items())]
        metrics: dict[str, float] = {}
        if distributed.is_main():
            write_json(Path(out_dir) / f"results_{split}.json", results)
        if dataset.split.annotations:
            acc = vqa_eval.evaluate(dataset.split.annotation_list(), answers)
            metrics = {"accuracy": acc["overall"], **{f"acc_{k}": v for k, v in acc["perAnswerType"].items()}}
            if distributed.is_main():
                write_json(Path(out_dir) / f"accuracy_{split}.json", acc)
        return metrics
