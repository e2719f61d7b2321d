"""VL pretraining (ITM + MLM) on image–caption data, as METER's first stage (before VQA fine-tuning).

Fine-tuning runs (VQA here; retrieval too: a run's final model is a file, no import) start from its
final model with ``run.init_from`` and ``run.init_prefixes: [backbone.]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from mmllm.data.captions import CaptionDataOptions, CaptionPairs, load_captions
from mmllm.data.images import image_transform
from mmllm.engine.evaluation import predict
from mmllm.engine.preprocess import Preprocess
from mmllm.engine.registry import InsertionDepths, registered_task
from mmllm.engine.task import Task
from mmllm.models.encoders import build_tokenizer, vision_input_spec
from mmllm.models.meter import METEROptions, build_meter_backbone
from mmllm.models.pretrain_heads import PretrainModel, mask_tokens

ROOT = Path(__file__).resolve().parents[3]
DEFAULTS = Path(__file__).resolve().parent / "lavis_defaults"


@registered_task(
    "mmllm_itm_mlm",
    dataset="mmllm_captions",
    model_arch="mmllm_meter_pretrain",
    metric="itm_acc",
    default_config=ROOT / "configs/vqa/easyvqa_pretrain_itm_mlm.yaml",
    lavis_model_config=DEFAULTS / "mmllm_meter_pretrain.yaml",
    lavis_dataset_config=DEFAULTS / "mmllm_captions.yaml",
    insertion_depths=InsertionDepths(
        fixed={"head": ("model.llm_block_at=before_fusion",), "tail": ("model.llm_block_at=after_fusion",)}
    ),
    variants={"block": ()},
    description="METER stage 1: image-text matching + masked language modelling on Karpathy-format captions",
)
class ITMMLMTask(Task):
    ModelOptions = METEROptions
    DataOptions = CaptionDataOptions
    model_cfg: METEROptions  # parsed by ModelOptions / DataOptions (Task.__init__)
    data_cfg: CaptionDataOptions
    compute_dtype_inputs = ("images",)

    def build_preprocess(self) -> Preprocess:
        self.tokenizer = build_tokenizer(self.model_cfg.text)
        self.transform = image_transform(*vision_input_spec(self.model_cfg.vision))
        return Preprocess.shared(self.transform, self.tokenizer)

    def build_model(self):
        return PretrainModel(build_meter_backbone(self.model_cfg), len(self.preprocess.tokenizer))

    def build_datasets(self) -> dict[str, Dataset]:
        self.preprocess  # noqa: B018 - the call-order check: build_preprocess made the transform
        d = self.data_cfg
        return {
            name: CaptionPairs(load_captions(spec, d.check_images), self.transform) for name, spec in d.splits.items()
        }

    def collate(self, samples: list[dict[str, Any]], generator: torch.Generator | None = None) -> dict[str, Any]:
        captions = [s["caption"] for s in samples]
        text = self.tokenizer(
            captions, padding="longest", truncation=True, max_length=self.data_cfg.max_text_len, return_tensors="pt"
        )
        masked, labels = mask_tokens(
            text["input_ids"], text["attention_mask"], self.tokenizer, self.data_cfg.mlm_probability, generator
        )
        rolled = captions[-1:] + captions[:-1]
        return {
            "images": torch.stack([s["image"] for s in samples]),
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "mlm_input_ids": masked,
            "mlm_labels": labels,
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

        # ITM pairs each caption with the next one of its batch: a batch-level score, summed over batches
        # (no per-item prediction to cover; every item is still in exactly one batch of one rank's shard)
        parts = predict(model, dataset, collate, self.run.batch_size_eval, step, desc=f"eval {split}", task=self)
        mh, mn, ih, inum = (sum(p[i] for p in parts) for i in range(4))
        return {"mlm_acc": round(100 * mh / max(1, mn), 2), "itm_acc": round(100 * ih / max(1, inum), 2)}
