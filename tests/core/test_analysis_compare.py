"""The information-filtering comparison (Pang et al., ICLR 2024, §5): one threshold per map chosen on held-out
images (hand-computed), runs with vs without the block paired by seed (scipy's Student-t interval), and a run
trained without the block (kind none) analysed from the tokens that reach the head (a hook on the ViT's norm)."""

import json
import math

import pytest
import torch
from scipy import stats

from mmllm.analysis.maps import best_iou, fixed_threshold_miou, held_out_threshold
from mmllm.analysis.run import _score, _score_held_out, compare, compare_markdown
from mmllm.errors import ConfigError


def up(mask):
    """A 2x2 mask drawn at 4x4 (each patch 2x2 pixels), so that the maps are upsampled (nearest)."""
    return torch.tensor(mask, dtype=torch.bool).repeat_interleave(2, 0).repeat_interleave(2, 1)


# held-out: H1 (top row foreground) and H2 (top-left); evaluated: E1 (top row), E2 (top-left)
H1 = (torch.tensor([[0.95, 0.55], [0.25, 0.0]]), up([[1, 1], [0, 0]]))
H2 = (torch.tensor([[0.35, 0.0], [0.0, 0.0]]), up([[1, 0], [0, 0]]))
E1 = (torch.tensor([[0.45, 0.15], [0.0, 0.0]]), up([[1, 1], [0, 0]]))
E2 = (torch.tensor([[0.95, 0.25], [0.25, 0.0]]), up([[1, 0], [0, 0]]))


def test_held_out_threshold_by_hand():
    # H1: t 0.1, 0.2 keep 3 patches (IoU 2/3); 0.3 .. 0.5 the top row (1); 0.6 .. 0.9 one patch (1/2)
    # H2: t 0.1 .. 0.3 keep the top-left patch (1); 0.4 and above keep nothing (0)
    # mean: 5/6, 5/6, 1, 1/2, 1/2, 1/4, 1/4, 1/4, 1/4 -> threshold 0.3, held-out mIoU 1
    threshold, score = held_out_threshold([H1[0], H2[0]], [H1[1], H2[1]])
    assert threshold == pytest.approx(0.3) and score == pytest.approx(1.0)
    # applied to E1, E2 at 0.3: E1 keeps only its 0.45 patch (2 of 4 foreground pixels: 1/2), E2 its 0.95 patch (1)
    assert fixed_threshold_miou([E1[0], E2[0]], [E1[1], E2[1]], threshold) == pytest.approx(0.75)
    # each image's own best threshold would give both 1 (E1 at 0.1 keeps its top row): the flattering score
    assert best_iou(*E1) == (1.0, pytest.approx(0.1)) and best_iou(*E2)[0] == 1.0
    # through the run's scoring: the first `holdout` images choose, the rest are scored
    grids = [H1[0], H2[0], E1[0], E2[0]]
    masks = torch.stack([H1[1], H2[1], E1[1], E2[1]])
    assert _score_held_out(grids, masks, 2) == (75.0, pytest.approx(0.3))
    assert _score(grids[2:], masks[2:]) == 100.0
    # ties: the lowest threshold (one held-out image whose map is a clean top row: 0.1 .. 0.5 all give 1)
    assert held_out_threshold([torch.tensor([[0.6, 0.6], [0.0, 0.0]])], [H1[1]]) == (pytest.approx(0.1), 1.0)


def report(run, seed, value, block="llama"):
    return {
        "run": run,
        "seed": seed,
        "block": block,
        "miou_magnitude_after": value,
        "miou_magnitude_after_per_image_best": value + 10,
        "images": 4,
    }


def test_paired_comparison_against_scipy():
    with_block = [report("w1", 1, 50.0), report("w2", 2, 60.0), report("w3", 3, 55.0)]
    without = [
        report("n1", 1, 40.0, "none"),
        report("n2", 2, 52.0, "none"),
        report("n3", 3, 50.0, "none"),
        report("n4", 4, 99.0, "none"),
    ]  # seed 4 counts in its arm's mean, not in the pairing
    result = compare(with_block, without)
    row = next(r for r in result["rows"] if r["map"] == "magnitude_after")
    diffs = [10.0, 8.0, 5.0]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert row["diff"] == pytest.approx(mean) and row["n_paired"] == 3
    assert row["low"] == pytest.approx(mean - half) and row["high"] == pytest.approx(mean + half)
    assert row["with"]["mean"] == pytest.approx(55.0) and row["with"]["std"] == pytest.approx(5.0)
    assert row["without"]["mean"] == pytest.approx((40 + 52 + 50 + 99) / 4) and row["without"]["n"] == 4
    assert result["paired_seeds"] == [1, 2, 3]
    assert {r["map"] for r in result["rows"]} == {"magnitude_after", "magnitude_after_per_image_best"}
    table = compare_markdown(result)
    assert "| magnitude_after | 55.00 ± 5.00 (3) |" in table
    assert f"[{mean - half:.2f}, {mean + half:.2f}]" in table
    with pytest.raises(ConfigError, match="two runs with seed 1"):
        compare(with_block + [report("w4", 1, 1.0)], without)
    with pytest.raises(ConfigError, match="no seed"):
        compare([report("w", None, 1.0)], without)


@pytest.fixture(scope="module")
def none_run(tmp_path_factory):
    from test_analysis_cls_run import train
    from test_image_cls import image_tree

    tmp = tmp_path_factory.mktemp("analysis_none")
    image_tree(tmp / "data")  # 12 test images: 4 held out + up to 8 evaluated
    return tmp, train(tmp, "none", {"kind": "none"})


def test_run_without_block_is_analysed_from_the_tokens_before_the_head(none_run):
    from mmllm.analysis.maps import magnitude_map
    from mmllm.analysis.run import analyse
    from mmllm.engine.evaluation import load_trained
    from vision.classification.analysis import analysis_inputs

    tmp, run = none_run
    result = analyse(run, num=6, out=tmp / "an", figures=1, holdout=4)
    assert result["block"] == "none" and result["images"] == 6 and result["held_out_images"] == 4
    assert result["seed"] == 42  # run.seed's default, from summary.json
    # independently: the tokens entering the ViT's final norm (what the head reads), caught by a pre-hook
    task, model, datasets = load_trained(run / "model_final.pt", run)
    assert model.insert_after == len(model.vit.blocks) - 1  # the block's place: right before the norm and head
    inputs = analysis_inputs(task, model, datasets["test"], 10)
    seen = []
    handle = model.vit.norm.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().float()))
    model.eval()
    with torch.no_grad():
        inputs.forward(model)
    handle.remove()
    tokens = torch.cat(seen)[:, inputs.prefix :]
    h, w = inputs.grid
    grids = [magnitude_map(t).reshape(h, w) for t in tokens]
    threshold, _ = held_out_threshold(grids[:4], list(inputs.masks[:4]))
    expected = round(100 * fixed_threshold_miou(grids[4:], list(inputs.masks[4:]), threshold), 2)
    assert result["miou_magnitude_after"] == pytest.approx(expected)
    assert result["miou_magnitude_before"] == pytest.approx(expected)  # no block: before = after
    assert result["threshold_magnitude_after"] == pytest.approx(threshold)
    assert "miou_magnitude_after_per_image_best" in result and (tmp / "an" / "maps_000.png").is_file()


def test_cli_compares_arms_and_writes_markdown_and_json(none_run):
    from test_analysis_cls_run import mmllm

    tmp, run = none_run  # the same run in both arms: every paired difference is exactly 0
    done = mmllm(
        "analyze", "--run", run, "--without", run, "--num", 4, "--figures", 0, "--compare-out", tmp / "cmp", cwd=tmp
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp / "cmp" / "compare.json").read_text())
    assert json.loads(done.stdout) == result
    for row in result["rows"]:
        assert row["diff"] == 0.0 and row["n_paired"] == 1 and row["low"] is None
    assert "| magnitude_after |" in (tmp / "cmp" / "compare.md").read_text()
