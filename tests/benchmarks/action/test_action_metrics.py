"""Action metrics on hand-computed cases: multi-view softmax averaging, top-1/top-5, the CLI, bad input."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from mmllm.errors import DataError
from vision.action.evaluate import action_metrics, aggregate_views, from_scores, main, topk_accuracy


def test_views_are_averaged_as_probabilities_not_logits():
    # view 1 logits [2, 0, 0] -> softmax [e^2, 1, 1] / (e^2 + 2); view 2 [0, 3, 3.5]
    v1 = np.array([math.exp(2), 1, 1]) / (math.exp(2) + 2)
    v2 = np.array([1, math.exp(3), math.exp(3.5)]) / (1 + math.exp(3) + math.exp(3.5))
    logits = np.array([[[2.0, 0.0, 0.0], [0.0, 3.0, 3.5]]])
    np.testing.assert_allclose(aggregate_views(logits=logits)[0], (v1 + v2) / 2, rtol=1e-12)
    # mean probabilities: class 0 (0.403 > 0.357 > 0.240); the mean of logits would pick class 2
    assert topk_accuracy(aggregate_views(logits=logits), np.array([0]), ks=(1,)) == {"top1": 100.0}
    assert topk_accuracy(logits.mean(axis=1), np.array([0]), ks=(1,)) == {"top1": 0.0}


def test_top1_top5_by_hand():
    probs = np.array(
        [
            [0.30, 0.25, 0.20, 0.10, 0.08, 0.07],  # label 0: rank 1
            [0.30, 0.25, 0.20, 0.10, 0.08, 0.07],  # label 4: rank 5 -> top-5 hit only
            [0.30, 0.25, 0.20, 0.10, 0.08, 0.07],  # label 5: rank 6 -> miss
            [0.05, 0.05, 0.60, 0.10, 0.10, 0.10],  # label 2: rank 1
        ]
    )
    labels = np.array([0, 4, 5, 2])
    assert topk_accuracy(probs, labels) == {"top1": 50.0, "top5": 75.0}
    # ties: the lower class index ranks first (classes 0 and 1 tie at 0.5)
    assert topk_accuracy(np.array([[0.5, 0.5], [0.5, 0.5]]), np.array([0, 1]), ks=(1,)) == {"top1": 50.0}
    # fewer than 5 classes: top-5 is left out rather than reported as a trivial 100
    assert topk_accuracy(np.array([[0.2, 0.8]]), np.array([1])) == {"top1": 100.0}


def test_action_metrics_counts_and_probability_input():
    probs = np.array([[[0.7, 0.3], [0.2, 0.8]], [[0.9, 0.1], [0.6, 0.4]]])  # means [0.45, 0.55], [0.75, 0.25]
    out = action_metrics(np.array([1, 1]), probs=probs)
    assert out == {"top1": 50.0, "num_videos": 2, "num_views": 2}


@pytest.mark.parametrize(
    "logits,labels,message",
    [
        (np.array([[0.0, np.nan]]), np.array([0]), "NaN/inf"),
        (np.array([[0.0, np.inf]]), np.array([0]), "NaN/inf"),
        (np.array([[0.0, 1.0]]), np.array([2]), "labels outside the class list 0..1: \\[2\\]"),
        (np.array([[0.0, 1.0]]), np.array([0, 1]), "labels must be \\[N\\] = \\[1\\]"),
        (np.zeros((0, 3)), np.zeros(0, dtype=int), "N, V, K > 0"),
        (np.zeros(3), np.array([0]), "must be \\[N, K\\] or \\[N, V, K\\]"),
    ],
)
def test_bad_scores_are_refused(logits, labels, message):
    with pytest.raises(DataError, match=message):
        action_metrics(labels, logits=logits)


def test_probs_must_be_distributions():
    with pytest.raises(DataError, match="sum to 1"):
        action_metrics(np.array([0]), probs=np.array([[0.5, 0.6]]))


def test_cli_on_score_files(tmp_path, capsys):
    good = tmp_path / "scores.npz"
    logits = np.log(np.array([[[0.7, 0.2, 0.1]], [[0.1, 0.2, 0.7]], [[0.3, 0.6, 0.1]]]))  # preds 0, 2, 1
    np.savez(good, logits=logits, labels=np.array([0, 2, 2]))
    assert from_scores(good) == {"top1": pytest.approx(66.67), "num_videos": 3, "num_views": 1}
    assert main(["--scores", str(good)]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == 66.67
    bad = tmp_path / "bad.npz"
    np.savez(bad, logits=logits)
    run = subprocess.run(
        [sys.executable, "-m", "vision.action.evaluate", "--scores", str(bad)], capture_output=True, text=True
    )  # the real command line: one line on stderr, exit 2
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip().count("\n") == 0 and "has no 'labels' array" in run.stderr
