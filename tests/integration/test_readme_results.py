"""The results tables of docs/results.md are the output of the sweeps, regenerated here from the committed summaries:
a table typed by hand, or a summary changed without regenerating docs/results.md, fails this test."""
import pytest
from conftest import ROOT

from mmllm import sweep

# the sweeps whose generated block docs/results.md carries (ablations.yaml joins once it has run)
SUMMARY = "configs/sweeps/readme.yaml"  # the sweep whose one-table summary README.md carries
SWEEPS = ["configs/sweeps/readme.yaml", "configs/sweeps/related.yaml"]


@pytest.mark.parametrize("path", SWEEPS)
def test_readme_block_equals_the_generated_report(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the sweep files name their runs_dir relative to the repository
    block = sweep.readme_text(ROOT / "docs" / "results.md", path)
    assert block is not None, f"docs/results.md has no generated block for {path}"
    text, rows, _ = sweep.render(path)
    assert rows, f"no committed summary under the runs_dir of {path}"
    assert block == text.strip("\n"), f"docs/results.md is stale: run `mmllm sweep {path} --report --readme docs/results.md`"


def test_readme_summary_equals_the_generated_table(monkeypatch):
    """The README's one-table summary is generated from the same committed summaries as docs/results.md."""
    monkeypatch.chdir(ROOT)
    block = sweep.readme_text(ROOT / "README.md", SUMMARY, kind="summary")
    assert block is not None, f"README.md has no generated summary block for {SUMMARY}"
    assert block == sweep.summary_text(SUMMARY).strip("\n"), (
        f"README.md's summary is stale: run `mmllm sweep {SUMMARY} --report --summary README.md`")
    assert "no clear difference" in block and "| mmllm_vqa |" in block  # the verdicts and every task are there
