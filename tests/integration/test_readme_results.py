"""The results tables of docs/results.md are the output of the sweeps, regenerated here from the committed summaries:
a table typed by hand, or a summary changed without regenerating docs/results.md, fails this test."""

import re

import pytest
from conftest import ROOT

from mmllm import sweep

# the sweeps whose generated block docs/results.md carries (ablations.yaml joins once it has run)
SUMMARY = "configs/sweeps/readme.yaml"  # the sweep whose one-table summary README.md carries
SWEEPS = ["configs/sweeps/readme.yaml", "configs/sweeps/related.yaml", "configs/sweeps/sqa3d.yaml"]


@pytest.mark.parametrize("path", SWEEPS)
def test_readme_block_equals_the_generated_report(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the sweep files name their runs_dir relative to the repository
    block = sweep.readme_text(ROOT / "docs" / "results.md", path)
    assert block is not None, f"docs/results.md has no generated block for {path}"
    text, rows, _ = sweep.render(path)
    assert rows, f"no committed summary under the runs_dir of {path}"
    assert block == text.strip("\n"), (
        f"docs/results.md is stale: run `mmllm sweep {path} --report --readme docs/results.md`"
    )


def test_readme_summary_equals_the_generated_table(monkeypatch):
    """The README's one-table summary is generated from the same committed summaries as docs/results.md."""
    monkeypatch.chdir(ROOT)
    block = sweep.readme_text(ROOT / "README.md", SUMMARY, kind="summary")
    assert block is not None, f"README.md has no generated summary block for {SUMMARY}"
    assert block == sweep.summary_text(SUMMARY).strip("\n"), (
        f"README.md's summary is stale: run `mmllm sweep {SUMMARY} --report --summary README.md`"
    )
    assert "no clear difference" in block and "| mmllm_vqa |" in block  # the verdicts and every task are there


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_readme_summary_agrees_with_the_full_tables():
    """Each row of README.md's summary (one per task) against the rows of docs/results.md's per-task tables,
    read from the page's text: the no-block cell, the frozen-block cell, Δ [CI] and the verdict."""
    summary = sweep.readme_text(ROOT / "README.md", SUMMARY, kind="summary")
    full = sweep.readme_text(ROOT / "docs" / "results.md", SUMMARY)
    assert summary is not None and full is not None
    arm = "frozen [smollm2]"  # readme.yaml's first LLM: the default arm, named before the numbers
    assert f"| `{arm}` |" in summary
    tables = {}
    for block in re.split(r"^#### ", full, flags=re.M)[1:]:
        task = block.split(" ", 1)[0]
        tables[task] = {_cells(line)[0]: _cells(line) for line in block.splitlines() if line.startswith("| ")}
    rows = [_cells(line) for line in summary.splitlines() if line.startswith("| mmllm_")]
    assert sorted(r[0] for r in rows) == sorted(tables) == ["mmllm_image_cls", "mmllm_retrieval", "mmllm_vqa"]
    for task, _metric, none, frozen, seeds, delta, verdict in rows:
        variant, n, spread, full_delta, full_verdict = tables[task][arm][:5]
        assert (none, frozen, seeds, delta, verdict) == (tables[task]["none"][2], spread, n, full_delta, full_verdict)
