import csv
import json

from mmllm import leaderboard


def test_leaderboard_table_csv_and_plot(tmp_path):
    for name, block, acc in (("with", {"kind": "llm_block", "source": "smollm2-135m", "layers": "last"}, 80.5), ("without", {"kind": "none"}, 78.25)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(
            {"task": "mmllm_vqa", "steps": 10, "llm_block": block, "test_accuracy": acc, "test_acc_yes/no": 90.0}))
    rows = leaderboard.collect(tmp_path)
    paths = leaderboard.write(rows, tmp_path / "board")
    table = paths["markdown"].read_text().splitlines()
    assert table[0] == "| run | task | llm_block | steps | accuracy | acc_yes/no |"  # headline metric first
    assert "| with | mmllm_vqa | smollm2-135m[last] | 10 | 80.50 | 90.00 |" in table
    assert "| without | mmllm_vqa | none | 10 | 78.25 | 90.00 |" in table
    with open(paths["csv"]) as handle:
        assert [r["accuracy"] for r in csv.DictReader(handle)] == ["80.5", "78.25"]
    assert paths["plot"].stat().st_size > 1000
