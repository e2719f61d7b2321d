"""Image–text retrieval task for the shared engine: ITC + ITM training, ITM re-ranking at test."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import Dataset

from mmllm.data.captions import CaptionDataOptions, CaptionPairs, load_karpathy
from mmllm.data.images import image_transform, load_image
from mmllm.engine import distributed
from mmllm.engine.evaluation import model_dtype, predict
from mmllm.engine.run_config import RunConfig
from mmllm.engine.task import Task
from mmllm.jsonio import write_json
from mmllm.models.encoders import build_tokenizer, vision_input_spec

from .metrics import caption_index, retrieval_metrics
from .model import RetrievalModelOptions, create_retrieval_model


class RetrievalRunOptions(RunConfig):
    k_test: int = Field(16, gt=0, description="ITM re-ranks each query's top k_test contrastive candidates")


class RetrievalEvalSet:
    """Images and texts of a Karpathy val/test file; text order = caption order in the file."""

    def __init__(self, items, transform):
        self.items = items
        self.transform = transform
        self.texts = [c for item in items for c in item.captions]
        self.img2txt, self.txt2img = caption_index([len(item.captions) for item in items])

    def images(self) -> Dataset:
        return _View(len(self.items), lambda i: {"index": i, "image": self.transform(load_image(self.items[i].image_path))})

    def captions(self) -> Dataset:
        return _View(len(self.texts), lambda t: {"index": t, "caption": self.texts[t]})


class _View(Dataset):
    """A sized, indexable view for the evaluation loops (images or captions of an eval set)."""

    def __init__(self, size: int, get):
        self.size, self.get = size, get

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i):
        return self.get(i)


class RetrievalTask(Task):
    ModelOptions = RetrievalModelOptions
    DataOptions = CaptionDataOptions
    RunOptions = RetrievalRunOptions
    compute_dtype_inputs = ("images",)

    def build_preprocess(self) -> None:
        self.tokenizer = build_tokenizer(self.model_cfg.text)
        self.transform = image_transform(*vision_input_spec(self.model_cfg.vision))

    def build_model(self):
        return create_retrieval_model(self.model_cfg)

    def build_datasets(self):
        check = self.data_cfg.check_images
        out = {}
        for name, spec in self.data_cfg.splits.items():
            items = load_karpathy(spec.annotation, spec.image_root, check)
            out[name] = CaptionPairs(items, self.transform) if name == "train" else RetrievalEvalSet(items, self.transform)
        return out

    def _tokenize(self, captions):
        return self.tokenizer(captions, padding="longest", truncation=True,
                              max_length=self.data_cfg.max_text_len, return_tensors="pt")

    def collate(self, samples):
        text = self._tokenize([s["caption"] for s in samples])
        return {"images": torch.stack([s["image"] for s in samples]), "input_ids": text["input_ids"],
                "attention_mask": text["attention_mask"], "image_index": torch.tensor([s["image_index"] for s in samples])}

    def training_loss(self, model, batch):
        out = model(batch)
        return out["loss"], {"itc_loss": out["itc_loss"].item(), "itm_loss": out["itm_loss"].item()}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def score_matrices(self, model, data: RetrievalEvalSet) -> tuple[np.ndarray, np.ndarray]:
        """ITC similarities for every pair; each row's top-k candidates re-scored as ITM score + ITC
        similarity (as BLIP/LAVIS do: an uninformative ITM head then keeps the ITC order), others -100.
        Also returns the ITC-only similarities."""
        batch_size = self.run.batch_size_eval
        k = self.run.k_test

        def image_step(m, batch):
            tokens, feat = m.image_features(batch["images"])
            return zip(batch["index"].tolist(), tokens.cpu(), feat.cpu())

        def text_step(m, batch):
            tokens, feat = m.text_features(batch["input_ids"], batch["attention_mask"])
            return zip(batch["index"].tolist(), tokens.cpu(), (batch["attention_mask"] == 0).cpu(), feat.cpu())

        def image_collate(s):
            return {"index": torch.tensor([x["index"] for x in s]), "images": torch.stack([x["image"] for x in s])}

        def text_collate(s):
            text = self._tokenize([x["caption"] for x in s])
            return {"index": torch.tensor([x["index"] for x in s]), **text}

        images = sorted(predict(model, data.images(), image_collate, batch_size, image_step, "eval images", task=self), key=lambda r: r[0])
        texts = sorted(predict(model, data.captions(), text_collate, batch_size, text_step, "eval texts", task=self), key=lambda r: r[0])
        img_tok = torch.stack([r[1] for r in images])
        img_feat = torch.stack([r[2] for r in images])
        width = max(r[1].shape[0] for r in texts)
        txt_tok = torch.stack([torch.nn.functional.pad(r[1], (0, 0, 0, width - r[1].shape[0])) for r in texts])
        txt_pad = torch.stack([torch.nn.functional.pad(r[2], (0, width - r[2].shape[0]), value=True) for r in texts])
        txt_feat = torch.stack([r[3] for r in texts])
        sims = (img_feat @ txt_feat.T).numpy()
        device, dtype = next(model.parameters()).device, model_dtype(model)
        was_training = model.training
        model.eval()

        def itm(rows_img, rows_txt):
            logits = model.itm_logits(img_tok[rows_img].to(device, dtype), txt_tok[rows_txt].to(device, dtype), txt_pad[rows_txt].to(device))
            return (logits[:, 1] - logits[:, 0]).float().cpu().numpy()

        def rerank(n_rows, n_cols, row_sims, pair):
            rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if torch.distributed.is_initialized() else (0, 1)
            mine = []
            for r in range(rank, n_rows, world):
                top = np.argsort(-row_sims[r], kind="stable")[: min(k, n_cols)]
                mine.append((r, top, pair(r, top)))
            full = np.full((n_rows, n_cols), -100.0, dtype=np.float32)
            for part in distributed.all_gather_objects(mine):
                for r, top, scores in part:
                    full[r, top] = scores
            return full

        scores_i2t = rerank(len(images), len(texts), sims, lambda i, top: itm(np.full(len(top), i), top) + sims[i, top])
        scores_t2i = rerank(len(texts), len(images), sims.T, lambda t, top: itm(top, np.full(len(top), t)) + sims[top, t])
        model.train(was_training)
        return scores_i2t, scores_t2i, sims

    def evaluate(self, model, dataset, split: str, out_dir: Path) -> dict[str, float]:
        scores_i2t, scores_t2i, sims = self.score_matrices(model, dataset)
        metrics = retrieval_metrics(scores_i2t, scores_t2i, dataset.img2txt, dataset.txt2img)
        itc_only = retrieval_metrics(sims, sims.T, dataset.img2txt, dataset.txt2img)  # before re-ranking
        if distributed.is_main():
            np.savez(Path(out_dir) / f"scores_{split}.npz", scores_i2t=scores_i2t, scores_t2i=scores_t2i)
            write_json(Path(out_dir) / f"recall_{split}.json", {**metrics, "itc_only": itc_only})
        return {**{k: round(v, 2) for k, v in metrics.items()}, "itc_r_mean": round(itc_only["r_mean"], 2)}
