"""Inputs and exact foregrounds for ``mmllm analyze`` on METER VQA over easy-VQA (Pang et al., ICLR 2024, §6).

An easy-VQA image is one shape on a solid background colour, so its foreground is known exactly: every pixel
whose colour is not the background's. The block (``backbone.llm_block``) sits on the fused vision stream,
whose tokens are the open_clip ViT's: CLS first, then the patch grid (64 px images, 16 px patches: 4×4).

CLS→token attention: the last self-attention of the vision encoder (the open_clip ViT's last resblock,
an ``nn.MultiheadAttention``) — the attention map a ViT is usually read by, computed on the image alone.
The fusion layers' self-attention would also see the question through cross-attention, and the block
itself sits after them; the unimodal encoder's map is the comparison the paper's ViT maps make.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from mmllm.analysis.run import AnalysisInputs
from mmllm.data.images import load_image
from mmllm.engine.evaluation import model_dtype
from mmllm.errors import ConfigError, DataError

from .data import question_image

TOLERANCE = 8  # uint8 units on the most-changed channel: anti-aliased rims with a few % of shape count as shape


def border_colour(image: np.ndarray) -> np.ndarray:
    """The most common colour on the image's one-pixel border (the background, even where the shape touches
    an edge); ties go to the colour met first."""
    border = np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])
    colour, _ = Counter(map(tuple, border.tolist())).most_common(1)[0]
    return np.asarray(colour, dtype=np.int16)


def foreground_mask(image: np.ndarray, tolerance: int = TOLERANCE) -> torch.Tensor:
    """[H, W] bool: pixels of an [H, W, 3] uint8 image whose colour differs from the background colour
    (:func:`border_colour`) by more than ``tolerance`` on some channel."""
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise DataError(f"expected an [H, W, 3] uint8 image, got shape {image.shape}, dtype {image.dtype}")
    diff = np.abs(image.astype(np.int16) - border_colour(image)).max(axis=-1)
    return torch.from_numpy(diff > tolerance)


def first_question_per_image(questions: list[dict], num: int) -> list[int]:
    """Indices of each image's first question, in file order, for the first ``num`` distinct images."""
    chosen: dict[int, int] = {}
    for i, q in enumerate(questions):
        if len(chosen) == num:
            break
        chosen.setdefault(q["image_id"], i)
    return list(chosen.values())


def analysis_inputs(task, model, dataset, num: int) -> AnalysisInputs:
    """The first ``num`` images of the split, each with its first question; foreground = non-background pixels."""
    backbone = model.backbone
    if backbone.llm_block is None:
        raise ConfigError("the run's block is not on the vision stream (model.llm_block_on): no visual tokens to map")
    indices = first_question_per_image(dataset.split.questions, num)
    raw = [np.asarray(load_image(question_image(dataset.split.questions[i]))) for i in indices]
    if len({r.shape for r in raw}) != 1:
        raise DataError(f"the analysed images differ in size: {sorted({r.shape for r in raw})}")
    masks = torch.stack([foreground_mask(r) for r in raw])
    display = torch.from_numpy(np.stack(raw)).float() / 255
    batch = task.collate([dataset[i] for i in indices])
    param = next(model.parameters())
    batch = task.move_batch(
        {k: batch[k] for k in ("images", "input_ids", "attention_mask")}, param.device, model_dtype(model)
    )
    visual = backbone.vision.visual
    return AnalysisInputs(
        forward=lambda m: m(batch["images"], batch["input_ids"], batch["attention_mask"]),
        masks=masks,
        display=display,
        prefix=1,
        grid=tuple(visual.grid_size),
        attention=visual.transformer.resblocks[-1].attn,
    )
