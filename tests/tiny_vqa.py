"""A tiny VQAv2-format dataset (solid-colour images) and a small model config for engine tests."""

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
ROOT = Path(__file__).resolve().parents[1]


def write_images_and_qa(folder: Path, n_images: int = 24, start_qid: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    qs, anns, caps = [], [], []
    names = list(COLORS)
    for i in range(n_images):
        color = names[i % 3]
        pixels = np.clip(np.array(COLORS[color]) + rng.integers(-20, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"{i}.png")
        for j, (question, answer, qtype) in enumerate(
            [
                ("what color is the image?", color, "what color is"),
                (f"is the image {names[(i + 1) % 3]}?", "no", "is the"),
                (f"is the image {color}?", "yes", "is the"),
            ]
        ):
            qid = start_qid + 10 * i + j
            qs.append({"question_id": qid, "image_id": i, "question": question})
            anns.append(
                {
                    "question_id": qid,
                    "image_id": i,
                    "question_type": qtype,
                    "answer_type": "yes/no" if answer in ("yes", "no") else "other",
                    "answers": [{"answer": answer, "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)],
                }
            )
        caps.append({"image": f"{i}.png", "caption": f"a {color} image", "image_id": i})
    (folder / "questions.json").write_text(json.dumps({"questions": qs}))
    (folder / "annotations.json").write_text(json.dumps({"annotations": anns}))
    (folder / "captions_train.json").write_text(json.dumps(caps))
    (folder / "captions_val.json").write_text(
        json.dumps([{"image": c["image"], "caption": [c["caption"]]} for c in caps[:6]])
    )
    return folder


def tiny_config(data: Path, out: Path, task: str = "mmllm_vqa", block: str = "llm_block", **run) -> Path:
    split = {
        "questions": str(data / "questions.json"),
        "annotations": str(data / "annotations.json"),
        "image_root": str(data / "images"),
    }
    cfg = {
        "model": {
            "vision": {"vit": {"image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "heads": 2}},
            "text": {
                "name": "minilm-l6",
                "random_init": True,
                "config_overrides": {
                    "num_hidden_layers": 1,
                    "hidden_size": 32,
                    "num_attention_heads": 2,
                    "intermediate_size": 64,
                },
            },
            "hidden_size": 32,
            "fusion_layers": 1,
            "num_heads": 2,
            "dropout": 0.1,
            "llm_block_on": "vision",
            "llm_block": {"kind": block, "source": "smollm2-135m", "layers": "last"},
        },
        "datasets": {
            "mmllm_vqa": {
                "num_answers": 10,
                "max_text_len": 12,
                "image_pattern": "{image_id}.png",
                "splits": {"train": split, "val": split, "test": split},
            },
            "mmllm_retrieval": {
                "max_text_len": 12,
                "splits": {
                    "train": {"annotation": str(data / "captions_train.json"), "image_root": str(data / "images")},
                    "test": {"annotation": str(data / "captions_val.json"), "image_root": str(data / "images")},
                },
            },
            "mmllm_captions": {
                "splits": {
                    "train": {"annotation": str(data / "captions_train.json"), "image_root": str(data / "images")},
                    "val": {"annotation": str(data / "captions_val.json"), "image_root": str(data / "images")},
                }
            },
        },
        "run": {
            "task": task,
            "output_dir": str(out),
            "deepspeed_config": str(ROOT / "configs/deepspeed/zero0.json"),
            "precision": "bf16",
            "seed": 0,
            "max_epoch": 4,
            "batch_size_train": 8,
            "batch_size_eval": 16,
            "init_lr": 1e-3,
            "weight_decay": 0.01,
            "warmup_steps": 2,
            "lr_sched": "cosine",
            "checkpoint_every": 4,
            "log_every": 1,
            "num_workers": 0,
            **run,
        },
    }
    path = out.parent / f"{out.name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path
