"""The README's results tables are the output of the sweeps, regenerated here from the committed summaries:
a table typed by hand, or a summary changed without regenerating the README, fails this test."""
import pytest
from conftest import ROOT

from mmllm import sweep

# the sweeps whose generated block the README carries (ablations.yaml joins once it has run)
SWEEPS = ["configs/sweeps/readme.yaml", "configs/sweeps/related.yaml"]


@pytest.mark.parametrize("path", SWEEPS)
def test_readme_block_equals_the_generated_report(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the sweep files name their runs_dir relative to the repository
    block = sweep.readme_text(ROOT / "README.md", path)
    assert block is not None, f"README.md has no generated block for {path}"
    text, rows, _ = sweep.render(path)
    assert rows, f"no committed summary under the runs_dir of {path}"
    assert block == text.strip("\n"), f"README.md is stale: run `mmllm sweep {path} --report --readme README.md`"
