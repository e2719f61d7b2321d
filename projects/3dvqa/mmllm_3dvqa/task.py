"""3D VQA task (SQA3D / ScanQA formats) for the shared engine."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from torch.utils.data import Dataset

from mmllm.engine import distributed
from mmllm.engine.evaluation import PredictionSet, predict_split
from mmllm.engine.preprocess import Preprocess
from mmllm.engine.registry import registered_task
from mmllm.engine.task import Task
from mmllm.errors import DataError
from mmllm.jsonio import read_json, write_json
from mmllm.models.encoders import build_tokenizer
from mmllm.schema import DataSection, Section

from . import eval3d
from .data import SceneQADataset, SceneStore, build_answer_vocab, load_scanqa, load_sqa3d, make_collate
from .model import SceneQAModelOptions, answer_loss, create_3dvqa_model, situation_loss
from .scenes import situated_breakdown


class SplitFiles(Section):
    """SQA3D: ``questions`` + ``annotations`` (annotations optional for unlabelled test files);
    ScanQA: ``annotations`` only (``ScanQA_v1.0_<split>.json``, questions and answers in one list)."""

    questions: str | None = None
    annotations: str | None = None


class SceneQADataOptions(DataSection):
    format: Literal["sqa3d", "scanqa"] = Field("sqa3d", description="layout of the question files")
    splits: dict[str, SplitFiles]
    scene_dir: str = Field(description="folder of the per-scene point clouds")
    scene_pattern: str = Field("{scene_id}.npy", description="file name of a scene's points (.npy [P, 3+C] or .ply)")
    use_color: bool = Field(True, description="feed r g b (columns 3-5) to the tokenizer with x y z")
    color_scale: float = Field(255.0, gt=0, description="colours are divided by this (ScanNet: 0-255)")
    num_points: int = Field(1024, gt=0, description="points sampled per scene and question")
    cache_points: int = Field(40000, gt=0, description="at most this many points kept in memory per scene")
    max_text_len: int = Field(64, gt=0, description="tokens of situation + question")
    num_answers: int | None = Field(None, gt=0, description="answer vocabulary: the top-K training answers (None: all)")
    answer_vocab: str | None = Field(None, description="JSON list of answers to use instead (e.g. a run's)")
    blank_situation: bool = Field(False, description="ablation: drop the situation text (the question alone)")

    @model_validator(mode="after")
    def _check_splits(self) -> SceneQADataOptions:
        if "train" not in self.splits:
            raise ValueError("splits needs a 'train' split (it defines the answer vocabulary)")
        for name, spec in self.splits.items():
            if self.format == "sqa3d" and not spec.questions:
                raise ValueError(f"splits.{name}: SQA3D needs 'questions' (and 'annotations' to train or score)")
            if self.format == "scanqa" and (spec.questions or not spec.annotations):
                raise ValueError(f"splits.{name}: ScanQA takes its file as 'annotations' alone")
        if "{scene_id}" not in self.scene_pattern:
            raise ValueError("scene_pattern must contain {scene_id}")
        return self


ROOT = Path(__file__).resolve().parents[3]
DEFAULTS = Path(__file__).resolve().parent / "lavis_defaults"


@registered_task(
    "mmllm_3dvqa",
    model_arch="mmllm_meter_3dvqa",
    metric="em1",
    higher_is_better=True,
    default_config=ROOT / "configs/3dvqa/scenes_meter_smollm2.yaml",
    preparers={"pb_scenes": "mmllm_3dvqa.scenes:ensure_generated"},
    lavis_model_config=DEFAULTS / "mmllm_meter_3dvqa.yaml",
    lavis_dataset_config=DEFAULTS / "mmllm_3dvqa.yaml",
    variants={
        "block": (),
        "no_block": ("model.llm_block.kind=none",),
        "no_situation": ("datasets.mmllm_3dvqa.blank_situation=true",),  # with the block, situation text dropped
    },
    description="3D VQA: point-cloud scene tokens + MiniLM situation/question, METER co-attention, "
    "the frozen LLM block on the fused 3D tokens; EM@1/EM@10 (ScanQA/SQA3D)",
)
class SceneQATask(Task):
    ModelOptions = SceneQAModelOptions
    DataOptions = SceneQADataOptions
    # nothing is cast to bf16 by the engine: points are coordinates (the tokenizer groups them in fp32 and
    # casts only the centred groups), targets and poses are regression/soft targets
    compute_dtype_inputs = ()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._records: dict[str, list[dict[str, Any]]] = {}
        self.vocab: list[str] | None = None
        self.store: SceneStore | None = None

    # --- data
    def records(self, split: str) -> list[dict[str, Any]]:
        if split not in self._records:
            spec = self.data_cfg.splits[split]
            if self.data_cfg.format == "sqa3d":
                self._records[split] = load_sqa3d(spec.questions, spec.annotations)
            else:
                self._records[split] = load_scanqa(spec.annotations)
        return self._records[split]

    def answer_vocab(self) -> list[str]:
        if self.vocab is None:
            path = self.data_cfg.answer_vocab
            if path:
                vocab = read_json(path, "answer vocabulary")
                if not isinstance(vocab, list) or not all(isinstance(a, str) for a in vocab):
                    raise DataError(f"{path}: an answer vocabulary is a JSON list of strings")
                self.vocab = [eval3d.normalize_answer(a) for a in vocab]
            else:
                self.vocab = build_answer_vocab(self.records("train"), self.data_cfg.num_answers)
            if not self.vocab:
                raise DataError(f"datasets.{self.dataset_key}: the training split has no answers: empty vocabulary")
        return self.vocab

    def build_preprocess(self) -> Preprocess:
        self.tokenizer = build_tokenizer(self.model_cfg.text)
        return Preprocess(tokenizer=self.tokenizer)  # points are sampled by the dataset: no transform

    def build_model(self):
        return create_3dvqa_model(self.model_cfg, len(self.answer_vocab()), self.data_cfg.use_color)

    def build_datasets(self) -> dict[str, Dataset]:
        d = self.data_cfg
        out_dir = Path(self.run.output_dir)
        if distributed.is_main():
            write_json(out_dir / "answer_vocab.json", self.answer_vocab())
        if self.store is None:
            self.store = SceneStore(d.scene_dir, d.scene_pattern, d.use_color, d.cache_points)
        return {
            name: SceneQADataset(
                name,
                self.records(name),
                self.store,
                self.answer_vocab(),
                d.num_points,
                train=name == "train",
                blank_situation=d.blank_situation,
                color_scale=d.color_scale,
            )
            for name in d.splits
        }

    def collate(self, samples):
        return make_collate(
            self.tokenizer,
            len(self.answer_vocab()),
            self.data_cfg.max_text_len,
            separate_text=self.model_cfg.arch_variant == "sqa3d",
        )(samples)

    def forward(self, model, batch):
        """(answer logits, pose or None) for either ``model.arch_variant``."""
        if self.model_cfg.arch_variant == "sqa3d":
            return model(
                batch["points"],
                batch["situation_ids"],
                batch["situation_mask"],
                batch["question_ids"],
                batch["question_mask"],
            )
        return model(batch["points"], batch["input_ids"], batch["attention_mask"])

    # --- objective
    def training_loss(self, model, batch):
        logits, pose = self.forward(model, batch)
        loss = answer_loss(logits, batch["targets"], self.model_cfg.answer_loss)
        logs: dict[str, float] = {}
        if pose is not None:
            m = self.model_cfg
            aux, logs = situation_loss(
                pose, batch["pose"], batch["pose_mask"], m.situation_position_weight, m.situation_rotation_weight
            )
            logs["loss_answer"] = loss.item()
            loss = loss + aux
        return loss, logs

    def predict_top10(self, model, dataset: SceneQADataset) -> PredictionSet:
        """Question id -> the 10 highest-scoring answers of the vocabulary (fewer if it is smaller)."""
        vocab = self.answer_vocab()
        k = min(eval3d.TOP_K, len(vocab))

        def step(m, batch):
            logits, _ = self.forward(m, batch)
            top = logits.float().topk(k, dim=-1).indices.tolist()
            return zip(batch["question_id"], ([vocab[i] for i in row] for row in top))

        return predict_split(
            model, dataset, self.collate, self.run.batch_size_eval, step, desc=f"eval {dataset.name}", task=self
        )

    def evaluate(self, model, dataset, split: str, out_dir: Path) -> dict[str, float]:
        predictions = self.predict_top10(model, dataset)
        raw_ids = dict(zip(dataset.table["question_id"], dataset.table["qid_json"]))
        if distributed.is_main():  # ScanQA's submission layout, with the files' own question ids
            write_json(
                Path(out_dir) / f"results_{split}.json",
                [{"question_id": json.loads(raw_ids[q]), "answer_top10": a} for q, a in sorted(predictions.items())],
            )
        references = dataset.references()
        if not references:
            return {}
        report = eval3d.score(references, {q: predictions[q] for q in references}, source=f"split {split!r}")
        breakdown = situated_breakdown(references, predictions)  # embedded scenes only
        if breakdown:
            report["situated"] = breakdown
        if distributed.is_main():
            write_json(Path(out_dir) / f"em_{split}.json", report)
        return {
            **{k: report[k] for k in ("em1", "em10", "em1_refined", "em10_refined")},
            **{f"em1_{t}": v for t, v in report["per_type"].items()},
            **{k: v for k, v in (breakdown or {}).items() if k.startswith("em1_")},
        }


def evaluate_checkpoint(checkpoint: str, split: str = "test", out_dir: str | None = None) -> dict[str, Any]:
    """EM report of a trained run on one split of its config (``evaluate.py --checkpoint``): ``mmllm evaluate
    --run`` with the whole EM report and the results file's path."""
    from mmllm.engine.evaluation import evaluate_run

    def use_run_vocab(cfg):  # the vocabulary the model was trained with
        vocab = Path(checkpoint).parent / "answer_vocab.json"
        if vocab.is_file():
            cfg.datasets.mmllm_3dvqa.answer_vocab = str(vocab)

    def em_report(task, model, dataset, split, out):
        metrics = task.evaluate(model, dataset, split, out)
        report = read_json(out / f"em_{split}.json") if metrics else {}
        return {"results": str(out / f"results_{split}.json"), **report}

    return evaluate_run(checkpoint, split, out_dir, tasks=("mmllm_3dvqa",), edit=use_run_vocab, score=em_report)


def main(argv: Sequence[str] | None = None) -> int:
    """``python projects/3dvqa/evaluate.py --annotations A.json [--questions Q.json] --results R.json``
    (the metrics: :mod:`.eval3d`), or ``--checkpoint``: a trained run (:func:`evaluate_checkpoint`)."""
    import argparse

    from mmllm.console import print_report

    parser = argparse.ArgumentParser(description=eval3d.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", help="ScanQA list, or SQA3D annotations (with --questions)")
    parser.add_argument("--questions", help="SQA3D questions file (v1_balanced_questions_<split>_scannetv2.json)")
    parser.add_argument("--results", help="[{question_id, answer_top10: [...]}] (ScanQA submission layout)")
    parser.add_argument("--checkpoint", help="score a trained run instead: its model_final.pt")
    parser.add_argument("--split", default="test", help="with --checkpoint: the split of the run's config")
    parser.add_argument("--out-dir", help="with --checkpoint: where results_<split>.json goes (default: the run)")
    args = parser.parse_args(argv)
    if args.checkpoint:
        return print_report(lambda: evaluate_checkpoint(args.checkpoint, args.split, args.out_dir))
    if not (args.annotations and args.results):
        parser.error("give --annotations and --results (and --questions for SQA3D files), or --checkpoint")
    return print_report(lambda: eval3d.evaluate_files(args.annotations, args.results, args.questions))
