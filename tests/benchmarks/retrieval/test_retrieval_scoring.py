"""Retrieval scoring protocols on hand-built score matrices: ITC top-k re-ranking under each named
rule (BLIP, ALBEF, the logit margin) and METER's full ITM, recalls worked out by hand."""

import numpy as np
import pytest

from mmllm.errors import ConfigError, DataError
from mmllm_retrieval.metrics import caption_index, retrieval_metrics
from mmllm_retrieval.scoring import NOT_RERANKED, fill_reranked, full_itm_scores, rerank_score, topk_rerank

# 3 images, one caption each (text t belongs to image t)
SIMS = np.array([[0.9, 0.8, 0.1], [0.7, 0.6, 0.5], [0.2, 0.3, 0.4]])
MATCH = np.array(
    [
        [1.0, 1.5, 3.0],  # ITM logit of "match" for (image i, text t)
        [2.0, 1.6, 0.0],
        [0.0, 0.0, 0.5],
    ]
)
NO_MATCH = np.zeros((3, 3))
NO_MATCH[1, 0] = 1.5


def pair_logits(rows_img, rows_txt):
    return np.stack([NO_MATCH[rows_img, rows_txt], MATCH[rows_img, rows_txt]], axis=1)


def recalls(i2t, t2i, n=3):
    img2txt, txt2img = caption_index([1] * n)
    return retrieval_metrics(i2t, t2i, img2txt, txt2img)


def reranked(rule, k=2):
    n = SIMS.shape[0]
    i2t = fill_reranked(topk_rerank(SIMS, pair_logits, k, rule), (n, n))
    t2i = fill_reranked(topk_rerank(SIMS.T, pair_logits, k, rule, transpose=True), (n, n))
    return i2t, t2i


def test_rerank_rules_by_hand():
    logits = np.array([[0.5, 2.0], [1.5, 2.0]])
    sim = np.array([0.25, 0.75])
    assert rerank_score(logits, sim, "blip").tolist() == [2.25, 2.75]  # itm[:,1] + sim
    assert rerank_score(logits, sim, "albef").tolist() == [2.0, 2.0]  # itm[:,1]
    assert rerank_score(logits, sim, "margin_sim").tolist() == [1.75, 1.25]  # itm[:,1] - itm[:,0] + sim
    with pytest.raises(ConfigError, match="rerank_score must be one of"):
        rerank_score(logits, sim, "itm_sim")


def test_only_the_itc_top_k_are_rescored():
    i2t, t2i = reranked("blip")
    # image 0's ITC top-2 are texts 0, 1 (0.9, 0.8): 1.0 + 0.9 and 1.5 + 0.8; text 2 is left out
    assert i2t[0].tolist() == pytest.approx([1.9, 2.3, NOT_RERANKED])
    # text 2's ITC top-2 are images 1, 2 (0.5, 0.4): 0.0 + 0.5 and 0.5 + 0.4
    assert t2i[2].tolist() == pytest.approx([NOT_RERANKED, 0.5, 0.9])


# Ranks of the true pair (0 = first), worked out by hand from SIMS/MATCH/NO_MATCH with k = 2:
#                txt (image -> text)   img (text -> image)
# albef          [1, 1, 0]             [1, 0, 0]
# blip           [1, 1, 0]             [1, 1, 0]
# margin_sim     [1, 0, 0]             [0, 1, 0]
# full ITM       [2, 1, 0]             [1, 0, 1]
# With 3 candidates every rank is < 5, so R@5 = R@10 = 100 everywhere; R@1 = share of rank 0.
@pytest.mark.parametrize(
    "rule, txt_r1, img_r1",
    [
        ("albef", 100 / 3, 200 / 3),
        ("blip", 100 / 3, 100 / 3),
        ("margin_sim", 200 / 3, 200 / 3),
    ],
)
def test_recalls_of_each_rerank_rule(rule, txt_r1, img_r1):
    r = recalls(*reranked(rule))
    assert r["txt_r1"] == pytest.approx(txt_r1) and r["img_r1"] == pytest.approx(img_r1)
    assert r["txt_r5"] == r["txt_r10"] == r["img_r5"] == r["img_r10"] == 100.0
    assert r["r_mean"] == pytest.approx(((txt_r1 + 200) / 3 + (img_r1 + 200) / 3) / 2)


def test_full_itm_recalls_and_batches():
    calls = []

    def counting(rows_img, rows_txt):
        calls.append(len(rows_img))
        return pair_logits(rows_img, rows_txt)

    rows = full_itm_scores(3, 3, counting, batch_size=4)
    assert calls == [4, 4, 1]  # 9 pairs, 4 per forward pass
    full = np.stack([rows[i] for i in range(3)])
    assert full.tolist() == MATCH.tolist()  # the match logit alone, no similarity
    r = recalls(full, full.T)
    assert r["txt_r1"] == pytest.approx(100 / 3) and r["img_r1"] == pytest.approx(100 / 3)
    # a subset of image rows (one rank's share): only those rows are scored
    part = full_itm_scores(3, 3, pair_logits, batch_size=2, image_rows=[2])
    assert list(part) == [2] and part[2].tolist() == [0.0, 0.0, 0.5]


def test_rerank_is_capped_by_itc_recall_full_itm_is_not():
    """12 pairs whose ITC similarity puts the true caption last; a perfect ITM head. Re-ranking the
    ITC top-10 can never bring it back (R@10 = 0); scoring every pair with ITM finds all (100)."""
    n, k = 12, 10
    sims = -np.abs(np.arange(n)[:, None] - np.arange(n)[None, :]).astype(float)
    sims[np.arange(n), np.arange(n)] = -100.0  # the true pair: the lowest similarity of its row and column
    perfect = np.eye(n) * 10.0

    def logits(rows_img, rows_txt):
        return np.stack([np.zeros(len(rows_img)), perfect[rows_img, rows_txt]], axis=1)

    i2t = fill_reranked(topk_rerank(sims, logits, k, "blip"), (n, n))
    t2i = fill_reranked(topk_rerank(sims.T, logits, k, "blip", transpose=True), (n, n))
    capped = recalls(i2t, t2i, n)
    assert capped["txt_r10"] == capped["img_r10"] == capped["r_mean"] == 0.0
    rows = full_itm_scores(n, n, logits, batch_size=50)
    full = np.stack([rows[i] for i in range(n)])
    assert recalls(full, full.T, n)["r_mean"] == 100.0


def test_non_finite_itm_scores_are_refused():
    def nan_logits(rows_img, rows_txt):
        return np.full((len(rows_img), 2), np.nan)

    with pytest.raises(DataError, match="non-finite"):
        topk_rerank(SIMS, nan_logits, 2, "albef")
    with pytest.raises(DataError, match="non-finite"):
        full_itm_scores(3, 3, nan_logits, batch_size=4)


@pytest.mark.parametrize("config", ["configs/retrieval/emoji_meter_smollm2.yaml", "configs/lavis/retrieval_emoji.yaml"])
def test_retrieval_config_lrs_are_meters_ratios(tmp_path, config):
    """METER's retrieval ratios (cross-modal x5, heads x5 over the base) and the paper's adapters at 10x."""
    from conftest import ROOT
    from tiny_llms import save_tiny

    from mmllm.config import load_config
    from mmllm.params import param_groups
    from mmllm_retrieval.model import RetrievalModelOptions, create_retrieval_model

    save_tiny("llama", tmp_path / "llm")
    options = RetrievalModelOptions.model_validate(
        {
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
            "embed_dim": 16,
            "llm_block": {"kind": "llm_block", "source": str(tmp_path / "llm"), "layers": "last", "dtype": "float32"},
        }
    )
    model = create_retrieval_model(options)
    run = load_config(ROOT / config).run
    base = float(run.init_lr)
    lr_of = {n: g["lr"] for g in param_groups(model, base, 0.01, dict(run.lr_multipliers)) for n in g["names"]}
    cross = ("image_proj", "text_proj", "image_layers", "text_layers", "image_pooler", "text_pooler")
    for name, lr in lr_of.items():
        if name.startswith(("itm_head.", "image_itc.", "text_itc.")) or any(
            name.startswith(f"backbone.{m}.") for m in cross
        ):
            factor = 5.0
        elif name.startswith("backbone.llm_block.adapter_"):
            factor = 10.0
        elif (
            name.startswith(("backbone.vision.", "backbone.text.", "backbone.modality_embed.")) or name == "logit_scale"
        ):
            factor = 1.0
        else:
            raise AssertionError(f"parameter {name} has no expected LR")
        assert lr == pytest.approx(base * factor), name
