import csv
import json
import logging
import subprocess
import sys

import pytest

from mmllm import leaderboard
from mmllm.errors import DataError


def test_leaderboard_table_csv_and_plot(tmp_path):
    for name, block, acc in (("with", {"kind": "llm_block", "source": "smollm2-135m", "layers": "last"}, 80.5), ("without", {"kind": "none"}, 78.25)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(
            {"task": "mmllm_vqa", "steps": 10, "llm_block": block, "test_accuracy": acc, "test_acc_yes/no": 90.0}))
    rows = leaderboard.collect(tmp_path)
    paths = leaderboard.write(rows, tmp_path / "board")
    table = paths["markdown"].read_text().splitlines()
    assert table[0] == "### mmllm_vqa"  # one table per task
    assert table[2] == "| run | task | llm_block | steps | accuracy ↑ | acc_yes/no |"  # main metric first, direction marked
    assert "| with | mmllm_vqa | smollm2-135m[last] | 10 | 80.50 | 90.00 |" in table
    assert "| without | mmllm_vqa | none | 10 | 78.25 | 90.00 |" in table
    with open(paths["csv"]) as handle:
        assert [r["accuracy"] for r in csv.DictReader(handle)] == ["80.5", "78.25"]
    assert paths["plot"].stat().st_size > 1000


def test_lower_is_better_task_is_marked_from_the_registry(tmp_path):
    from mmllm.engine.registry import TaskEntry, register_task, unregister_task

    register_task(TaskEntry(name="toy_forecast", task="x:Y", dataset="toy_forecast", model_arch="toy", metric="minADE",
                            higher_is_better=False))
    try:
        for name, ade in (("a", 1.5), ("b", 0.75)):
            (tmp_path / name).mkdir()
            (tmp_path / name / "summary.json").write_text(json.dumps(
                {"task": "toy_forecast", "steps": 3, "llm_block": None, "test_MR": 0.25, "test_minADE": ade}))
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
    return subprocess.run([sys.executable, "-m", "mmllm.cli", "leaderboard", "--runs", str(runs)],
                          capture_output=True, text=True, timeout=120)


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
