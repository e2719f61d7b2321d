import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # test helpers
for project in sorted((ROOT / "projects").glob("*/")):  # project packages (also installed: pyproject.toml)
    sys.path.insert(0, str(project))


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_mmllm_logging():
    """A command run in-process (``mmllm.cli.main([...])``) configures the ``mmllm`` logger; undo it so the
    next test's ``caplog`` sees the records again."""
    yield
    from mmllm.logs import reset_logging

    reset_logging()
