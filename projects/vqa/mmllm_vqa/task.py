"""VQA fine-tuning task for the shared engine."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mmllm.config import require, to_dict
from mmllm.engine import distributed
from mmllm.engine.checkpoint import write_json
from mmllm.engine.evaluation import predict
from mmllm.engine.task import Task
from mmllm.errors import DataError

from . import vqa_eval
from .data import COCO_PATTERN, VQADataset, build_answer_vocab, load_split, make_collate
from .model import create_vqa_model, vqa_loss


class VQATask(Task):
    name = "mmllm_vqa"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.data_cfg = require(cfg, "datasets.mmllm_vqa")
        require(cfg, "datasets.mmllm_vqa.splits")
        self._splits: dict[str, Any] = {}
        self.vocab: list[str] | None = None
        self.tokenizer = None

    # --- data
    def _split(self, name: str):
        if name not in self._splits:
            spec = self.data_cfg.splits[name]
            self._splits[name] = load_split(
                name, spec.questions, spec.get("annotations"), spec.get("image_root", self.data_cfg.get("image_root")),
                spec.get("image_pattern", self.data_cfg.get("image_pattern", COCO_PATTERN)), spec.get("image_split"),
                bool(self.data_cfg.get("check_images", True)),
            )
        return self._splits[name]

    def _vocab(self) -> list[str]:
        if self.vocab is None:
            vocab_file = self.data_cfg.get("answer_vocab")
            if vocab_file and Path(vocab_file).is_file():
                self.vocab = json.loads(Path(vocab_file).read_text())
            else:
                self.vocab = build_answer_vocab(self._split("train"), int(self.data_cfg.get("num_answers", 3129)))
            if not self.vocab:
                raise DataError("empty answer vocabulary")
        return self.vocab

    def build_model(self):
        model, self.tokenizer = create_vqa_model(to_dict(self.cfg.model), len(self._vocab()))
        self.vision = model.backbone.vision
        return model

    def build_datasets(self) -> dict[str, Dataset]:
        out_dir = Path(self.cfg.run.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "answer_vocab.json", self._vocab())
        v = self.vision
        return {name: VQADataset(self._split(name), self._vocab(), v.image_size, v.mean, v.std) for name in self.data_cfg.splits}

    def collate(self, samples):
        return make_collate(self.tokenizer, len(self._vocab()), int(self.data_cfg.get("max_text_len", 40)))(samples)

    # --- objective
    def training_loss(self, model, batch):
        logits = model(batch["images"], batch["input_ids"], batch["attention_mask"])
        return vqa_loss(logits, batch["targets"]), {}

    def predict_answers(self, model, dataset: VQADataset) -> dict[int, str]:
        vocab = self._vocab()

        def step(m, batch):
            logits = m(batch["images"], batch["input_ids"], batch["attention_mask"])
            best = logits.argmax(-1).tolist()
            return zip(batch["question_id"].tolist(), (vocab[i] for i in best))

        batch_size = int(self.cfg.run.get("batch_size_eval", 64))
        return dict(predict(model, dataset, self.collate, batch_size, step, desc=f"eval {dataset.split.name}"))

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

    @property
    def main_metric(self) -> str:
        return "accuracy"
