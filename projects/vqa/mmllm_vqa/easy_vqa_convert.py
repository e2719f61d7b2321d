"""Convert easy-VQA (``pip install easy-vqa==1.0``, MIT) to VQAv2 files, so one loader reads both.

easy-VQA has one answer per question; we record it for all 10 annotators, as a
unanimous VQAv2 question. A deterministic 10% of the training *images* (with all their
questions) becomes the val split; easy-VQA's test set is the test split. Captions for
VL pretraining ("a blue circle") are derived from each image's own QA pairs and written
in the Karpathy format.
"""

from __future__ import annotations

import re
from pathlib import Path

from mmllm.data.embedded import MARKER, convert_once, link_folder
from mmllm.errors import AssetMissingError
from mmllm.jsonio import write_json

PIP = "pip install easy-vqa==1.0"
QUESTION_TYPES = (
    "what color is",
    "what shape is",
    "what shape does",
    "what is the",
    "is there",
    "does the image",
    "is",
)
SHAPES = {"circle", "rectangle", "triangle"}


def question_type(question: str) -> str:
    text = question.lower().rstrip("?")
    return next((t for t in QUESTION_TYPES if text.startswith(t + " ")), "other")


def answer_type(answer: str) -> str:
    return "yes/no" if answer in ("yes", "no") else ("number" if answer.isdigit() else "other")


def _easy_vqa():
    try:
        import easy_vqa
    except ImportError as exc:
        raise AssetMissingError(f"easy-VQA is not installed: {PIP}") from exc
    return easy_vqa


def _records(questions, answers, image_ids, start_id: int, keep_images: set[int] | None):
    qs, anns = [], []
    for offset, (q, a, img) in enumerate(zip(questions, answers, image_ids)):
        if keep_images is not None and img not in keep_images:
            continue
        qid = start_id + offset
        qs.append({"question_id": qid, "image_id": int(img), "question": q})
        anns.append(
            {
                "question_id": qid,
                "image_id": int(img),
                "question_type": question_type(q),
                "answer_type": answer_type(a),
                "multiple_choice_answer": a,
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)],
            }
        )
    return qs, anns


def captions_from_qa(questions, answers, image_ids) -> dict[int, str]:
    """'a <color> <shape>' per image, read off questions like 'what is the blue shape?' -> 'circle'."""
    color, shape = {}, {}
    for q, a, img in zip(questions, answers, image_ids):
        m = re.match(r"what (?:is|shape is) the (\w+) shape\?", q)
        if m and a in SHAPES:
            color[img], shape[img] = m.group(1), a
        elif q.startswith("what color is the") and a not in ("yes", "no"):
            color[img] = a
            m = re.match(r"what color is the (\w+)\?", q)
            if m and m.group(1) in SHAPES:
                shape[img] = m.group(1)
        elif q.startswith(("what shape is", "what shape does")) and a in SHAPES:
            shape[img] = a
    return {img: f"a {color[img]} {shape[img]}" if img in color else f"a {shape[img]}" for img in shape}


def convert(out_dir: str | Path, val_fraction: float = 0.1) -> dict[str, str]:
    """Write VQAv2-format question/annotation files and Karpathy caption files; return their paths."""
    ev = _easy_vqa()
    out = Path(out_dir)
    tq, ta, tids = ev.get_train_questions()
    sq, sa, sids = ev.get_test_questions()
    train_images = sorted(set(tids))
    every = max(1, round(1 / val_fraction)) if val_fraction > 0 else 0
    val_images = {img for img in train_images if every and img % every == 0}
    fit_images = set(train_images) - val_images
    splits = {
        "train": _records(tq, ta, tids, 1_000_000, fit_images),
        "val": _records(tq, ta, tids, 1_000_000, val_images),
        "test": _records(sq, sa, sids, 2_000_000, None),
    }
    paths: dict[str, str] = {}
    for name, (qs, anns) in splits.items():
        info = {"description": f"easy-VQA {name} split in VQAv2 format", "license": "MIT (easy-vqa)"}
        write_json(out / f"{name}_questions.json", {"info": info, "data_subtype": name, "questions": qs})
        write_json(out / f"{name}_annotations.json", {"info": info, "data_subtype": name, "annotations": anns})
        paths[f"{name}_questions"] = str(out / f"{name}_questions.json")
        paths[f"{name}_annotations"] = str(out / f"{name}_annotations.json")
    # image folders of the package, used in place (nothing copied)
    train_root = Path(next(iter(ev.get_train_image_paths().values()))).parent
    test_root = Path(next(iter(ev.get_test_image_paths().values()))).parent
    for name, root in (("train", train_root), ("test", test_root)):
        link_folder(out / "images" / name, root)
    paths.update(train_image_root=str(out / "images" / "train"), test_image_root=str(out / "images" / "test"))
    # captions (Karpathy format): train one caption per row; val/test a list per image
    train_caps = captions_from_qa(tq, ta, tids)
    test_caps = captions_from_qa(sq, sa, sids)
    write_json(
        out / "captions_train.json",
        [{"image": f"{i}.png", "caption": c, "image_id": i} for i, c in sorted(train_caps.items()) if i in fit_images],
    )
    write_json(
        out / "captions_val.json",
        [{"image": f"{i}.png", "caption": [c]} for i, c in sorted(train_caps.items()) if i in val_images],
    )
    write_json(
        out / "captions_test.json", [{"image": f"{i}.png", "caption": [c]} for i, c in sorted(test_caps.items())]
    )
    for name in ("train", "val", "test"):
        paths[f"captions_{name}"] = str(out / f"captions_{name}.json")
    write_json(out / MARKER, paths)
    return paths


def ensure_converted(root: str | Path) -> Path:
    return convert_once(root, convert)
