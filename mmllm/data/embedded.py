"""Helpers for converting data shipped in registry packages into the standard formats, once."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

MARKER = "paths.json"  # written last by a converter: its presence means the conversion finished


def link_folder(link: Path, target: Path) -> Path:
    """A symlink ``link`` -> ``target`` (images are used where the package installed them, not copied)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target, target_is_directory=True)
    return link


def convert_once(root: str | Path, convert: Callable[[Path], object]) -> Path:
    root = Path(root)
    if not (root / MARKER).is_file():
        convert(root)
    return root
