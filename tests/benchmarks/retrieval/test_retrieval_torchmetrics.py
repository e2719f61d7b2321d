"""Our retrieval recall (R@1/5/10 both ways) cross-checked against torchmetrics' RetrievalHitRate,
an independent implementation: hit rate@k of a query = 1 if a relevant item is in its top k."""

import numpy as np
import pytest
import torch
from torchmetrics.retrieval import RetrievalHitRate  # the "test" extra installs torchmetrics

from mmllm_retrieval.metrics import retrieval_metrics


def hit_rate(scores: np.ndarray, relevant: list[list[int]], k: int) -> float:
    """Percent of queries (rows of ``scores``) with a relevant column among their k best."""
    n_query, n_item = scores.shape
    target = torch.zeros(n_query, n_item, dtype=torch.bool)
    for q, items in enumerate(relevant):
        target[q, items] = True
    indexes = torch.arange(n_query)[:, None].expand(n_query, n_item)
    metric = RetrievalHitRate(top_k=k)
    return 100.0 * float(metric(torch.from_numpy(scores).flatten(), target.flatten(), indexes=indexes.flatten()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recall_matches_torchmetrics(seed):
    rng = np.random.default_rng(seed)
    n_img, per_img = 13, 5  # COCO/Flickr: five captions per image
    txt2img = [i for i in range(n_img) for _ in range(per_img)]
    rng.shuffle(txt2img)
    img2txt = [[t for t, i in enumerate(txt2img) if i == img] for img in range(n_img)]
    # continuous scores (no ties, where tie-breaking conventions could differ), made informative
    sims = rng.normal(size=(n_img, len(txt2img)))
    for t, i in enumerate(txt2img):
        sims[i, t] += rng.uniform(0, 2.5)
    scores_t2i = sims.T + rng.normal(scale=0.3, size=sims.T.shape)  # a different ranking each way
    ours = retrieval_metrics(sims, scores_t2i, img2txt, txt2img)
    for k in (1, 5, 10):
        assert ours[f"txt_r{k}"] == pytest.approx(
            hit_rate(sims, img2txt, k), abs=1e-4
        )  # torchmetrics averages in float32
        assert ours[f"img_r{k}"] == pytest.approx(
            hit_rate(scores_t2i, [[i] for i in txt2img], k), abs=1e-4
        )  # torchmetrics averages in float32
    assert 0 < ours["txt_r1"] < 100 and 0 < ours["img_r1"] < 100  # a non-trivial case
