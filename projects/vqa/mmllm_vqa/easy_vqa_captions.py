"""Captions for easy-VQA's images written from their own labels, for LLaVA's stage 1 (projector
pre-training on image–caption pairs; LLaVA used LCS-558K, which easy-VQA cannot offer).

Every easy-VQA image is one shape (circle, rectangle, triangle) of one colour. The package keeps that
label only in the image's QA pairs, so it is read back off all of them: the open questions ("what
color is the circle?" -> red, "what is the blue shape?" -> circle) and the yes/no ones ("is there
not a red shape?" -> no says red); contradicting evidence is an error, not a guess. The caption is
``"a <colour> <shape>"`` (:func:`caption_from_label`). Images whose colour no question reveals get
``"a <shape>"``; those without a known shape get no caption.

Written in the Karpathy format (:mod:`mmllm.data.captions`) under their own root, with the same
train/val image split as the VQA conversion (:mod:`.easy_vqa_convert`: every 10th training image is
val) and easy-VQA's test images as test; the VQA files are untouched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mmllm.data.embedded import MARKER, convert_once, link_folder
from mmllm.errors import DataError
from mmllm.jsonio import write_json

from .easy_vqa_convert import SHAPES, _easy_vqa

COLORS = ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow")
_NEGATED = re.compile(r"\b(not|no)\b")


@dataclass(frozen=True)
class ImageLabel:
    """One easy-VQA image's label: its shape and (when some question reveals it) its colour."""

    shape: str
    color: str | None = None


def caption_from_label(label: ImageLabel) -> str:
    """``"a red circle"`` (or ``"a circle"`` with no known colour)."""
    if label.shape not in SHAPES:
        raise DataError(f"{label.shape!r} is not an easy-VQA shape ({sorted(SHAPES)})")
    if label.color is not None and label.color not in COLORS:
        raise DataError(f"{label.color!r} is not an easy-VQA colour ({COLORS})")
    return f"a {label.color} {label.shape}" if label.color else f"a {label.shape}"


def _evidence(question: str, answer: str) -> tuple[str | None, str | None]:
    """(shape, colour) one QA pair proves about its image (None: says nothing on that)."""
    q = question.lower().rstrip("?").strip()
    words = set(re.findall(r"[a-z]+", q))
    named_shape = next((s for s in SHAPES if s in words), None)
    named_color = next((c for c in COLORS if c in words), None)
    if answer in ("yes", "no"):  # a presence question: "is there (not) a red shape (in the image)?"
        present = (answer == "yes") != bool(_NEGATED.search(q))
        if not present:
            return None, None  # an absent thing says nothing about what is there
        return named_shape, named_color
    if answer in SHAPES:  # "what shape is ...", "what is the blue shape?"
        return answer, named_color
    if answer in COLORS:  # "what color is the circle?", "what is the color of the shape?"
        return named_shape, answer
    return None, None


def image_labels(questions, answers, image_ids) -> dict[int, ImageLabel]:
    """Each image's :class:`ImageLabel` from all its QA pairs; contradicting pairs raise DataError."""
    shapes: dict[int, str] = {}
    colors: dict[int, str] = {}
    for question, answer, image in zip(questions, answers, image_ids):
        shape, color = _evidence(question, answer)
        for found, value, kind in ((shapes, shape, "shape"), (colors, color, "colour")):
            if value is None:
                continue
            if found.setdefault(int(image), value) != value:
                raise DataError(
                    f"easy-VQA image {image}: {question!r} -> {answer!r} says {kind} {value}, "
                    f"another question of it says {found[int(image)]}"
                )
    return {img: ImageLabel(shape, colors.get(img)) for img, shape in shapes.items()}


def convert(out_dir: str | Path, val_fraction: float = 0.1) -> dict[str, str]:
    """Karpathy-format caption files of easy-VQA's train / val / test images; returns their paths."""
    ev = _easy_vqa()
    out = Path(out_dir)
    train = image_labels(*ev.get_train_questions())
    test = image_labels(*ev.get_test_questions())
    every = max(1, round(1 / val_fraction)) if val_fraction > 0 else 0
    is_val = {img: bool(every) and img % every == 0 for img in train}  # the VQA conversion's val images
    train_root = Path(next(iter(ev.get_train_image_paths().values()))).parent
    test_root = Path(next(iter(ev.get_test_image_paths().values()))).parent
    for name, root in (("train", train_root), ("test", test_root)):
        link_folder(out / "images" / name, root)
    rows = {
        "train": [
            {"image": f"{i}.png", "caption": caption_from_label(lab), "image_id": i}
            for i, lab in sorted(train.items())
            if not is_val[i]
        ],
        "val": [
            {"image": f"{i}.png", "caption": [caption_from_label(lab)]} for i, lab in sorted(train.items()) if is_val[i]
        ],
        "test": [{"image": f"{i}.png", "caption": [caption_from_label(lab)]} for i, lab in sorted(test.items())],
    }
    paths = {}
    for name, records in rows.items():
        write_json(out / f"captions_{name}.json", records)
        paths[f"captions_{name}"] = str(out / f"captions_{name}.json")
    paths.update(train_image_root=str(out / "images" / "train"), test_image_root=str(out / "images" / "test"))
    write_json(out / MARKER, paths)
    return paths


def ensure_converted(root: str | Path) -> Path:
    return convert_once(root, convert)
