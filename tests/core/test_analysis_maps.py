"""Activation maps and IoU against hand and NumPy computations (Pang et al., ICLR 2024, §6)."""

import numpy as np
import pytest
import torch

from mmllm.analysis import attention_map, best_iou, frequency_map, iou, magnitude_map, mean_iou
from mmllm.errors import DataError

TOKENS = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [4.0, 0.0, 0.0, 3.0]]


def test_magnitude_by_hand():
    # mean token (5/3, 1/3, 0, 1); deviations: (-2/3, -1/3, 0, -1), (-5/3, 2/3, 0, -1), (7/3, -1/3, 0, 2)
    norms = np.sqrt([4 / 9 + 1 / 9 + 1, 25 / 9 + 4 / 9 + 1, 49 / 9 + 1 / 9 + 4])
    expected = (norms - norms.min()) / (norms.max() - norms.min())
    assert magnitude_map(torch.tensor(TOKENS)).numpy() == pytest.approx(expected, abs=1e-6)
    assert expected[0] == 0.0 and expected[2] == 1.0


def test_frequency_against_numpy():
    x = np.array(TOKENS)
    angle = np.angle(np.fft.fft(x, axis=-1))
    dist = np.linalg.norm(angle - angle.mean(axis=0), axis=-1)
    expected = (dist - dist.min()) / (dist.max() - dist.min())
    assert frequency_map(torch.tensor(TOKENS)).numpy() == pytest.approx(expected, abs=1e-6)


def test_constant_map_is_zero_not_nan():
    assert torch.equal(magnitude_map(torch.ones(5, 3)), torch.zeros(5))
    with pytest.raises(DataError, match="NaN"):
        magnitude_map(torch.tensor([[float("nan"), 1.0], [0.0, 1.0]]))


def test_iou_and_best_threshold_by_hand():
    target = torch.zeros(4, 4, dtype=torch.bool)
    target[:2, :2] = True  # the top-left quarter is foreground
    assert iou(target, target) == 1.0
    pred = torch.zeros(4, 4, dtype=torch.bool)
    pred[:2, :] = True  # the top half: 4 of 8 predicted pixels are right -> 4 / 8
    assert iou(pred, target) == 0.5
    # a 2x2 token map: top-left 0.9, top-right 0.5, bottom 0.0; nearest upsampling to 4x4
    token_map = torch.tensor([[0.9, 0.5], [0.0, 0.0]])
    score, threshold = best_iou(token_map, target)
    assert score == 1.0 and threshold == pytest.approx(0.6)  # 0.6 .. 0.9 keep only the top-left patch
    assert best_iou(token_map, target, thresholds=[0.1])[0] == 0.5  # 0.1 keeps the top half
    assert mean_iou([1.0, 0.5]) == 0.75


def test_attention_map_is_min_max_normalised_cls_row():
    # a CLS row over 4 patches: 0.1, 0.4, 0.2, 0.3 -> (x - 0.1) / 0.3
    row = torch.tensor([0.1, 0.4, 0.2, 0.3])
    assert attention_map(row).numpy() == pytest.approx([0.0, 1.0, 1 / 3, 2 / 3], abs=1e-6)
    assert torch.equal(attention_map(torch.full((4,), 0.25)), torch.zeros(4))  # uniform attention: nothing stands out
    with pytest.raises(DataError, match="one attention row"):
        attention_map(torch.ones(2, 2))


def test_summary_over_runs_is_mean_and_sample_std():
    from mmllm.analysis.run import summarise
    from mmllm.errors import ConfigError

    reports = [
        {"run": f"r{i}", "background": "plain", "miou_magnitude_after": v, "miou_random": 10.0, "images": 4}
        for i, v in enumerate((10.0, 20.0, 30.0))
    ]
    summary = summarise(reports)
    assert summary["miou_magnitude_after"] == {"mean": 20.0, "std": 10.0, "n": 3}  # sqrt((100 + 0 + 100) / 2)
    assert summary["miou_random"] == {"mean": 10.0, "std": 0.0, "n": 3} and "images" not in summary
    assert summary["runs"] == ["r0", "r1", "r2"] and summary["background"] == ["plain"]
    with pytest.raises(ConfigError, match="differ"):
        summarise([reports[0], {"run": "x", "background": "plain", "miou_random": 1.0}])


def test_several_runs_take_out_name_not_out(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "mmllm.cli", "analyze", "--run", "a", "b", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "--out-name" in done.stderr
