"""Hashes recorded when an asset cache is written, checked when it is read.

A cache folder written by :func:`mmllm.assets.prepare` holds a marker file listing every
file's size and SHA-256 and every tensor's SHA-256 (of its raw bytes). A load checks the
file sizes (a truncated file is caught before it is parsed) and the hash of each tensor
it reads, and only those, so reading one layer stays cheap; ``mmllm assets list`` checks
whole files. A changed or truncated cache is refused with the command that rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import CheckpointError

MARKER = "mmllm_asset.json"
FORMAT = 2  # marker format with hashes; older markers (none) make the cache count as not built


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's raw bytes (its dtype's own encoding, row-major)."""
    flat = tensor.detach().contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().data if flat.numel() else b"").hexdigest()


def file_digest(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Integrity:
    """The hashes recorded in a cache folder's marker."""

    folder: Path
    asset: str
    files: dict[str, dict] = field(default_factory=dict)  # name -> {"size", "sha256"}
    tensors: dict[str, str] = field(default_factory=dict)  # checkpoint key -> sha256

    @property
    def rebuild_hint(self) -> str:
        return f"rebuild it with `mmllm assets prepare {self.asset} --force`"

    @classmethod
    def read(cls, folder: Path) -> Integrity | None:
        """The folder's recorded hashes; None when it has no marker or an old one without hashes."""
        marker = folder / MARKER
        if not marker.is_file():
            return None
        try:
            data = json.loads(marker.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{marker}: unreadable asset marker ({exc}); rebuild the cache") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return None
        return cls(folder, str(data.get("asset", folder.name)), dict(data["files"]), dict(data["tensors"]))

    def check_sizes(self) -> None:
        """Every recorded file is there with its recorded size (cheap: catches truncation)."""
        for name, info in self.files.items():
            path = self.folder / name
            size = path.stat().st_size if path.is_file() else None
            if size != info["size"]:
                state = "is missing" if size is None else f"has {size} bytes, {info['size']} were written"
                raise CheckpointError(f"cached asset file {path} {state} (truncated?); {self.rebuild_hint}")

    def check_files(self) -> None:
        """Whole-file hashes of every recorded file (reads everything)."""
        self.check_sizes()
        for name, info in self.files.items():
            if file_digest(self.folder / name) != info["sha256"]:
                raise CheckpointError(
                    f"cached asset file {self.folder / name} changed since it was written (SHA-256 differs); "
                    f"{self.rebuild_hint}"
                )

    def check_tensor(self, key: str, tensor: torch.Tensor) -> None:
        want = self.tensors.get(key)
        if want is None:
            raise CheckpointError(f"{self.folder}: tensor {key!r} has no recorded hash; {self.rebuild_hint}")
        if tensor_digest(tensor) != want:
            raise CheckpointError(
                f"{self.folder}: tensor {key!r} changed since the cache was written (SHA-256 differs); "
                f"{self.rebuild_hint}"
            )


def record(folder: Path, asset: str, extra: dict | None = None) -> dict:
    """Marker content for a freshly written safetensors folder: file sizes/hashes and tensor hashes."""
    from safetensors import safe_open

    files, tensors = {}, {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name != MARKER):
        files[path.name] = {"size": path.stat().st_size, "sha256": file_digest(path)}
        if path.suffix == ".safetensors":
            with safe_open(path, framework="pt") as handle:
                for key in handle.keys():
                    tensors[key] = tensor_digest(handle.get_tensor(key))
    return {**(extra or {}), "asset": asset, "format": FORMAT, "files": files, "tensors": tensors}
