"""The sweep runner: expansion, folder names, resumability, labels the leaderboard groups on."""
import json
import subprocess

import pytest
import yaml

from mmllm import leaderboard, sweep
from mmllm.errors import ConfigError

SPEC = {
    "name": "t", "seeds": [1, 2], "options": ["run.max_steps=2"],
    "tasks": [{"task": "mmllm_vqa", "options": ["run.batch_size_train=4"]}],
    "llms": {"smol": "smollm2-135m", "qwen": "qwen2.5-1.5b"},
    "variants": {"none": ["model.llm_block.kind=none"], "frozen": ["model.llm_block.kind=llm_block"]},
}


def test_expansion_counts_names_and_options(tmp_path):
    runs = sweep.expand(SPEC, tmp_path)
    # per seed: none once (no LLM) + frozen per LLM (2) = 3; two seeds -> 6
    assert len(runs) == 6
    names = sorted(str(r.out_dir.relative_to(tmp_path)) for r in runs)
    assert names == sorted(f"mmllm_vqa/{v}/seed{s}" for s in (1, 2) for v in ("none", "frozen_smol", "frozen_qwen"))
    frozen = next(r for r in runs if r.llm == "qwen" and r.seed == 2)
    assert frozen.label == "frozen [qwen]"
    assert "model.llm_block.source=qwen2.5-1.5b" in frozen.options and "run.seed=2" in frozen.options
    assert frozen.options.index("run.batch_size_train=4") < frozen.options.index("model.llm_block.kind=llm_block")
    assert next(r for r in runs if r.variant == "none").label == "none"


def test_finished_runs_are_skipped_and_labels_written(tmp_path, monkeypatch):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "runs_dir": str(tmp_path / "runs")}))
    runs = sweep.expand(sweep.load_sweep(path))
    done = next(r for r in runs if r.variant == "none" and r.seed == 1)
    done.out_dir.mkdir(parents=True)
    (done.out_dir / "summary.json").write_text(json.dumps({"task": "mmllm_vqa", "steps": 2, "seed": 1,
                                                          "llm_block": {"kind": "none"}, "test_accuracy": 50.0}))
    called = []

    def fake_run(cmd, *a, **k):  # a "training" that writes the summary the engine would
        called.append(cmd)
        out = [o.split("=", 1)[1] for o in cmd if o.startswith("run.output_dir=")][0]
        seed = int([o.split("=", 1)[1] for o in cmd if o.startswith("run.seed=")][0])
        block = {"kind": "llm_block", "source": "smollm2-135m"}
        (tmp_path / out / "summary.json").write_text(json.dumps(
            {"task": "mmllm_vqa", "steps": 2, "seed": seed, "llm_block": block, "test_accuracy": 50.0 + seed}))
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sweep.subprocess, "run", fake_run)
    sweep.run_sweep(path)
    assert len(called) == len(runs) - 1  # the finished one was skipped
    labels = {json.loads((r.out_dir / "sweep.json").read_text())["variant"] for r in runs if r != done}
    assert labels == {"none", "frozen [smol]", "frozen [qwen]"}
    stats = {r["variant"]: r for r in leaderboard.aggregate(leaderboard.collect(tmp_path / "runs"))}
    assert stats["frozen [qwen]"]["n"] == 2 and stats["frozen [qwen]"]["mean"] == pytest.approx(51.5)
    assert (tmp_path / "runs" / "leaderboard_mean.md").is_file()
    called.clear()
    sweep.run_sweep(path)  # everything finished: nothing trains again
    assert called == []


def test_bad_sweep_files(tmp_path):
    bad = tmp_path / "b.yaml"
    bad.write_text(yaml.safe_dump({**SPEC, "sedes": [1]}))
    with pytest.raises(ConfigError, match="did you mean 'seeds'"):
        sweep.load_sweep(bad)
    with pytest.raises(ConfigError, match="repeat"):
        sweep.expand({**SPEC, "seeds": [1, 1]}, tmp_path)
    with pytest.raises(ConfigError, match="not a registered task"):
        sweep.expand({**SPEC, "tasks": ["mmllm_vqq"]}, tmp_path)
