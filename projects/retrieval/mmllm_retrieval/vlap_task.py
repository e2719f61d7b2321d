"""VLAP image–text retrieval for the shared engine: assignment prediction (+ captioning) training,
ranking by cosine similarity in the LLM's word-embedding space, the same Recall@K evaluator.

Variants: ``vlap`` (``0.1 · L_map + L_cap``, the release's weighting) and ``vlap_assign_only``
(``caption_weight=0``: no captioning; with the release's ``text_features: llm_hidden`` the frozen
LLM still runs forward on the captions, without backward)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mmllm.data.captions import load_captions
from mmllm.data.images import image_transform
from mmllm.engine.benchmark import BenchmarkModel
from mmllm.engine.evaluation import predict_split
from mmllm.engine.preprocess import Preprocess
from mmllm.engine.registry import registered_model
from mmllm.errors import ConfigError, DataError
from mmllm.models.encoders import vision_input_spec
from mmllm.models.vlap import word_frequency_prior

from .benchmark import RetrievalBenchmark, RetrievalEvalSet, check_eval_set
from .vlap_model import VLAPRetrievalOptions, create_vlap_retrieval_model


def _pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and mask [B, L] (L >= 1)."""
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


ROOT = Path(__file__).resolve().parents[3]


@registered_model(  # VLAP (issue 13): one linear layer into the LLM's word-embedding space
    "vlap_retrieval",
    task="mmllm_retrieval_vlap",
    model_arch="mmllm_vlap_retrieval",
    default_config=ROOT / "configs/retrieval/emoji_vlap_smollm2.yaml",
    variants={"vlap": (), "vlap_assign_only": ("model.caption_weight=0",)},
    description="VLAP: frozen ViT -> linear -> LLM word-embedding space, 0.1 x assignment prediction "
    "(+ captioning), as the release; Recall@K",
)
class VLAPRetrievalTask(BenchmarkModel):
    """VLAP on the retrieval benchmark: ranking by cosine similarity in the LLM's word-embedding space."""

    benchmark = RetrievalBenchmark
    bench: RetrievalBenchmark
    ModelOptions = VLAPRetrievalOptions
    compute_dtype_inputs = ("images",)

    def build_preprocess(self, tokenizer=None) -> Preprocess:
        """The LLM's own tokenizer (captions are read in its vocabulary) and the image transform."""
        from mmllm.models.llava import load_tokenizer

        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(self.model_cfg.llm)
        if self.tokenizer.eos_token_id is None:
            raise ConfigError(f"model.llm={self.model_cfg.llm}: the tokenizer has no EOS token")
        self.pad_id = int(
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        )
        self.transform = image_transform(*vision_input_spec(self.model_cfg.vision))
        return Preprocess.shared(self.transform, self.tokenizer)

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])[: self.model_cfg.max_text_tokens]

    def word_prior(self) -> torch.Tensor:
        """Token frequencies of the training captions in the LLM's vocabulary, add-alpha smoothed."""
        if "train" not in self.data_cfg.splits:
            raise ConfigError(f"datasets.{self.dataset_key}.splits.train is needed for the word prior")
        spec = self.data_cfg.splits["train"]
        items = load_captions(spec, check_images=False)
        vocab = len(self.tokenizer)
        return word_frequency_prior(
            (self._ids(c) for item in items for c in item.captions),
            vocab,
            self.model_cfg.prior_smoothing,
            ignore_ids=[self.pad_id],
        )

    def build_model(self, lm=None):
        self.preprocess  # noqa: B018 - the call-order check: build_preprocess loaded the tokenizer
        return create_vlap_retrieval_model(self.model_cfg, self.word_prior(), self.tokenizer, lm)

    def _text_batch(self, captions: list[str]) -> dict[str, torch.Tensor]:
        rows = [self._ids(c) for c in captions]
        empty = [c for c, r in zip(captions, rows) if not r]
        if empty:
            raise DataError(f"caption {empty[0]!r} has no tokens")
        ids, mask = _pad(rows, self.pad_id)
        return {"input_ids": ids, "attention_mask": mask}

    def collate(self, samples):
        captions = [s["caption"] for s in samples]
        batch = {"images": torch.stack([s["image"] for s in samples]), **self._text_batch(captions)}
        if self.model_cfg.caption_weight > 0:
            prompt = self._ids(self.model_cfg.caption_prompt)
            eos = int(self.tokenizer.eos_token_id)
            batch["prompt_ids"], batch["prompt_mask"] = _pad([prompt] * len(samples), self.pad_id)
            batch["answer_ids"], batch["answer_mask"] = _pad(
                [self._ids(" " + c.strip()) + [eos] for c in captions], self.pad_id
            )
        return batch

    def training_loss(self, model, batch):
        out = model(batch)
        logs = {k: v.item() for k, v in out.items() if k != "loss"}
        return out["loss"], logs

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def similarities(self, model, data: RetrievalEvalSet) -> np.ndarray:
        """Cosine similarity [images x texts] in the word-embedding space."""
        module = getattr(model, "module", model)
        size = self.run.batch_size_eval

        def image_step(m, batch):
            return zip(batch["index"].tolist(), module.image_features(batch["images"]).float().cpu())

        def text_step(m, batch):
            feats = module.text_features(batch["input_ids"], batch["attention_mask"])
            return zip(batch["index"].tolist(), feats.float().cpu())

        def image_collate(s):
            return {"index": torch.tensor([x["index"] for x in s]), "images": torch.stack([x["image"] for x in s])}

        def text_collate(s):
            return {"index": torch.tensor([x["index"] for x in s]), **self._text_batch([x["caption"] for x in s])}

        images = predict_split(model, data.images(), image_collate, size, image_step, "eval images", task=self)
        texts = predict_split(model, data.captions(), text_collate, size, text_step, "eval texts", task=self)
        img = torch.nn.functional.normalize(torch.stack(list(images.values())), dim=-1)
        txt = torch.nn.functional.normalize(torch.stack(list(texts.values())), dim=-1)
        return (img @ txt.T).numpy()

    def evaluate(self, model, dataset, split: str, out_dir: Path) -> dict[str, float]:
        check_eval_set(dataset, split, self.name)
        sims = self.similarities(model, dataset)
        return self.bench.score_rankings(sims, sims.T, dataset, split, Path(out_dir))
