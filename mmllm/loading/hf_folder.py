"""Read selected tensors from a Hugging Face model folder without loading the rest.

safetensors files are opened lazily, one tensor at a time (only the requested tensors are
read, only the shards that hold them are opened, and a tensor's pages leave memory when
it is dropped); ``.bin`` files are memory-mapped with ``weights_only=True``, so no pickled
code ever runs. Folders written by :mod:`mmllm.assets` carry hashes: each tensor read is
checked against them.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, PretrainedConfig

from ..architectures import ArchitectureSpec, text_config
from ..errors import CheckpointError
from ..safeload import refusal
from .integrity import Integrity
from .weights import release_file_pages

SAFE_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def read_config(folder: Path) -> PretrainedConfig:
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{folder}: cannot read config.json: {exc}") from exc
    return text_config(config)


def safe_load_torch(path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """(tensors, memory-mapped?) of a torch file, refusing pickled code; mapped instead of read when it can."""
    try:
        try:
            return torch.load(path, map_location="cpu", mmap=True, weights_only=True), True
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True), False  # legacy (non-zip) format
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{refusal(path, exc)}. Convert it to safetensors.") from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint (truncated or corrupt?): {exc}") from exc


class KeyIndex:
    """Which file holds each tensor; opens a file only when one of its tensors is read."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.integrity = Integrity.read(folder)
        if self.integrity is not None:
            self.integrity.check_sizes()
        self.key_to_file: dict[str, Path] = {}
        self._bins: dict[Path, tuple[dict[str, torch.Tensor], bool]] = {}
        if (folder / SAFE_INDEX).is_file():
            self._from_index(folder / SAFE_INDEX)
        elif (folder / "model.safetensors").is_file():
            self._scan_safetensors([folder / "model.safetensors"])
        elif (folder / BIN_INDEX).is_file():
            self._from_index(folder / BIN_INDEX)
        elif (folder / "pytorch_model.bin").is_file():
            self.key_to_file = {k: folder / "pytorch_model.bin" for k in self._bin(folder / "pytorch_model.bin")[0]}
        elif list(folder.glob("*.safetensors")):
            self._scan_safetensors(sorted(folder.glob("*.safetensors")))
        else:
            raise CheckpointError(
                f"{folder}: no weights found (expected model.safetensors, {SAFE_INDEX}, "
                f"pytorch_model.bin or {BIN_INDEX})"
            )

    def _hint(self) -> str:
        return f"; {self.integrity.rebuild_hint}" if self.integrity is not None else ""

    def _from_index(self, index: Path) -> None:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index}: malformed shard index: {exc}") from exc
        self.key_to_file = {k: self.folder / v for k, v in weight_map.items()}

    def _scan_safetensors(self, files: list[Path]) -> None:
        for f in files:
            try:
                with safe_open(f, framework="pt") as handle:
                    self.key_to_file.update({k: f for k in handle.keys()})
            except Exception as exc:  # safetensors raises its own error types
                raise CheckpointError(f"{f}: not a readable safetensors file: {exc}{self._hint()}") from exc

    def _bin(self, path: Path) -> tuple[dict[str, torch.Tensor], bool]:
        if path not in self._bins:
            self._bins[path] = safe_load_torch(path)
        return self._bins[path]

    def first(self, candidates: tuple[str, ...]) -> str | None:
        """The first of ``candidates`` the checkpoint holds."""
        return next((k for k in candidates if k in self.key_to_file), None)

    def iter_tensors(self, keys: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """(key, tensor) one at a time; the caller drops each before asking for the next."""
        for key in keys:
            path = self.key_to_file[key]
            if not path.is_file():
                raise CheckpointError(f"{path}: shard listed in the index is missing{self._hint()}")
            if path.suffix == ".safetensors":
                try:
                    with safe_open(path, framework="pt") as handle:  # one mapping per tensor, unmapped when dropped
                        tensor, file_backed = handle.get_tensor(key), False
                except Exception as exc:
                    raise CheckpointError(f"{path}: cannot read tensor {key!r}: {exc}{self._hint()}") from exc
            else:
                tensors, file_backed = self._bin(path)
                tensor = tensors[key]
            if self.integrity is not None:
                self.integrity.check_tensor(key, tensor)
            yield key, tensor
            if file_backed:  # the whole .bin stays mapped: drop this tensor's pages now that it is consumed
                release_file_pages(tensor)
            del tensor


def _pick_prefix(prefixes: tuple[str, ...], keys: dict[str, Path], folder: Path) -> str:
    """The first prefix followed by a layer number in some key (any layer: a saved block's
    ``frozen/`` folder holds only the layers it uses)."""
    for prefix in prefixes:
        if any(k.startswith(prefix) and k[len(prefix) :].split(".", 1)[0].isdigit() for k in keys):
            return prefix
    raise CheckpointError(f"{folder}: no tensor named like {[p + '<layer>.' for p in prefixes]}")


def iter_layer_tensors(
    folder: Path,
    spec: ArchitectureSpec,
    layer_names: dict[int, list[str]],
    final_norm_names: list[str] | None,
) -> Iterator[tuple[int | str, str, torch.Tensor]]:
    """(layer index or "final_norm", name, tensor) for each requested tensor the folder holds."""
    index = KeyIndex(folder)
    prefix = _pick_prefix(spec.layer_prefixes, index.key_to_file, folder)
    wanted: dict[str, tuple[int | str, str]] = {
        f"{prefix}{i}.{n}": (i, n) for i, names in layer_names.items() for n in names
    }
    if final_norm_names is not None:
        norm_prefix = next(
            (p for p in spec.final_norm_prefixes if any(k.startswith(p) for k in index.key_to_file)), None
        )
        if norm_prefix is None:
            raise CheckpointError(f"{folder}: no final norm tensor (looked for {spec.final_norm_prefixes})")
        wanted.update({norm_prefix + n: ("final_norm", n) for n in final_norm_names})
    for key, tensor in index.iter_tensors([k for k in wanted if k in index.key_to_file]):
        yield (*wanted[key], tensor)


def iter_named_tensors(folder: Path, candidates: dict[str, tuple[str, ...]]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for each name whose candidate checkpoint keys the folder holds (first match)."""
    index = KeyIndex(folder)
    found = {key: name for name, keys in candidates.items() if (key := index.first(keys)) is not None}
    for key, tensor in index.iter_tensors(list(found)):
        yield found[key], tensor
