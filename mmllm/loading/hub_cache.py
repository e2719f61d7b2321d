"""Hub-style ids (``HuggingFaceTB/SmolLM2-135M``) found in the local Hugging Face cache, never downloaded.

transformers users name a model by its hub id; here such an id is looked up in the cache a
previous ``huggingface-cli download`` (or ``from_pretrained`` on a machine with network) filled,
through ``huggingface_hub.snapshot_download(..., local_files_only=True)``: offline, always.
The cache folder is read from the environment at call time (``HF_HUB_CACHE``, else
``HF_HOME``/hub, else ``~/.cache/huggingface/hub``), so a changed ``HF_HOME`` is honoured.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(text: str) -> bool:
    """``org/name`` with no further slashes and not an existing path."""
    return bool(HUB_ID.match(text)) and not Path(text).expanduser().exists()


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def find_in_hub_cache(repo_id: str, revision: str | None = None) -> Path | None:
    """The cached snapshot folder of ``repo_id`` (None when it is not cached). No network, ever."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=str(hub_cache_dir()), local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        return None
    return Path(folder)
