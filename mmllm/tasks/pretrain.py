"""VL pretraining (ITM + MLM) on image–caption data, as METER's first stage.

Fine-tuning tasks start from its final model with ``run.init_from`` and
``run.init_prefixes: [backbone.]``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..config import require, to_dict
from ..data.captions import CaptionPairs, load_karpathy
from ..data.images import image_transform
from ..engine.evaluation import predict
from ..engine.task import Task
from ..models.meter import build_meter_backbone
from ..models.pretrain_heads import PretrainModel, mask_tokens


class ITMMLMTask(Task):
    name = "mmllm_itm_mlm"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.data_cfg = require(cfg, "datasets.mmllm_captions")
        require(cfg, "datasets.mmllm_captions.splits")
        self.tokenizer = None

    def build_model(self):
        backbone, self.tokenizer = build_meter_backbone(to_dict(self.cfg.model))
        self.vision = backbone.vision
        return PretrainModel(backbone, len(self.tokenizer))

    def build_datasets(self) -> dict[str, Dataset]:
        v = self.vision
        check = bool(self.data_cfg.get("check_images", True))
        return {
            name: CaptionPairs(load_karpathy(spec.annotation, spec.image_root, check), image_transform(v.image_size, v.mean, v.std))
            for name, spec in self.data_cfg.splits.items()
        }

    def collate(self, samples: list[dict[str, Any]], generator: torch.Generator | None = None) -> dict[str, Any]:
        captions = [s["caption"] for s in samples]
        text = self.tokenizer(captions, padding="longest", truncation=True,
                              max_length=int(self.data_cfg.get("max_text_len", 40)), return_tensors="pt")
        masked, labels = mask_tokens(text["input_ids"], text["attention_mask"], self.tokenizer,
                                     float(self.data_cfg.get("mlm_probability", 0.15)), generator)
        rolled = captions[-1:] + captions[:-1]
        return {
            "images": torch.stack([s["image"] for s in samples]),
            "input_ids": text["input_ids"], "attention_mask": text["attention_mask"],
            "mlm_input_ids": masked, "mlm_labels": labels,
            "same_caption_as_rolled": torch.tensor([a == b for a, b in zip(captions, rolled)]),
        }

    def training_loss(self, model, batch):
        out = model(batch)
        return out["loss"], {"mlm_loss": out["mlm_loss"].item(), "itm_loss": out["itm_loss"].item()}

    def evaluate(self, model, dataset, split: str, out_dir: Path) -> dict[str, float]:
        gen = torch.Generator().manual_seed(0)  # the same masks every evaluation

        def step(m, batch):
            out = m(batch)
            mlm_mask = batch["mlm_labels"] != -100
            mlm_hits = (out["mlm_logits"].argmax(-1) == batch["mlm_labels"])[mlm_mask]
            itm_hits = out["itm_logits"].argmax(-1) == out["itm_labels"]
            return [(mlm_hits.sum().item(), mlm_hits.numel(), itm_hits.sum().item(), itm_hits.numel())]

        def collate(samples):
            return self.collate(samples, gen)

        batch_size = int(self.cfg.run.get("batch_size_eval", 64))
        parts = predict(model, dataset, collate, batch_size, step, desc=f"eval {split}")
        mh, mn, ih, inum = (sum(p[i] for p in parts) for i in range(4))
        return {"mlm_acc": round(100 * mh / max(1, mn), 2), "itm_acc": round(100 * ih / max(1, inum), 2)}

    @property
    def main_metric(self) -> str:
        return "itm_acc"
