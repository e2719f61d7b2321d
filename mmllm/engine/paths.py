"""Paths in configs: relative to the working directory, else to the repository checkout.

Configs name files such as ``configs/deepspeed/zero0.json``; a run started from another
folder should still find the file that ships with mmllm instead of failing on a relative path.
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def repo_path(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    shipped = REPO_ROOT / path
    return shipped if shipped.exists() else path
