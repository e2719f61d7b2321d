import csv
import json
import logging
import subprocess
import sys

import pytest

from mmllm import leaderboard
from mmllm.errors import DataError


def test_leaderboard_table_csv_and_plot(tmp_path):
    for name, block, acc in (
        ("with", {"kind": "llm_block", "source": "smollm2-135m", "layers": "last"}, 80.5),
        ("without", {"kind": "none"}, 78.25),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(
            json.dumps(
                {"task": "mmllm_vqa", "steps": 10, "llm_block": block, "test_accuracy": acc, "test_acc_yes/no": 90.0}
            )
        )
    rows = leaderboard.collect(tmp_path)
    paths = leaderboard.write(rows, tmp_path / "board")
    table = paths["markdown"].read_text().splitlines()
    assert table[0] == "### mmllm_vqa"  # one table per task
    assert (
        table[2] == "| run | task | llm_block | steps | accuracy ↑ | acc_yes/no |"
    )  # main metric first, direction marked
    assert "| with | mmllm_vqa | smollm2-135m[last] | 10 | 80.50 | 90.00 |" in table
    assert "| without | mmllm_vqa | none | 10 | 78.25 | 90.00 |" in table
    with open(paths["csv"]) as handle:
        assert [r["accuracy"] for r in csv.DictReader(handle)] == ["80.5", "78.25"]
    assert paths["plot"].stat().st_size > 1000


def test_lower_is_better_task_is_marked_from_the_registry(tmp_path):
    from mmllm.engine.registry import TaskEntry, register_task, unregister_task

    register_task(
        TaskEntry(
            name="toy_forecast",
            task="x:Y",
            dataset="toy_forecast",
            model_arch="toy",
            metric="minADE",
            higher_is_better=False,
        )
    )
    try:
        for name, ade in (("a", 1.5), ("b", 0.75)):
            (tmp_path / name).mkdir()
            (tmp_path / name / "summary.json").write_text(
                json.dumps({"task": "toy_forecast", "steps": 3, "llm_block": None, "test_MR": 0.25, "test_minADE": ade})
            )
        paths = leaderboard.write(leaderboard.collect(tmp_path), tmp_path / "board")
        table = paths["markdown"].read_text().splitlines()
        assert table[2] == "| run | task | llm_block | steps | minADE ↓ | MR |"
        assert "| b | toy_forecast | none | 3 | 0.75 | 0.25 |" in table
    finally:
        unregister_task("toy_forecast")


def _summary(root, name, text):
    (root / name).mkdir()
    (root / name / "summary.json").write_text(text)
    return root / name / "summary.json"


GOOD = json.dumps({"task": "mmllm_vqa", "steps": 10, "llm_block": {"kind": "none"}, "test_accuracy": 78.25})


@pytest.mark.parametrize(
    "text,reason",
    [
        ('{"task": "mmllm_vqa", "steps": 1', "malformed JSON"),  # truncated write
        ("[1, 2]", "expected a JSON object, got list"),
        (json.dumps({"task": "mmllm_vqa", "steps": 0, "test_accuracy": 33.3}), "steps is 0"),
        (json.dumps({"task": "mmllm_vqa", "test_accuracy": 33.3}), "steps is None"),
        ('{"task": "mmllm_vqa", "steps": 5, "test_accuracy": NaN}', "test_accuracy is nan, not a finite number"),
        ('{"task": "mmllm_vqa", "steps": 5, "test_r_mean": -Infinity}', "test_r_mean is -inf"),
        (json.dumps({"task": "mmllm_vqa", "steps": 5, "test_accuracy": "80"}), "test_accuracy is '80'"),
        (json.dumps({"task": "mmllm_vqa", "steps": 5, "llm_block": "smollm2"}), "llm_block is 'smollm2'"),
    ],
)
def test_unusable_summary_is_skipped_with_a_warning_naming_it(tmp_path, caplog, text, reason):
    bad = _summary(tmp_path, "a_bad", text)
    _summary(tmp_path, "b_good", GOOD)
    with caplog.at_level(logging.WARNING, logger="mmllm.leaderboard"):
        rows = leaderboard.collect(tmp_path)
    assert [r["run"] for r in rows] == ["b_good"] and rows[0]["accuracy"] == 78.25
    assert len(caplog.records) == 1
    assert str(bad) in caplog.records[0].getMessage() and reason in caplog.records[0].getMessage()


def test_write_refuses_no_rows(tmp_path):
    with pytest.raises(DataError, match="no run"):
        leaderboard.write([], tmp_path)


def _cli(runs):
    return subprocess.run(
        [sys.executable, "-m", "mmllm.cli", "leaderboard", "--runs", str(runs)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_lists_the_rest_when_one_summary_is_corrupt(tmp_path):
    bad = _summary(tmp_path, "broken", "{not json")
    _summary(tmp_path, "good", GOOD)
    out = _cli(tmp_path)
    assert out.returncode == 0, out.stderr
    assert "| good | mmllm_vqa | none | 10 | 78.25 |" in out.stdout.splitlines()
    assert "broken" not in out.stdout
    assert f"skipping {bad}" in out.stderr and "Traceback" not in out.stderr


def test_cli_fails_when_every_summary_is_skipped(tmp_path):
    zero = _summary(tmp_path, "zero", json.dumps({"task": "mmllm_vqa", "steps": 0, "test_accuracy": 50.0}))
    nan = _summary(tmp_path, "nan", '{"task": "mmllm_vqa", "steps": 3, "test_accuracy": NaN}')
    out = _cli(tmp_path)
    assert out.returncode != 0 and out.stdout == ""
    assert f"skipping {zero}" in out.stderr and f"skipping {nan}" in out.stderr
    assert "all 2 summary.json file(s)" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "leaderboard.md").exists()


# ---------------------------------------------------------------------- seed statistics (sweep runs)
def _sweep_run(root, task, variant, seed, metrics, steps=100, max_eval_samples=None, losses=(2.0, 1.5, 1.0)):
    """A run folder as `mmllm sweep` leaves it: summary.json, sweep.json (its label), metrics.jsonl."""
    run = root / task / variant.replace(" ", "_") / f"seed{seed}"
    run.mkdir(parents=True)
    block = {"kind": "none"} if variant == "none" else {"kind": "llm_block", "source": "smollm2-135m"}
    (run / "summary.json").write_text(
        json.dumps(
            {
                "task": task,
                "steps": steps,
                "seed": seed,
                "llm_block": block,
                "max_eval_samples": max_eval_samples,
                **metrics,
            }
        )
    )
    (run / "sweep.json").write_text(json.dumps({"task": task, "variant": variant, "seed": seed}))
    records = [{"split": "train", "step": 10 * (i + 1), "loss": v} for i, v in enumerate(losses)]
    records.append({"split": "test", "step": 30, "loss": 99.0})  # not a training loss: not drawn
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_mean_std_and_paired_interval_against_hand_computed_values(tmp_path):
    # no block 60, 62, 67 (mean 63, sample sd sqrt(((-3)^2 + (-1)^2 + 4^2) / 2) = sqrt(13) = 3.6056);
    # frozen 61, 65, 69: differences 1, 3, 2 -> mean 2, sd 1, half-width t(0.975, 2) * 1 / sqrt(3) = 4.3027 / 1.7321
    for seed, base, block in ((1, 60.0, 61.0), (2, 62.0, 65.0), (3, 67.0, 69.0)):
        _sweep_run(tmp_path, "mmllm_image_cls", "none", seed, {"test_top1": base})
        _sweep_run(tmp_path, "mmllm_image_cls", "frozen [smollm2]", seed, {"test_top1": block})
    stats = {r["variant"]: r for r in leaderboard.aggregate(leaderboard.collect(tmp_path))}
    none, frozen = stats["none"], stats["frozen [smollm2]"]
    assert (none["n"], none["mean"], none["std"]) == (3, pytest.approx(63.0), pytest.approx(13**0.5))
    assert frozen["mean"] == pytest.approx(65.0) and frozen["std"] == pytest.approx(4.0)
    half = 4.302653 / 3**0.5
    assert frozen["diff"] == pytest.approx(2.0) and frozen["n_paired"] == 3
    assert (frozen["low"], frozen["high"]) == (pytest.approx(2 - half, abs=1e-4), pytest.approx(2 + half, abs=1e-4))
    assert frozen["verdict"] == "no clear difference"  # [-0.48, 4.48] holds 0
    paths = leaderboard.write_aggregate(list(stats.values()), tmp_path / "board")
    table = paths["mean_markdown"].read_text()
    assert "### mmllm_image_cls — test top1 ↑" in table
    assert "| none | 3 | 63.00 ± 3.61 |  |  | 100 |" in table
    assert "| frozen [smollm2] | 3 | 65.00 ± 4.00 | +2.00 [-0.48, 4.48] | no clear difference | 100 |" in table
    assert "paired by seed" in table and "t(0.975, n−1)" in table  # the method is stated under the table
    with open(paths["mean_csv"]) as handle:
        rows = {r["variant"]: r for r in csv.DictReader(handle)}
    assert float(rows["frozen [smollm2]"]["low"]) == pytest.approx(2 - half, abs=1e-4)
    assert paths["mean_plot_mmllm_image_cls"].name == "leaderboard_mean_mmllm_image_cls.png"
    assert paths["mean_plot_mmllm_image_cls"].stat().st_size > 1000


def test_lower_is_better_sign(tmp_path):
    # motion minFDE (lower is better): the block raises it by 0.2, 0.3, 0.25 -> Δ = +0.25, interval above 0,
    # which for this metric is WORSE (a higher-is-better reading would call it better)
    for seed, base, delta in ((1, 1.0, 0.2), (2, 1.2, 0.3), (3, 1.1, 0.25)):
        _sweep_run(tmp_path, "mmllm_motion", "none", seed, {"test_minFDE": base})
        _sweep_run(tmp_path, "mmllm_motion", "frozen", seed, {"test_minFDE": base + delta})
    frozen = next(r for r in leaderboard.aggregate(leaderboard.collect(tmp_path)) if r["variant"] == "frozen")
    half = 4.302653 * 0.05 / 3**0.5  # sd of (0.2, 0.3, 0.25) is 0.05
    assert frozen["higher_is_better"] is False and frozen["diff"] == pytest.approx(0.25)
    assert frozen["low"] == pytest.approx(0.25 - half, abs=1e-6) and frozen["low"] > 0
    assert frozen["verdict"] == "worse than no block"
    table = leaderboard.aggregate_markdown([r for r in leaderboard.aggregate(leaderboard.collect(tmp_path))])
    assert "test minFDE ↓" in table


def test_mixed_step_counts_and_eval_cuts_are_refused_unless_asked(tmp_path):
    steps, other = tmp_path / "steps", tmp_path / "cut"
    _sweep_run(steps, "mmllm_vqa", "none", 1, {"test_accuracy": 70.0}, steps=20)
    _sweep_run(steps, "mmllm_vqa", "none", 2, {"test_accuracy": 72.0}, steps=400)
    with pytest.raises(DataError, match=r"none: runs of different \(steps, max_eval_samples\).*--mix-steps"):
        leaderboard.aggregate(leaderboard.collect(steps))
    assert leaderboard.aggregate(leaderboard.collect(steps), mix_steps=True)[0]["mean"] == pytest.approx(71.0)
    # same steps, but one run evaluated only 64 samples: not the same measurement either
    _sweep_run(other, "mmllm_vqa", "none", 1, {"test_accuracy": 70.0})
    _sweep_run(other, "mmllm_vqa", "none", 2, {"test_accuracy": 72.0}, max_eval_samples=64)
    with pytest.raises(DataError, match="max_eval_samples"):
        leaderboard.aggregate(leaderboard.collect(other))
    # the CLI says so (exit 2) and points at --mix-steps; with it, the table is written
    out = _cli(steps)
    assert out.returncode == 2 and "--mix-steps" in out.stderr
    mixed = subprocess.run(
        [sys.executable, "-m", "mmllm.cli", "leaderboard", "--runs", str(steps), "--mix-steps"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert mixed.returncode == 0, mixed.stderr
    assert "| none | 2 | 71.00 ± 1.41 |  |  | 20, 400 |" in mixed.stdout


def test_a_variant_is_not_compared_with_a_baseline_of_another_budget(tmp_path):
    for seed in (1, 2):
        _sweep_run(tmp_path, "mmllm_vqa", "none", seed, {"test_accuracy": 70.0 + seed}, steps=100)
        _sweep_run(tmp_path, "mmllm_vqa", "frozen", seed, {"test_accuracy": 80.0 + seed}, steps=400)
    frozen = next(r for r in leaderboard.aggregate(leaderboard.collect(tmp_path)) if r["variant"] == "frozen")
    assert frozen["diff"] is None and frozen["verdict"].startswith("not compared: budget")
    mixed = next(
        r for r in leaderboard.aggregate(leaderboard.collect(tmp_path), mix_steps=True) if r["variant"] == "frozen"
    )
    assert mixed["diff"] == pytest.approx(10.0)


def test_loss_curves_are_drawn_from_each_runs_metrics_jsonl(tmp_path, monkeypatch):
    import matplotlib.axes

    for seed in (1, 2):
        _sweep_run(tmp_path, "mmllm_vqa", "none", seed, {"test_accuracy": 70.0}, losses=(3.0, 2.0, float("nan")))
        _sweep_run(tmp_path, "mmllm_vqa", "frozen", seed, {"test_accuracy": 71.0}, losses=(2.5, 1.5, 0.5))
    drawn = []
    original = matplotlib.axes.Axes.plot

    def spy(self, x, y, *args, **kwargs):
        drawn.append((list(x), list(y), kwargs.get("label")))
        return original(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    path = leaderboard.plot_loss_curves(leaderboard.collect(tmp_path), tmp_path, tmp_path / "loss_curves.png")
    assert path.stat().st_size > 1000
    # 4 runs; the test record's loss (99) and the NaN training loss are not drawn; one legend entry per variant
    assert sorted(tuple(y) for _, y, _ in drawn) == [(2.5, 1.5, 0.5)] * 2 + [(3.0, 2.0)] * 2
    assert sorted(label for *_, label in drawn if label) == ["frozen (2 runs)", "none (2 runs)"]


def test_the_main_jobs_output_says_where_curves_and_tensorboard_events_are(tmp_path, capsys):
    """What ``mmllm main`` (README command 1) prints after its table: the loss-curve plot and the
    TensorBoard folders, so a user can look at training, not only at the final number."""
    from mmllm.cli import _print_leaderboard

    for seed in (1, 2):
        _sweep_run(tmp_path, "mmllm_vqa", "none", seed, {"test_accuracy": 70.0}, losses=(3.0, 2.0))
        _sweep_run(tmp_path, "mmllm_vqa", "frozen", seed, {"test_accuracy": 71.0}, losses=(2.5, 1.5))
    (tmp_path / "mmllm_vqa_frozen" / "tensorboard").mkdir(parents=True)
    _print_leaderboard(leaderboard.make(tmp_path))
    out = capsys.readouterr().out
    assert f"loss curves: {tmp_path / 'loss_curves.png'}" in out
    assert f"TensorBoard events: {tmp_path}/<run>/tensorboard (view: tensorboard --logdir {tmp_path})" in out
