"""Read selected layers from Meta's original LLaMA release (``params.json`` + ``consolidated.NN.pth``).

This is the format the official Frozen-LLM-Transformer code reads. Larger models are
split over several model-parallel shards: column-parallel weights (wq, wk, wv, w1, w3)
are concatenated along rows, row-parallel ones (wo, w2) along columns, norms are
replicated. Meta's q/k rows are interleaved per head for its complex-number rotary;
we permute them into transformers' half-split layout, as transformers' own
conversion script does, so both formats give the same tensors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar, cast

import torch
from transformers import LlamaConfig, PretrainedConfig

from ..errors import CheckpointError
from .hf_folder import safe_load_torch
from .weights import release_file_pages

_Tag = TypeVar("_Tag")

# transformers name -> (Meta name, concat dim across shards; None = replicated)
_META_NAMES = {
    "self_attn.q_proj.weight": ("attention.wq.weight", 0),
    "self_attn.k_proj.weight": ("attention.wk.weight", 0),
    "self_attn.v_proj.weight": ("attention.wv.weight", 0),
    "self_attn.o_proj.weight": ("attention.wo.weight", 1),
    "mlp.gate_proj.weight": ("feed_forward.w1.weight", 0),
    "mlp.down_proj.weight": ("feed_forward.w2.weight", 1),
    "mlp.up_proj.weight": ("feed_forward.w3.weight", 0),
    "input_layernorm.weight": ("attention_norm.weight", None),
    "post_attention_layernorm.weight": ("ffn_norm.weight", None),
}


def is_llama_v1_folder(path: Path) -> bool:
    return path.is_dir() and (path / "params.json").is_file()


def _shards(folder: Path) -> list[Path]:
    shards = sorted(folder.glob("consolidated.*.pth"))
    if not shards:
        raise CheckpointError(f"{folder}: params.json found but no consolidated.*.pth shard")
    return shards


def read_config(folder: Path) -> PretrainedConfig:
    try:
        params = json.loads((folder / "params.json").read_text())
        dim, n_heads, n_layers = params["dim"], params["n_heads"], params["n_layers"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise CheckpointError(f"{folder}/params.json: malformed ({exc!r})") from exc
    # The FFN width is derived from a rounding rule in Meta's code; reading it off w1 is exact.
    shards = [safe_load_torch(p)[0] for p in _shards(folder)]
    key = "layers.0.feed_forward.w1.weight"
    if key not in shards[0]:
        raise CheckpointError(f"{folder}: {key} not in {_shards(folder)[0].name}")
    intermediate = sum(s[key].shape[0] for s in shards)
    # the vocabulary size is the embedding table's row count (params.json often says -1)
    embeddings = shards[0].get("tok_embeddings.weight")
    vocab = params.get("vocab_size", -1)
    vocab = embeddings.shape[0] if embeddings is not None else (vocab if vocab > 0 else 32000)
    return LlamaConfig(
        hidden_size=dim,
        num_attention_heads=n_heads,
        num_key_value_heads=params.get("n_kv_heads") or n_heads,
        num_hidden_layers=n_layers,
        intermediate_size=intermediate,
        rms_norm_eps=params.get("norm_eps", 1e-6),
        vocab_size=vocab,
    )


def interleaved_to_half_split(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Per head, rows (0,2,4..,1,3,5..) of Meta's interleaved rotary layout -> halves."""
    rows, cols = weight.shape
    return weight.reshape(num_heads, rows // num_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


class _Shards:
    """The model-parallel shards of a folder, memory-mapped; tensors merged across them on request."""

    def __init__(self, folder: Path):
        loaded = [safe_load_torch(p) for p in _shards(folder)]
        self.tensors = [t for t, _ in loaded]
        self.mapped = all(m for _, m in loaded)

    def parts(self, meta_key: str) -> list[torch.Tensor] | None:
        parts = [s.get(meta_key) for s in self.tensors]
        return None if any(p is None for p in parts) else cast(list[torch.Tensor], parts)

    def iter_merged(self, wanted: Sequence[tuple[_Tag, str, int | None]]) -> Iterator[tuple[_Tag, torch.Tensor]]:
        """(tag, tensor) for each (tag, Meta key, concat dim) present; the shards' pages of a tensor
        leave resident memory once the consumer has moved on."""
        for tag, meta_key, dim in wanted:
            parts = self.parts(meta_key)
            if parts is None:
                continue
            merged = parts[0] if dim is None or len(parts) == 1 else torch.cat(parts, dim=dim)
            yield tag, merged
            del merged
            if self.mapped:
                for part in parts:
                    release_file_pages(part)


def iter_layer_tensors(
    folder: Path,
    config: PretrainedConfig,
    layer_names: dict[int, list[str]],
    final_norm_names: list[str] | None,
) -> Iterator[tuple[int | str, str, torch.Tensor]]:
    """(layer index or "final_norm", name, tensor) in transformers' names and layout."""
    wanted: list[tuple[tuple[int | str, str], str, int | None]] = [
        ((i, name), f"layers.{i}.{_META_NAMES[name][0]}", _META_NAMES[name][1])
        for i, names in layer_names.items()
        for name in names
        if name in _META_NAMES
    ]
    if final_norm_names is not None:
        wanted.append((("final_norm", "weight"), "norm.weight", None))
    for (group, name), t in _Shards(folder).iter_merged(wanted):
        if name == "self_attn.q_proj.weight":
            t = interleaved_to_half_split(t, config.num_attention_heads)
        elif name == "self_attn.k_proj.weight":
            t = interleaved_to_half_split(t, config.num_key_value_heads)
        yield group, name, t


def iter_named_tensors(folder: Path, wanted: dict[str, tuple[str, int | None]]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for each name -> (Meta key, concat dim across shards) the shards hold."""
    yield from _Shards(folder).iter_merged([(name, key, dim) for name, (key, dim) in wanted.items()])
