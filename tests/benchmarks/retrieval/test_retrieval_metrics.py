"""Recall@K against hand-computed cases, images with 4 and 5 captions included."""

import numpy as np
import pytest

from mmllm.errors import DataError
from mmllm_retrieval.metrics import caption_index, retrieval_metrics


def test_caption_index_4_and_5_captions():
    img2txt, txt2img = caption_index([5, 4])
    assert img2txt == [[0, 1, 2, 3, 4], [5, 6, 7, 8]] and txt2img == [0] * 5 + [1] * 4


def test_hand_computed_recalls():
    # 12 images: image 0 has 5 captions, image 1 has 4, images 2..11 one each -> 19 texts
    img2txt, txt2img = caption_index([5, 4] + [1] * 10)
    n_img, n_txt = 12, 19
    i2t = np.zeros((n_img, n_txt))
    # image 0: its best caption (text 3) ranked 2nd (index 1) -> hit at R@5/R@10, miss at R@1
    i2t[0, 10] = 0.9
    i2t[0, 3] = 0.8
    # image 1: best own caption (text 8) ranked 7th -> only R@10
    for j, t in enumerate([9, 10, 11, 12, 13, 14]):
        i2t[1, t] = 1.0 - 0.01 * j
    i2t[1, 8] = 0.5
    # images 2..11: own caption (text 7+i) first
    for i in range(2, 12):
        i2t[i, 7 + i] = 1.0
    # text -> image: texts of image 0 all find it first; texts of image 1 never in the top 10;
    # text 9 (image 2) has its image at rank 5 (index 4); the others first
    t2i = np.zeros((n_txt, n_img))
    for t in range(n_txt):
        t2i[t, txt2img[t]] = 1.0
    for t in range(5, 9):  # image 1 scored last
        t2i[t] = np.linspace(1, 0.5, n_img)
        t2i[t, 1] = 0.0
    t2i[9] = 0.5
    t2i[9, [0, 1, 3, 4]] = [0.9, 0.8, 0.7, 0.6]
    m = retrieval_metrics(i2t, t2i, img2txt, txt2img)
    assert m["txt_r1"] == pytest.approx(100 * 10 / 12)  # images 2..11
    assert m["txt_r5"] == pytest.approx(100 * 11 / 12)  # + image 0
    assert m["txt_r10"] == pytest.approx(100.0)  # + image 1
    assert m["img_r1"] == pytest.approx(100 * 14 / 19)  # 5 (image 0) + 9 singles (not text 9)
    assert m["img_r5"] == pytest.approx(100 * 15 / 19)  # + text 9
    assert m["img_r10"] == pytest.approx(100 * 15 / 19)  # image 1's 4 texts never
    assert m["txt_r_mean"] == pytest.approx((m["txt_r1"] + m["txt_r5"] + m["txt_r10"]) / 3)
    assert m["r_mean"] == pytest.approx((m["txt_r_mean"] + m["img_r_mean"]) / 2)
    assert set(m) == {
        "txt_r1",
        "txt_r5",
        "txt_r10",
        "txt_r_mean",
        "img_r1",
        "img_r5",
        "img_r10",
        "img_r_mean",
        "r_mean",
    }


def test_shape_mismatch_and_empty_captions():
    img2txt, txt2img = caption_index([2, 1])
    with pytest.raises(DataError, match="images x texts"):
        retrieval_metrics(np.zeros((3, 2)), np.zeros((3, 2)), img2txt, txt2img)
    with pytest.raises(DataError, match="no caption"):
        caption_index([2, 0])


def _two_one_one():
    """3 images with 2, 1, 1 captions -> 4 texts; the true pairs are (0,0) (0,1) (1,2) (2,3)."""
    img2txt, txt2img = caption_index([2, 1, 1])
    i2t, t2i = np.zeros((3, 4)), np.zeros((4, 3))
    for t, i in enumerate(txt2img):
        i2t[i, t] = t2i[t, i] = 1.0
    return i2t, t2i, img2txt, txt2img


def test_perfect_scores_give_100():
    i2t, t2i, img2txt, txt2img = _two_one_one()
    assert retrieval_metrics(i2t, t2i, img2txt, txt2img)["r_mean"] == 100.0


def test_nan_everywhere_but_true_pairs_is_refused_not_100():
    """NaN sorts last, so this used to score R@mean 100: 12 - 4 true pairs = 8 NaN entries per matrix."""
    i2t, t2i, img2txt, txt2img = _two_one_one()
    i2t[i2t == 0], t2i[t2i == 0] = np.nan, np.nan
    with pytest.raises(DataError, match=r"scores_i2t has 8 non-finite entries of 12 \(8 NaN, 0 inf\)"):
        retrieval_metrics(i2t, t2i, img2txt, txt2img)


def test_all_nan_and_inf_are_refused_naming_the_matrix():
    i2t, t2i, img2txt, txt2img = _two_one_one()
    with pytest.raises(DataError, match=r"scores_i2t has 12 non-finite entries of 12 \(12 NaN, 0 inf\)"):
        retrieval_metrics(np.full((3, 4), np.nan), np.full((4, 3), np.nan), img2txt, txt2img)
    t2i[2, 0] = -np.inf
    with pytest.raises(DataError, match=r"scores_t2i has 1 non-finite entry of 12 \(0 NaN, 1 inf\)"):
        retrieval_metrics(i2t, t2i, img2txt, txt2img)


def test_empty_annotation_is_refused_not_nan():
    with pytest.raises(DataError, match="nothing to rank"):
        retrieval_metrics(np.zeros((0, 0)), np.zeros((0, 0)), [], [])


@pytest.mark.parametrize(
    "i2t,t2i,message",
    [
        (
            np.zeros((3, 4)),
            np.zeros((3, 4)),
            r"scores_t2i has shape \(3, 4\), the annotation implies \(4, 3\) \[texts x images\]",
        ),
        (np.zeros(12), np.zeros((4, 3)), r"scores_i2t has shape \(12,\)"),
        (np.zeros((1, 3, 4)), np.zeros((4, 3)), r"scores_i2t has shape \(1, 3, 4\)"),
        (np.full((3, 4), "a"), np.zeros((4, 3)), "scores_i2t has dtype <U1"),
        (np.zeros((3, 4)), np.zeros((4, 3), dtype=bool), "scores_t2i has dtype bool"),
        (np.zeros((3, 4)), np.zeros((4, 3), dtype=complex), "scores_t2i has dtype complex128"),
    ],
)
def test_bad_shapes_and_dtypes(i2t, t2i, message):
    _, _, img2txt, txt2img = _two_one_one()
    with pytest.raises(DataError, match=message):
        retrieval_metrics(i2t, t2i, img2txt, txt2img)


def test_unsigned_int_scores_are_ranked_by_value():
    """Negating uint8 wraps (-0 = 0 < -5 = 251): each image's own caption (score 5) must still rank first."""
    img2txt, txt2img = caption_index([1, 1])
    i2t = np.array([[5, 0], [0, 5]], dtype=np.uint8)
    m = retrieval_metrics(i2t, i2t.T.copy(), img2txt, txt2img)
    assert m["txt_r1"] == 100.0 and m["img_r1"] == 100.0
