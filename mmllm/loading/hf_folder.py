"""Read selected layers from a Hugging Face model folder without loading the rest.

safetensors files are opened lazily (only the requested tensors are read, only the
shards that hold them are opened); ``.bin`` files are memory-mapped with
``weights_only=True``, so no pickled code ever runs.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, PretrainedConfig

from ..architectures import ArchitectureSpec, text_config
from ..errors import CheckpointError

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


def safe_load_torch(path: Path) -> dict[str, torch.Tensor]:
    """torch.load that refuses pickled code and maps the file instead of reading it all."""
    try:
        try:
            return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refusing to load: the file needs unpickling of code or objects that are not "
            "plain tensors (mmllm loads with weights_only=True). Convert it to safetensors."
        ) from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint (truncated or corrupt?): {exc}") from exc


class _KeyIndex:
    """Which file holds each tensor; opens a file only when one of its tensors is read."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.key_to_file: dict[str, Path] = {}
        self._bins: dict[Path, dict[str, torch.Tensor]] = {}
        if (folder / SAFE_INDEX).is_file():
            self._from_index(folder / SAFE_INDEX)
        elif (folder / "model.safetensors").is_file():
            self._scan_safetensors([folder / "model.safetensors"])
        elif (folder / BIN_INDEX).is_file():
            self._from_index(folder / BIN_INDEX)
        elif (folder / "pytorch_model.bin").is_file():
            self.key_to_file = {k: folder / "pytorch_model.bin" for k in self._bin(folder / "pytorch_model.bin")}
        elif list(folder.glob("*.safetensors")):
            self._scan_safetensors(sorted(folder.glob("*.safetensors")))
        else:
            raise CheckpointError(
                f"{folder}: no weights found (expected model.safetensors, {SAFE_INDEX}, "
                f"pytorch_model.bin or {BIN_INDEX})"
            )

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
                raise CheckpointError(f"{f}: not a readable safetensors file: {exc}") from exc

    def _bin(self, path: Path) -> dict[str, torch.Tensor]:
        if path not in self._bins:
            self._bins[path] = safe_load_torch(path)
        return self._bins[path]

    def read(self, keys: list[str]) -> dict[str, torch.Tensor]:
        by_file: dict[Path, list[str]] = {}
        for k in keys:
            by_file.setdefault(self.key_to_file[k], []).append(k)
        out: dict[str, torch.Tensor] = {}
        for path, names in by_file.items():
            if not path.is_file():
                raise CheckpointError(f"{path}: shard listed in the index is missing")
            if path.suffix == ".safetensors":
                try:
                    with safe_open(path, framework="pt") as handle:
                        out.update({k: handle.get_tensor(k) for k in names})
                except CheckpointError:
                    raise
                except Exception as exc:
                    raise CheckpointError(f"{path}: cannot read tensors {names[:3]}...: {exc}") from exc
            else:
                tensors = self._bin(path)
                out.update({k: tensors[k] for k in names})
        return out


def _pick_prefix(prefixes: tuple[str, ...], keys: dict[str, Path], probe: str, folder: Path) -> str:
    for prefix in prefixes:
        if any(k.startswith(prefix + probe) for k in keys):
            return prefix
    raise CheckpointError(f"{folder}: no tensor named like {[p + probe for p in prefixes]}")


def read_tensors(
    folder: Path,
    spec: ArchitectureSpec,
    layer_names: dict[int, list[str]],
    final_norm_names: list[str] | None,
) -> tuple[dict[int, dict[str, torch.Tensor]], dict[str, torch.Tensor] | None]:
    index = _KeyIndex(folder)
    prefix = _pick_prefix(spec.layer_prefixes, index.key_to_file, "0.", folder)
    wanted = {f"{prefix}{i}.{n}": (i, n) for i, names in layer_names.items() for n in names}
    present = [k for k in wanted if k in index.key_to_file]
    loaded = index.read(present)
    layers: dict[int, dict[str, torch.Tensor]] = {i: {} for i in layer_names}
    for key, tensor in loaded.items():
        i, name = wanted[key]
        layers[i][name] = tensor
    final = None
    if final_norm_names is not None:
        norm_prefix = next(
            (p for p in spec.final_norm_prefixes if any(k.startswith(p) for k in index.key_to_file)), None
        )
        if norm_prefix is None:
            raise CheckpointError(f"{folder}: no final norm tensor (looked for {spec.final_norm_prefixes})")
        keys = [norm_prefix + n for n in final_norm_names if norm_prefix + n in index.key_to_file]
        final = {k[len(norm_prefix):]: v for k, v in index.read(keys).items()}
    return layers, final
