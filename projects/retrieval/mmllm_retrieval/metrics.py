"""Recall@K for image–text retrieval, as reported for Flickr30k/COCO (Karpathy test splits).

Text retrieval (image -> text): an image counts as retrieved at rank k if *any* of its
captions is among its k best-scored texts. Image retrieval (text -> image): a caption
counts if its image is among its k best-scored images. Percentages; means as in ALBEF/METER.
"""

from __future__ import annotations

import numpy as np

from mmllm.errors import DataError


def caption_index(captions_per_image: list[int]) -> tuple[list[list[int]], list[int]]:
    """Image -> its text indices, text -> its image, with texts numbered image by image in order."""
    img2txt, txt2img, t = [], [], 0
    for i, n in enumerate(captions_per_image):
        if n <= 0:
            raise DataError(f"image {i} has no caption")
        img2txt.append(list(range(t, t + n)))
        txt2img += [i] * n
        t += n
    return img2txt, txt2img


def _checked_scores(name: str, scores, shape: tuple[int, int], axes: str) -> np.ndarray:
    """A real-valued, finite score matrix of the expected shape.

    NaN sorts last under argsort, so a NaN-filled matrix whose true pairs hold numbers would
    score R@1 = 100: non-finite scores are refused, not ranked.
    """
    try:
        scores = np.asarray(scores)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} is not a numeric matrix: {exc}") from exc
    real = np.issubdtype(scores.dtype, np.integer) or np.issubdtype(scores.dtype, np.floating)
    if scores.dtype == bool or not real:
        raise DataError(f"{name} has dtype {scores.dtype}, expected real-valued (float or int) scores")
    if scores.shape != shape:
        raise DataError(f"{name} has shape {scores.shape}, the annotation implies {shape} [{axes}]")
    bad = int(np.count_nonzero(~np.isfinite(scores)))
    if bad:
        n_nan = int(np.count_nonzero(np.isnan(scores)))
        raise DataError(
            f"{name} has {bad} non-finite entr{'y' if bad == 1 else 'ies'} of {scores.size} "
            f"({n_nan} NaN, {bad - n_nan} inf): refusing to rank them"
        )
    return scores.astype(np.float64, copy=False)  # unsigned ints would wrap when negated for sorting


def retrieval_metrics(
    scores_i2t: np.ndarray, scores_t2i: np.ndarray, img2txt: list[list[int]], txt2img: list[int]
) -> dict[str, float]:
    """R@1/5/10 per direction, their means and the overall mean (percent).

    ``scores_i2t`` is [images x texts], ``scores_t2i`` [texts x images]; both must be finite.
    """
    n_img, n_txt = len(img2txt), len(txt2img)
    if n_img == 0 or n_txt == 0:
        raise DataError(f"nothing to rank: the annotation has {n_img} image(s) and {n_txt} caption(s)")
    scores_i2t = _checked_scores("scores_i2t", scores_i2t, (n_img, n_txt), "images x texts")
    scores_t2i = _checked_scores("scores_t2i", scores_t2i, (n_txt, n_img), "texts x images")
    # rank of the best-ranked correct item (0 = first); stable sort on the negated score
    order = np.argsort(-scores_i2t, axis=1, kind="stable")
    position = np.empty_like(order)
    np.put_along_axis(position, order, np.arange(n_txt)[None, :].repeat(n_img, 0), axis=1)
    txt_rank = np.array([position[i, caps].min() for i, caps in enumerate(img2txt)])
    order = np.argsort(-scores_t2i, axis=1, kind="stable")
    img_rank = np.array([int(np.nonzero(order[t] == txt2img[t])[0][0]) for t in range(n_txt)])
    out = {}
    for name, ranks in (("txt", txt_rank), ("img", img_rank)):
        for k in (1, 5, 10):
            out[f"{name}_r{k}"] = 100.0 * float(np.mean(ranks < k))
        out[f"{name}_r_mean"] = (out[f"{name}_r1"] + out[f"{name}_r5"] + out[f"{name}_r10"]) / 3
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    return out
