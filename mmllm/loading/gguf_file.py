"""Read selected tensors from a GGUF file one by one (memory-mapped), dequantized to fp32.

GGUF stores some tensors in llama.cpp's layout, not transformers': its converter
interleaves the rows of LLaMA's q/k projections per head (for its rotary kernel)
and stores Gemma's RMSNorm weights as (1 + w). We undo both so the tensors match
the Hugging Face checkpoint the GGUF was converted from.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, PretrainedConfig

from ..architectures import ArchitectureSpec
from ..errors import CheckpointError, UnsupportedArchitectureError

GGUF_MAGIC = b"GGUF"


def is_gguf_file(path: Path) -> bool:
    return path.is_file() and path.suffix == ".gguf"


def open_reader(path: Path):
    """A GGUFReader, after checking the file is complete (a truncated file fails here, clearly)."""
    import gguf

    with open(path, "rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise CheckpointError(f"{path}: not a GGUF file (bad magic)")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # gguf raises ValueError/IndexError/struct errors on short files
        raise CheckpointError(f"{path}: GGUF file is truncated or corrupt: {exc}") from exc
    size = path.stat().st_size
    for tensor in reader.tensors:
        if tensor.data_offset + int(tensor.n_bytes) > size:
            raise CheckpointError(
                f"{path}: GGUF file is truncated: tensor {tensor.name} ends at byte "
                f"{tensor.data_offset + int(tensor.n_bytes)}, the file has {size} bytes"
            )
    return reader


def read_config(path: Path) -> PretrainedConfig:
    open_reader(path)  # clear error for a truncated file before transformers parses it
    try:
        return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    except ValueError as exc:
        raise UnsupportedArchitectureError(f"{path}: {exc}") from exc


def unpermute_rotary_rows(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Inverse of llama.cpp's q/k row interleave: per head, rows (0,1),(2,3).. go back to halves."""
    rows = weight.shape[0]
    head_dim = rows // num_heads
    return weight.reshape(num_heads, head_dim // 2, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _fix_layout(spec: ArchitectureSpec, config: PretrainedConfig, hf_name: str, tensor: torch.Tensor) -> torch.Tensor:
    if spec.name == "llama":
        if hf_name.endswith("self_attn.q_proj.weight"):
            return unpermute_rotary_rows(tensor, config.num_attention_heads)
        if hf_name.endswith("self_attn.k_proj.weight"):
            return unpermute_rotary_rows(tensor, config.num_key_value_heads)
    if spec.name == "gemma3" and hf_name.endswith("norm.weight"):
        return tensor - 1.0
    return tensor


def _reader_and_names(path: Path, spec: ArchitectureSpec, config: PretrainedConfig):
    import gguf

    if spec.gguf_arch is None:
        raise UnsupportedArchitectureError(f"{path}: GGUF loading is not supported for {spec.name}")
    reader = open_reader(path)
    arch = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[spec.gguf_arch]
    return reader, gguf.get_tensor_name_map(arch, config.num_hidden_layers), {t.name: t for t in reader.tensors}


def _dequantized(tensor) -> torch.Tensor:
    """One GGUF tensor as a writable fp32 torch tensor in transformers' (row-major) shape."""
    import gguf

    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    values = np.asarray(values, dtype=np.float32).reshape(shape)
    if not values.flags.writeable:  # a view of the read-only memory-mapped file (F32 tensors)
        values = values.copy()
    return torch.from_numpy(values)


def iter_layer_tensors(
    path: Path,
    spec: ArchitectureSpec,
    config: PretrainedConfig,
    layer_names: dict[int, list[str]],
    final_norm_names: list[str] | None,
) -> Iterator[tuple[int | str, str, torch.Tensor]]:
    """(layer index or "final_norm", name, fp32 tensor) per requested tensor, dequantized one at a time."""
    _, name_map, by_name = _reader_and_names(path, spec, config)
    wanted: list[tuple[int | str, str, str]] = [
        (i, n, f"model.layers.{i}.{n}") for i, names in layer_names.items() for n in names
    ]
    wanted += [("final_norm", n, f"model.norm.{n}") for n in final_norm_names or ()]
    for group, name, hf_key in wanted:
        gguf_name = name_map.get_name(hf_key, try_suffixes=(".weight", ".bias"))  # keeps the suffix
        tensor = by_name.get(gguf_name) if gguf_name else None
        if tensor is not None:
            yield group, name, _fix_layout(spec, config, hf_key, _dequantized(tensor))


def iter_named_tensors(
    path: Path, spec: ArchitectureSpec, config: PretrainedConfig, wanted: dict[str, tuple[str, str]]
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, fp32 tensor) for each name -> (GGUF tensor name, transformers key) the file holds."""
    _, _, by_name = _reader_and_names(path, spec, config)
    for name, (gguf_name, hf_key) in wanted.items():
        if gguf_name in by_name:
            yield name, _fix_layout(spec, config, hf_key, _dequantized(by_name[gguf_name]))
