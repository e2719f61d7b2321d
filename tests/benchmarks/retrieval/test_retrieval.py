"""Retrieval end to end on tiny data, the score-file evaluator, the emoji captions, bad inputs."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT
from test_engine import clean_env, metrics
from tiny_vqa import tiny_config, write_images_and_qa

from mmllm.errors import DataError
from mmllm_retrieval.emoji_convert import caption_of

SCRIPT = ROOT / "projects/retrieval"


def test_emoji_captions_from_unicode_names():
    assert caption_of("1f600") == "grinning face"
    assert caption_of("1f470-1f3fc") == "bride with veil, emoji modifier fitzpatrick type-3"
    assert caption_of("1f468-200d-1f469-200d-1f467") == "man, woman, girl"  # joiners carry no name


def test_tiny_retrieval_trains_and_evaluates(tmp_path):
    data = write_images_and_qa(tmp_path / "d")
    out = tmp_path / "run"
    cfg = tiny_config(data, out, task="mmllm_retrieval", max_epoch=4, k_test=4, full_itm=True)
    subprocess.run(
        [sys.executable, str(SCRIPT / "train.py"), "--config", str(cfg)],
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    train = [m for m in metrics(out) if m.get("split") == "train"]
    assert {"itc_loss", "itm_loss"} <= set(train[0])
    assert np.mean([m["loss"] for m in train[-3:]]) < np.mean([m["loss"] for m in train[:3]])
    summary = json.loads((out / "summary.json").read_text())
    keys = ["txt_r1", "txt_r5", "txt_r10", "txt_r_mean", "img_r1", "img_r5", "img_r10", "img_r_mean", "r_mean"]
    assert all(f"test_{k}" in summary for k in keys)
    scores = np.load(out / "scores_test.npz")
    assert scores["scores_i2t"].shape == (6, 6) and scores["scores_t2i"].shape == (6, 6)
    assert (scores["scores_i2t"] > -100).sum(1).tolist() == [4] * 6  # top-4 re-ranked per image
    # METER's protocol: every pair scored by ITM, in its own score file, reported as full_itm_*
    full = np.load(out / "scores_full_itm_test.npz")
    assert full["scores_i2t"].shape == (6, 6) and (full["scores_i2t"] == full["scores_t2i"].T).all()
    assert all(f"test_full_itm_{k}" in summary for k in keys)
    from_full = subprocess.run(
        [
            sys.executable,
            str(SCRIPT / "evaluate.py"),
            "--scores",
            str(out / "scores_full_itm_test.npz"),
            "--annotation",
            str(data / "captions_val.json"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert {k: round(v, 2) for k, v in json.loads(from_full.stdout).items()} == {
        k: summary[f"test_full_itm_{k}"] for k in keys
    }
    recall = json.loads((out / "recall_test.json").read_text())
    assert recall["rerank_score"] == "blip" and recall["full_itm"]["pairs"] == 36 and recall["eval_seconds"] > 0
    # the score-file evaluator and the checkpoint evaluator give the run's numbers
    from_file = subprocess.run(
        [
            sys.executable,
            str(SCRIPT / "evaluate.py"),
            "--scores",
            str(out / "scores_test.npz"),
            "--annotation",
            str(data / "captions_val.json"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert {k: round(v, 2) for k, v in json.loads(from_file.stdout).items()} == {k: summary[f"test_{k}"] for k in keys}
    from_ckpt = subprocess.run(
        [
            sys.executable,
            str(SCRIPT / "evaluate.py"),
            "--checkpoint",
            str(out / "model_final.pt"),
            "--out-dir",
            str(tmp_path / "e"),
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    full_keys = [f"full_itm_{k}" for k in keys]
    assert json.loads(from_ckpt.stdout) == {k: summary[f"test_{k}"] for k in [*keys, "itc_r_mean", *full_keys]}
    # the re-ranking rule is an evaluation setting: a trained run re-evaluates under another one
    other = subprocess.run(
        [
            sys.executable,
            str(SCRIPT / "evaluate.py"),
            "--checkpoint",
            str(out / "model_final.pt"),
            "--out-dir",
            str(tmp_path / "e2"),
            "--rerank-score",
            "albef",
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads((tmp_path / "e2" / "recall_test.json").read_text())["rerank_score"] == "albef"
    assert json.loads(other.stdout)["itc_r_mean"] == summary["test_itc_r_mean"]  # ITC does not depend on it


def test_score_file_shape_must_match_annotation(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("retrieval_evaluate", SCRIPT / "evaluate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (tmp_path / "test.json").write_text(
        json.dumps([{"image": "a.png", "caption": ["x"] * 4}, {"image": "b.png", "caption": ["y"] * 5}])
    )
    np.savez(tmp_path / "s.npz", scores_i2t=np.zeros((2, 8)), scores_t2i=np.zeros((8, 2)))
    with pytest.raises(DataError, match="annotation implies \\(2, 9\\)"):
        script.from_scores(str(tmp_path / "s.npz"), str(tmp_path / "test.json"))
    np.savez(tmp_path / "s.npz", scores_i2t=np.zeros((2, 9)))
    with pytest.raises(DataError, match="lacks"):
        script.from_scores(str(tmp_path / "s.npz"), str(tmp_path / "test.json"))
