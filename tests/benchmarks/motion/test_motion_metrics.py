"""The motion evaluator against hand-computed Argoverse 1 metrics (min-FDE mode != min-ADE mode, ties, K=1,
pruning by probability) and every malformed input it must refuse."""

import json

import numpy as np
import pytest

from mmllm.errors import DataError
from vision.motion.evaluate import evaluate_file, main
from vision.motion.metrics import forecasting_metrics

# Two sequences, K=3 modes, T=2 steps. Errors per step, worked by hand:
#  seq 0, gt (1,0),(2,0): A (1,0),(2,3) -> 0, 3   ADE 1.5  FDE 3
#                          B (1,2),(2,2.5) -> 2, 2.5 ADE 2.25 FDE 2.5   <- min FDE (not min ADE: that is A)
#                          C (1,.5),(2,2.8) -> .5, 2.8 ADE 1.65 FDE 2.8
#  seq 1, gt (0,0),(0,0): A (0,1),(0,1) -> 1, 1      ADE 1    FDE 1     <- min FDE
#                          B (0,0),(3,4) -> 0, 5      ADE 2.5  FDE 5
#                          C (0,.1),(0,1.5) -> .1, 1.5 ADE .8  FDE 1.5  (min ADE)
FORECASTS = np.array(
    [
        [[[1, 0], [2, 3]], [[1, 2], [2, 2.5]], [[1, 0.5], [2, 2.8]]],
        [[[0, 1], [0, 1]], [[0, 0], [3, 4]], [[0, 0.1], [0, 1.5]]],
    ],
    dtype=np.float64,
)
GT = np.array([[[1, 0], [2, 0]], [[0, 0], [0, 0]]], dtype=np.float64)
PROBS = np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])


def test_min_ade_is_the_ade_of_the_min_fde_mode():
    m = forecasting_metrics(FORECASTS, GT)
    assert m["minFDE"] == pytest.approx((2.5 + 1.0) / 2)
    assert m["minADE"] == pytest.approx((2.25 + 1.0) / 2)  # the min over ADEs would give (1.5 + 0.8) / 2
    assert m["MR"] == pytest.approx(0.5)  # seq 0 misses (2.5 > 2), seq 1 does not


def test_brier_and_probability_metrics():
    m = forecasting_metrics(FORECASTS, GT, PROBS)
    # chosen modes: seq 0 B (p 0.3), seq 1 A (p 0.2); same modes as without probabilities
    assert m["minADE"] == pytest.approx(1.625) and m["minFDE"] == pytest.approx(1.75)
    assert m["brier-minFDE"] == pytest.approx(((2.5 + 0.7**2) + (1.0 + 0.8**2)) / 2)
    assert m["brier-minADE"] == pytest.approx(((2.25 + 0.7**2) + (1.0 + 0.8**2)) / 2)
    # -log p capped at -log 0.05: -log 0.3 = 1.20397, -log 0.2 = 1.60944
    assert m["p-minFDE"] == pytest.approx(((2.5 + 1.2039728) + (1.0 + 1.6094379)) / 2, abs=1e-6)
    assert m["p-MR"] == pytest.approx((1.0 + (1 - 0.2)) / 2)  # a miss counts 1, a hit 1 - p


def test_fde_ties_follow_the_api_order():
    # A: errors 2, 1 (ADE 1.5, FDE 1); B: errors 0, 1 (ADE 0.5, FDE 1): equal FDEs
    f = np.array([[[[0, 2], [1, 0]], [[0, 0], [0, 1]]]], dtype=np.float64)
    g = np.zeros((1, 2, 2))
    assert forecasting_metrics(f, g)["minADE"] == pytest.approx(1.5)  # the first mode wins a tie
    by_prob = forecasting_metrics(f, g, np.array([[0.4, 0.6]]))
    assert by_prob["minADE"] == pytest.approx(0.5)  # modes scanned most probable first: B
    assert by_prob["brier-minFDE"] == pytest.approx(1.0 + 0.4**2)
    equal = forecasting_metrics(f, g, np.array([[0.5, 0.5]]))
    assert equal["minADE"] == pytest.approx(1.5)  # stable sort keeps A first


def test_single_mode_and_pruning_to_the_most_probable():
    f = np.array([[[[0, 0], [0, 0]]]], dtype=np.float64)  # K=1
    g = np.array([[[0, 0], [3, 4]]], dtype=np.float64)  # errors 0, 5
    m = forecasting_metrics(f, g, np.array([[1.0]]))
    assert (m["minADE"], m["minFDE"], m["MR"]) == pytest.approx((2.5, 5.0, 1.0))
    assert m["brier-minFDE"] == pytest.approx(5.0)
    # K=3 pruned to 1 guess: the most probable mode (C for seq 1, A for seq 0), probability renormalised to 1
    top1 = forecasting_metrics(FORECASTS, GT, PROBS, max_guesses=1)
    assert top1["minFDE"] == pytest.approx((3.0 + 1.5) / 2)
    assert top1["minADE"] == pytest.approx((1.5 + 0.8) / 2)
    assert top1["brier-minFDE"] == pytest.approx(top1["minFDE"])
    first2 = forecasting_metrics(FORECASTS, GT, max_guesses=2)  # without probabilities: the first two
    assert first2["minFDE"] == pytest.approx((2.5 + 1.0) / 2)


def test_miss_threshold_is_strict():
    g = np.zeros((2, 1, 2))
    f = np.array([[[[2.0, 0.0]]], [[[2.0001, 0.0]]]])
    assert forecasting_metrics(f, g)["MR"] == pytest.approx(0.5)


def _api_loop(forecasts, gt, probs, max_guesses):
    """The documented Argoverse procedure written as a plain per-sequence loop (an independent reference)."""
    ades, fdes, briers = [], [], []
    for i in range(len(gt)):
        order = sorted(range(forecasts.shape[1]), key=lambda j: -probs[i][j])[:max_guesses]
        kept = [probs[i][j] for j in order]
        kept = [p / sum(kept) for p in kept]
        best, best_fde = 0, float("inf")
        for n, j in enumerate(order):
            fde = float(np.hypot(*(forecasts[i, j, -1] - gt[i, -1])))
            if fde < best_fde:
                best, best_fde = n, fde
        j = order[best]
        ades.append(float(np.mean([np.hypot(*(forecasts[i, j, t] - gt[i, t])) for t in range(gt.shape[1])])))
        fdes.append(best_fde)
        briers.append(best_fde + (1 - kept[best]) ** 2)
    return np.mean(ades), np.mean(fdes), np.mean(briers)


def test_matches_a_plain_loop_on_random_forecasts():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(50, 6, 30, 2)) * 3
    g = rng.normal(size=(50, 30, 2)) * 3
    p = rng.dirichlet(np.ones(6), size=50)
    for guesses in (6, 3, 1):
        m = forecasting_metrics(f, g, p, max_guesses=guesses)
        assert (m["minADE"], m["minFDE"], m["brier-minFDE"]) == pytest.approx(_api_loop(f, g, p, guesses))


@pytest.mark.parametrize(
    "forecasts, gt, probs, message",
    [
        (np.zeros((2, 6, 30, 2)), np.zeros((3, 30, 2)), None, "disagree"),
        (np.zeros((2, 6, 30, 2)), np.zeros((2, 20, 2)), None, "disagree"),
        (np.zeros((2, 30, 2)), np.zeros((2, 30, 2)), None, r"\[N, K, T, 2\]"),
        (np.zeros((2, 6, 30, 3)), np.zeros((2, 30, 2)), None, r"\[N, K, T, 2\]"),
        (np.full((2, 6, 30, 2), np.nan), np.zeros((2, 30, 2)), None, "forecasts holds 720 NaN"),
        (np.zeros((2, 6, 30, 2)), np.full((2, 30, 2), np.inf), None, "gt holds"),
        (np.zeros((2, 6, 30, 2)), np.zeros((2, 30, 2)), np.full((2, 6), 0.5), "sum to 3"),
        (np.zeros((2, 6, 30, 2)), np.zeros((2, 30, 2)), np.full((2, 5), 0.2), r"\[N, K\]"),
        (np.zeros((2, 2, 30, 2)), np.zeros((2, 30, 2)), np.array([[1.5, -0.5]] * 2), "negative"),
        (np.zeros((2, 2, 30, 2)), np.zeros((2, 30, 2)), np.array([[np.nan, 1.0]] * 2), "NaN"),
    ],
)
def test_bad_forecasts_are_refused(forecasts, gt, probs, message):
    with pytest.raises(DataError, match=message):
        forecasting_metrics(forecasts, gt, probs)


def test_cli_prints_one_json_object(tmp_path, capsys):
    path = tmp_path / "f.npz"
    np.savez(path, forecasts=FORECASTS, gt=GT, probabilities=PROBS)
    assert main(["--forecasts", str(path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["minADE"] == pytest.approx(1.625) and report["MR"] == pytest.approx(0.5)
    assert report["brier-minFDE"] == pytest.approx(2.315)
    assert report["num_sequences"] == 2 and report["num_modes"] == 3
    assert evaluate_file(path, max_guesses=1)["num_modes"] == 1


def test_cli_bad_file_is_one_line_and_exit_2(tmp_path, capsys):
    missing_gt = tmp_path / "nogt.npz"
    np.savez(missing_gt, forecasts=FORECASTS)
    assert main(["--forecasts", str(missing_gt)]) == 2
    err = capsys.readouterr().err
    assert "missing array 'gt'" in err and str(missing_gt) in err and err.count("\n") == 1
    shapes = tmp_path / "shapes.npz"
    np.savez(shapes, forecasts=FORECASTS, gt=GT[:1])
    assert main(["--forecasts", str(shapes)]) == 2
    assert "disagree" in capsys.readouterr().err
    assert main(["--forecasts", str(tmp_path / "absent.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err
