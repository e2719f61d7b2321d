"""Reading annotation and result JSON files with errors that name the file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import DataError


def read_json(path: str | Path, what: str = "file") -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: malformed JSON: {exc}") from exc
