"""METER's image–text retrieval model on the retrieval benchmark (:mod:`.benchmark`): ITC + ITM training; at
test, ITM re-ranking of the ITC top-k (ALBEF/BLIP) and, with ``run.full_itm``, every pair scored by ITM
(METER): see :mod:`mmllm_retrieval.scoring`."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from mmllm.data.images import image_transform
from mmllm.engine import distributed
from mmllm.engine.benchmark import BenchmarkModel
from mmllm.engine.evaluation import model_dtype, predict_split
from mmllm.engine.preprocess import Preprocess
from mmllm.engine.registry import InsertionDepths, registered_model
from mmllm.engine.run_config import RunConfig
from mmllm.models.encoders import build_tokenizer, vision_input_spec

from .benchmark import RetrievalBenchmark, RetrievalEvalSet, check_eval_set
from .metrics import retrieval_metrics
from .model import RetrievalModelOptions, create_retrieval_model
from .scoring import fill_reranked, full_itm_scores, topk_rerank

__all__ = ["RetrievalEvalSet", "RetrievalRunOptions", "RetrievalTask", "check_eval_set"]

log = logging.getLogger(__name__)


class RetrievalRunOptions(RunConfig):
    k_test: int = Field(16, gt=0, description="ITM re-ranks each query's top k_test contrastive candidates")
    rerank_score: Literal["blip", "albef", "margin_sim"] = Field(
        "blip",
        description="re-ranking score: blip = itm[:,1] + sim (BLIP); albef = itm[:,1] (ALBEF); "
        "margin_sim = itm[:,1] - itm[:,0] + sim (this library's earlier rule)",
    )
    full_itm: bool = Field(
        False,
        description="also score every image-text pair with the ITM head (METER's protocol) "
        "and report it as full_itm_*: images x texts fused passes",
    )


ROOT = Path(__file__).resolve().parents[3]
DEFAULTS = Path(__file__).resolve().parent / "lavis_defaults"


@registered_model(
    "meter_retrieval",
    task="mmllm_retrieval",
    model_arch="mmllm_meter_retrieval",
    default_config=ROOT / "configs/retrieval/emoji_meter_smollm2.yaml",
    lavis_model_config=DEFAULTS / "mmllm_meter_retrieval.yaml",
    lavis_dataset_config=DEFAULTS / "mmllm_retrieval.yaml",
    insertion_depths=InsertionDepths(
        fixed={"head": ("model.llm_block_at=before_fusion",), "tail": ("model.llm_block_at=after_fusion",)}
    ),
    description="METER-style ITC + ITM retrieval with the frozen LLM block after fusion; Recall@K",
)
class RetrievalTask(BenchmarkModel):
    """METER's retrieval model (a model of the retrieval benchmark): ITC + ITM, top-k re-ranking."""

    benchmark = RetrievalBenchmark
    bench: RetrievalBenchmark
    ModelOptions = RetrievalModelOptions
    RunOptions = RetrievalRunOptions
    compute_dtype_inputs = ("images",)

    def build_preprocess(self) -> Preprocess:
        self.tokenizer = build_tokenizer(self.model_cfg.text)
        self.transform = image_transform(*vision_input_spec(self.model_cfg.vision))
        return Preprocess.shared(self.transform, self.tokenizer)

    def build_model(self):
        return create_retrieval_model(self.model_cfg)

    def _tokenize(self, captions):
        return self.tokenizer(
            captions, padding="longest", truncation=True, max_length=self.data_cfg.max_text_len, return_tensors="pt"
        )

    def collate(self, samples):
        text = self._tokenize([s["caption"] for s in samples])
        return {
            "images": torch.stack([s["image"] for s in samples]),
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "image_index": torch.tensor([s["image_index"] for s in samples]),
        }

    def training_loss(self, model, batch):
        out = model(batch)
        return out["loss"], {"itc_loss": out["itc_loss"].item(), "itm_loss": out["itm_loss"].item()}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _unimodal(self, model, data: RetrievalEvalSet):
        """Unimodal tokens, text padding and normalised ITC features of every image and text."""
        batch_size = self.run.batch_size_eval

        def image_step(m, batch):
            tokens, feat = m.image_features(batch["images"])
            return zip(batch["index"].tolist(), zip(tokens.cpu(), feat.cpu()))

        def text_step(m, batch):
            tokens, feat = m.text_features(batch["input_ids"], batch["attention_mask"])
            return zip(batch["index"].tolist(), zip(tokens.cpu(), (batch["attention_mask"] == 0).cpu(), feat.cpu()))

        def image_collate(s):
            return {"index": torch.tensor([x["index"] for x in s]), "images": torch.stack([x["image"] for x in s])}

        def text_collate(s):
            text = self._tokenize([x["caption"] for x in s])
            return {"index": torch.tensor([x["index"] for x in s]), **text}

        images = list(
            predict_split(model, data.images(), image_collate, batch_size, image_step, "eval images", task=self).items()
        )
        texts = list(
            predict_split(model, data.captions(), text_collate, batch_size, text_step, "eval texts", task=self).items()
        )
        images, texts = [r for _, r in images], [r for _, r in texts]  # in index order
        img_tok = torch.stack([r[0] for r in images])
        img_feat = torch.stack([r[1] for r in images])
        width = max(r[0].shape[0] for r in texts)
        txt_tok = torch.stack([torch.nn.functional.pad(r[0], (0, 0, 0, width - r[0].shape[0])) for r in texts])
        txt_pad = torch.stack([torch.nn.functional.pad(r[1], (0, width - r[1].shape[0]), value=True) for r in texts])
        txt_feat = torch.stack([r[2] for r in texts])
        return img_tok, img_feat, txt_tok, txt_pad, txt_feat

    def _pair_logits(self, model, img_tok, txt_tok, txt_pad):
        """(image rows, text rows) -> the ITM head's two logits for those pairs, as numpy [n, 2]."""
        device, dtype = next(model.parameters()).device, model_dtype(model)

        def pair_logits(rows_img, rows_txt):
            rows_img, rows_txt = torch.as_tensor(rows_img), torch.as_tensor(rows_txt)
            logits = model.itm_logits(
                img_tok[rows_img].to(device, dtype), txt_tok[rows_txt].to(device, dtype), txt_pad[rows_txt].to(device)
            )
            return logits.float().cpu().numpy()

        return pair_logits

    @staticmethod
    def _my_rows(n: int) -> range:
        rank, world = (
            (torch.distributed.get_rank(), torch.distributed.get_world_size())
            if torch.distributed.is_initialized()
            else (0, 1)
        )
        return range(rank, n, world)

    @torch.no_grad()
    def score_matrices(self, model, data: RetrievalEvalSet, full_itm: bool = False):
        """(scores_i2t, scores_t2i, ITC similarities, full-ITM matrix or None).

        Re-ranking: each query's ITC top-``k_test`` candidates get ``run.rerank_score`` (blip / albef /
        margin_sim, see :mod:`mmllm_retrieval.scoring`), every other pair a fixed low score. With
        ``full_itm``, also the ITM match logit of every pair [images x texts] (METER's protocol).
        """
        img_tok, img_feat, txt_tok, txt_pad, txt_feat = self._unimodal(model, data)
        sims = (img_feat @ txt_feat.T).double().numpy()
        was_training = model.training
        model.eval()
        pair_logits = self._pair_logits(model, img_tok, txt_tok, txt_pad)
        k, rule = self.run.k_test, self.run.rerank_score

        def gathered(part: dict) -> dict:
            merged = {}
            for piece in distributed.all_gather_objects(part):
                merged.update(piece)
            return merged

        n_img, n_txt = sims.shape
        i2t = topk_rerank(sims, pair_logits, k, rule, rows=self._my_rows(n_img))
        t2i = topk_rerank(sims.T, pair_logits, k, rule, transpose=True, rows=self._my_rows(n_txt))
        scores_i2t = fill_reranked(gathered(i2t), (n_img, n_txt))
        scores_t2i = fill_reranked(gathered(t2i), (n_txt, n_img))
        full = None
        if full_itm:
            rows = gathered(
                full_itm_scores(
                    n_img,
                    n_txt,
                    pair_logits,
                    self.run.batch_size_eval,
                    self._my_rows(n_img),
                    progress=distributed.is_main(),
                )
            )
            full = np.stack([rows[i] for i in range(n_img)])
        model.train(was_training)
        return scores_i2t, scores_t2i, sims, full

    def evaluate(self, model, dataset, split: str, out_dir: Path) -> dict[str, float]:
        """Recalls of ITC top-k re-ranking (the main metric, ``r_mean``), ITC alone (``itc_r_mean``) and,
        with ``run.full_itm``, of every pair scored by ITM (``full_itm_*``)."""
        check_eval_set(dataset, split, self.name)
        start = time.perf_counter()
        scores_i2t, scores_t2i, sims, full = self.score_matrices(model, dataset, full_itm=self.run.full_itm)
        seconds = time.perf_counter() - start
        itc_only = retrieval_metrics(sims, sims.T, dataset.img2txt, dataset.txt2img)  # before re-ranking
        report: dict[str, Any] = {
            "itc_only": itc_only,
            "rerank_score": self.run.rerank_score,
            "k_test": self.run.k_test,
            "eval_seconds": round(seconds, 2),
        }
        extra = {"itc_r_mean": round(itc_only["r_mean"], 2)}
        if full is not None:
            full_metrics = retrieval_metrics(full, full.T, dataset.img2txt, dataset.txt2img)
            report["full_itm"] = {**full_metrics, "pairs": int(full.size)}
            extra.update({f"full_itm_{k}": round(v, 2) for k, v in full_metrics.items()})
            log.info("%s: full ITM scored %d pairs; evaluation took %.1f s", split, full.size, seconds)
            if distributed.is_main():  # same keys: projects/retrieval/evaluate.py --scores reads either file
                np.savez(Path(out_dir) / f"scores_full_itm_{split}.npz", scores_i2t=full, scores_t2i=full.T)
        return {**self.bench.score_rankings(scores_i2t, scores_t2i, dataset, split, Path(out_dir), report), **extra}
