"""Seed statistics of the leaderboard against hand-computed numbers."""

import json
import math

import pytest

from mmllm import leaderboard, stats
from mmllm.cli import main as cli
from mmllm.errors import DataError


def write_run(root, name, task, seed, metrics, block=None, steps=100, variant=None):
    run = root / name
    run.mkdir(parents=True)
    summary = {"task": task, "steps": steps, "seed": seed, "llm_block": block or {"kind": "none"}, **metrics}
    if variant:
        summary["variant"] = variant
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"split": "train", "step": s, "loss": 2.0 / s}) for s in (1, 2, 3))
    )


BLOCK = {"kind": "llm_block", "source": "smollm2-135m", "layers": "last"}


def test_t_quantiles_by_table():
    assert stats.t_quantile(2) == pytest.approx(4.303, abs=1e-3)
    assert stats.t_quantile(1) == pytest.approx(12.706, abs=1e-3)


def test_paired_interval_by_hand(tmp_path):
    # no block 70, 71, 72 and block 71, 73, 75 over seeds 1, 2, 3: differences 1, 2, 3 ->
    # mean 2, sd 1, half-width t(0.975, 2) / sqrt(3) = 4.303 / 1.732 = 2.484
    for seed, (a, b) in zip((1, 2, 3), ((70, 71), (71, 73), (72, 75))):
        write_run(tmp_path, f"none_s{seed}", "mmllm_vqa", seed, {"test_accuracy": a})
        write_run(tmp_path, f"block_s{seed}", "mmllm_vqa", seed, {"test_accuracy": b}, BLOCK)
    rows = leaderboard.aggregate(leaderboard.collect(tmp_path))
    by = {r["variant"]: r for r in rows}
    none, block = by["none"], by["smollm2-135m[last]"]
    assert none["mean"] == pytest.approx(71.0) and none["std"] == pytest.approx(1.0) and none["n"] == 3
    assert block["mean"] == pytest.approx(73.0) and block["std"] == pytest.approx(2.0)
    assert block["diff"] == pytest.approx(2.0)
    assert block["low"] == pytest.approx(2.0 - 4.3027 / math.sqrt(3), abs=1e-3)
    assert block["high"] == pytest.approx(2.0 + 4.3027 / math.sqrt(3), abs=1e-3)
    assert block["verdict"] == "no clear difference"  # the interval [-0.48, 4.48] holds 0


def test_difference_to_a_named_reference_arm_by_hand(tmp_path):
    # a task without a no-block arm (LLaVA vs LLaViT): llava 50, 60, 40 and llavit 75, 74, 78 over seeds 1-3 ->
    # differences 25, 14, 38: mean 25.667, sd 12.014, half-width 4.3027 * 12.014 / sqrt(3) = 29.844
    for seed, (a, b) in zip((1, 2, 3), ((50, 75), (60, 74), (40, 78))):
        write_run(tmp_path, f"llava_s{seed}", "mmllm_vqa_generative", seed, {"test_accuracy": a}, variant="llava")
        write_run(tmp_path, f"llavit_s{seed}", "mmllm_vqa_generative", seed, {"test_accuracy": b}, variant="llavit")
    plain = {r["variant"]: r for r in leaderboard.aggregate(leaderboard.collect(tmp_path))}
    assert plain["llavit"]["diff"] is None and plain["llavit"]["verdict"] == "no no-block runs to compare with"
    rows = leaderboard.aggregate(leaderboard.collect(tmp_path), references={"mmllm_vqa_generative": "llava"})
    assert [r["variant"] for r in rows] == ["llava", "llavit"]  # the reference first
    llava, llavit = rows
    assert llava["diff"] is None and llava["reference"] == "llava"
    sd = math.sqrt(((25 - 77 / 3) ** 2 + (14 - 77 / 3) ** 2 + (38 - 77 / 3) ** 2) / 2)
    assert llavit["diff"] == pytest.approx(77 / 3)
    assert llavit["high"] - llavit["diff"] == pytest.approx(4.3027 * sd / math.sqrt(3), abs=1e-3)
    assert llavit["verdict"] == "no clear difference"  # [-4.18, 55.51] holds 0
    table = leaderboard.aggregate_markdown(rows)
    assert "Δ vs `llava` [95% CI]" in table and "| llavit | 3 | 75.67 ± 2.08 | +25.67 [-4.18, 55.51] |" in table
    # one seed differing the other way round flips the verdict's words, not just its sign
    for seed, b in zip((1, 2, 3), (45, 55, 35)):
        write_run(tmp_path, f"worse_s{seed}", "mmllm_vqa_generative", seed, {"test_accuracy": b}, variant="worse")
    rows = {
        r["variant"]: r
        for r in leaderboard.aggregate(leaderboard.collect(tmp_path), references={"mmllm_vqa_generative": "llava"})
    }
    assert rows["worse"]["diff"] == pytest.approx(-5.0) and rows["worse"]["verdict"] == "worse than `llava`"


def test_lower_is_better_direction(tmp_path):
    # motion minFDE (lower is better): the block lowers it by 0.1 on every seed -> better, interval [-0.1, -0.1]
    for seed, base in zip((1, 2, 3), (0.80, 0.90, 0.85)):
        write_run(tmp_path, f"none_s{seed}", "mmllm_motion", seed, {"test_minFDE": base})
        write_run(tmp_path, f"block_s{seed}", "mmllm_motion", seed, {"test_minFDE": base - 0.1}, BLOCK)
    rows = {r["variant"]: r for r in leaderboard.aggregate(leaderboard.collect(tmp_path))}
    block = rows["smollm2-135m[last]"]
    assert block["higher_is_better"] is False
    assert block["diff"] == pytest.approx(-0.1) and block["high"] == pytest.approx(-0.1)
    assert block["verdict"] == "better than no block"


def test_mixed_steps_and_duplicate_seeds_are_refused(tmp_path):
    write_run(tmp_path, "a", "mmllm_vqa", 1, {"test_accuracy": 70}, steps=20)
    write_run(tmp_path, "b", "mmllm_vqa", 2, {"test_accuracy": 72}, steps=400)
    with pytest.raises(DataError, match="mix-steps"):
        leaderboard.aggregate(leaderboard.collect(tmp_path))
    assert leaderboard.aggregate(leaderboard.collect(tmp_path), mix_steps=True)[0]["n"] == 2
    write_run(tmp_path, "c", "mmllm_vqa", 2, {"test_accuracy": 73}, steps=400)
    with pytest.raises(DataError, match="seed 2"):
        leaderboard.aggregate(leaderboard.collect(tmp_path), mix_steps=True)


def test_cli_writes_tables_plots_and_loss_curves(tmp_path, capsys):
    for seed in (1, 2):
        write_run(tmp_path, f"none_s{seed}", "mmllm_vqa", seed, {"test_accuracy": 70 + seed})
        write_run(tmp_path, f"sweep_s{seed}", "mmllm_vqa", seed, {"test_accuracy": 72 + seed}, BLOCK, variant="frozen")
    assert cli(["leaderboard", "--runs", str(tmp_path)]) == 0
    text = (tmp_path / "leaderboard_mean.md").read_text()
    assert (
        "| frozen | 2 | 73.50 ± 0.71 | +2.00 [2.00, 2.00] | better than no block |" in text
    )  # both per-seed differences are 2: a zero-width interval
    assert "Student-t" in text
    for name in ("leaderboard_mean.csv", "leaderboard_mean_mmllm_vqa.png", "loss_curves.png"):
        assert (tmp_path / name).stat().st_size > 0
