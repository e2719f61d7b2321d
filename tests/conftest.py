import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))  # test helpers (tiny_llms, toy_task, ...)
# tests live in folders by layer (core, engine, benchmarks/<name>, integration); a few share fixtures by
# importing another test module by its (unique) name, wherever it sits
for folder in sorted({p.parent for p in TESTS.rglob("test_*.py")} - {TESTS}):
    sys.path.insert(1, str(folder))
for project in sorted((ROOT / "projects").glob("*/")):  # project packages (also installed: pyproject.toml)
    sys.path.insert(0, str(project))


import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """Tests under tests/integration/ (whole runs through ``mmllm train`` and the LAVIS runner) carry the
    ``integration`` marker, so ``-m "not integration"`` is the quick unit run."""
    integration = TESTS / "integration"
    for item in items:
        if integration in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _fresh_mmllm_logging():
    """A command run in-process (``mmllm.cli.main([...])``) configures the ``mmllm`` logger; undo it so the
    next test's ``caplog`` sees the records again."""
    yield
    from mmllm.logs import reset_logging

    reset_logging()
