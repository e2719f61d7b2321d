"""benchmarks/gpu_check.py cannot rot: its ``--dry-run`` (tiny sizes on CPU) runs every part and writes
the one results folder a GPU session reads: the bf16-SDPA block agrees with the fp32-eager one (bf16
rounding), the cost table carries the FLOP model, the training run took the steps it was asked for."""

import json
import os
import subprocess
import sys

from conftest import ROOT
from test_registry import env


def test_gpu_check_dry_run_writes_every_part(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out)],
        env={**env(), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] and set(summary["parts"]) == {"block", "variant_cost", "train_toy"}
    assert not any("error" in part for part in summary["parts"].values())
    block = json.loads((out / "block.json").read_text())
    assert set(block["variants"]) == {"float32_eager", "bfloat16_sdpa"}
    assert 0 < block["output_rel_error"] < 0.05 and 0 < block["input_grad_rel_error"] < 0.05  # bf16, not identical
    table = (out / "variant_cost.md").read_text()
    assert "| frozen (random_frozen) |" in table and "| finetuned (random_trained) |" in table and "FLOP model" in table
    train = json.loads((out / "train_toy.json").read_text())
    assert train["steps"] == 3 and train["steps_per_s"] > 0
    records = [json.loads(line) for line in (out / "train_toy" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("split") == "train"] == [1, 2, 3]
    assert os.path.isdir(out / "train_toy")
