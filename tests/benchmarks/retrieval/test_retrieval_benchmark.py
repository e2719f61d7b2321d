"""The retrieval benchmark and its two models (METER, VLAP): one data section, one scorer of score matrices."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ROOT
from omegaconf import OmegaConf

from mmllm.config import load_config
from mmllm.engine.registry import all_tasks, build_task
from mmllm.engine.rundir import config_differences
from mmllm.errors import ConfigError


def test_meter_and_vlap_are_models_of_one_retrieval_benchmark():
    pairs = {n: e for n, e in all_tasks().items() if e.benchmark_name == "mmllm_retrieval"}
    assert set(pairs) == {"mmllm_retrieval", "mmllm_retrieval_vlap"}
    assert {e.dataset for e in pairs.values()} == {"mmllm_retrieval"}
    for name, config in (("mmllm_retrieval", "emoji_meter_smollm2"), ("mmllm_retrieval_vlap", "emoji_vlap_smollm2")):
        cfg = load_config(ROOT / f"configs/retrieval/{config}.yaml")
        assert list(cfg.datasets) == ["mmllm_retrieval"] and build_task(cfg).name == name
    # VLAP runs stored their data under datasets.mmllm_retrieval_vlap: they resolve as the same run
    cfg = load_config(ROOT / "configs/retrieval/emoji_vlap_smollm2.yaml")
    stored = OmegaConf.to_container(cfg)
    stored["datasets"] = {"mmllm_retrieval_vlap": stored["datasets"]["mmllm_retrieval"]}
    entry = pairs["mmllm_retrieval_vlap"]
    assert (
        config_differences(entry.build(OmegaConf.create(stored)).resolved_config(), entry.build(cfg).resolved_config())
        == []
    )


def test_the_benchmark_scores_two_score_matrices_by_hand(tmp_path):
    """2 images with 2 captions each (texts 0, 1 of image 0; 2, 3 of image 1)."""
    from mmllm.data.captions import CaptionedImage
    from mmllm_retrieval.benchmark import RetrievalEvalSet

    cfg = load_config(ROOT / "configs/retrieval/emoji_meter_smollm2.yaml", [f"run.output_dir={tmp_path}"])
    bench = build_task(cfg).bench
    data = RetrievalEvalSet([CaptionedImage("a.png", ["a0", "a1"]), CaptionedImage("b.png", ["b0", "b1"])], None)
    i2t = np.array(
        [
            [0.1, 0.9, 0.5, 0.2],  # image 0: best text 1 (its own): R@1 hit
            [0.8, 0.1, 0.2, 0.3],
        ]
    )  # image 1: ranks 0, 3, 2, 1: its own (2, 3) first at rank 2
    t2i = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.3, 0.7]])  # texts 0, 2, 3 right; text 1 wrong
    metrics = bench.score_rankings(i2t, t2i, data, "test", tmp_path, {"note": "x"})
    # text retrieval (image queries): R@1 = 1/2, R@5 = R@10 = 1; image retrieval (text queries): R@1 = 3/4
    assert metrics["txt_r1"] == 50.0 and metrics["txt_r5"] == 100.0 and metrics["img_r1"] == 75.0
    assert metrics["r_mean"] == pytest.approx((50 + 100 + 100 + 75 + 100 + 100) / 6, abs=0.01)
    saved = np.load(tmp_path / "scores_test.npz")
    assert np.array_equal(saved["scores_i2t"], i2t) and np.array_equal(saved["scores_t2i"], t2i)
    assert json.loads((tmp_path / "recall_test.json").read_text())["note"] == "x"
    with pytest.raises(ConfigError, match="score matrices"):
        bench.score(None, data, "test", tmp_path)
