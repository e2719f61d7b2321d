"""Find out what a checkpoint source is and read only the tensors we need from it.

A source is a Hugging Face model folder, a ``.gguf`` file, a LLaMA-v1 folder
(``params.json`` + ``consolidated.*.pth``), or the name of an embedded asset
(see :mod:`mmllm.assets`). Nothing is ever downloaded.

Readers hand tensors over one at a time; each is checked, cast to the wanted dtype (no
copy when it already has it) and its source dropped before the next is read, so loading
one layer holds that layer once, not twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PretrainedConfig

from ..architectures import ArchitectureSpec, ExtraTensor, spec_for_config
from ..errors import CheckpointError, ConfigError
from . import gguf_file, hf_folder, hub, hub_cache, llama_v1
from .weights import (
    LayerWeights,
    cast,
    check_finite,
    check_shape,
    check_tensors,
    digest_piece,
    expected_shapes,
    final_norm_template,
    fingerprint,
    fingerprint_piece,
    layer_template,
    tensor_sha256,
)

__all__ = [
    "LayerWeights",
    "extra_tensor_names",
    "load_extra_tensors",
    "load_layer_weights",
    "locate_source",
    "read_config",
    "resolve_source",
]


def how_to_provide() -> str:
    """The ways to give an LLM source, for error messages."""
    from .. import assets

    return (
        f"an embedded asset name ({', '.join(assets.ASSETS)}; see `mmllm assets list`), a local Hugging Face "
        "folder (config.json + *.safetensors or *.bin), a .gguf file, or a LLaMA folder "
        "(params.json + consolidated.*.pth)"
    )


def resolve_source(source: str | Path) -> tuple[str, Path]:
    """(format, local path) of a source; embedded asset names are prepared on first use, hub ids
    (``org/name``) are downloaded as transformers does (config and index here, the layers' shards when
    read; :mod:`.hub`), or, with ``HF_HUB_OFFLINE=1``, found in the local Hugging Face cache."""
    from .. import assets

    text = str(source)
    if text in assets.ASSETS:
        return "hf", assets.prepare(text)
    fmt, path = locate_source(text)
    assert path is not None
    return fmt, path


def locate_source(source: str | Path) -> tuple[str, Path | None]:
    """(format, local path) of a source, found without reading any weights or preparing anything: an
    embedded asset name is ``("asset", None)`` (:func:`resolve_source` prepares it on first use).
    CheckpointError for an unknown name, a path that does not exist, a file or folder that is no
    checkpoint, or a hub id that is not in the local Hugging Face cache."""
    from .. import assets

    text = str(source)
    if text in assets.ASSETS:
        return "asset", None
    path = Path(text).expanduser()
    if gguf_file.is_gguf_file(path):
        return "gguf", path
    if llama_v1.is_llama_v1_folder(path):
        return "llama_v1", path
    if hf_folder.is_hf_folder(path):
        return "hf", path
    if hub_cache.looks_like_hub_id(text):
        if not hub.is_offline():  # as transformers: config.json + index now, the layers' shards when read
            return "hf", hub.fetch_metadata(text)
        snapshot = hub_cache.find_in_hub_cache(text)
        if snapshot is not None and hf_folder.is_hf_folder(snapshot):
            return "hf", snapshot
        raise CheckpointError(
            f"LLM source {text!r} looks like a Hugging Face hub id but is not in the local Hugging Face cache "
            f"({hub_cache.hub_cache_dir()}) and HF_HUB_OFFLINE=1: nothing is downloaded. Provide the weights as "
            f"{how_to_provide()}, or fetch {text!r} once where there is network "
            f"(`huggingface-cli download {text}`) and copy the cache here"
        )
    if not path.exists():
        from ..schema import suggest

        raise CheckpointError(
            f"LLM source {text!r}: {path} does not exist, and {text!r} is not an embedded asset name"
            f"{suggest(text, list(assets.ASSETS))}; nothing is downloaded at run time. Provide the weights as "
            f"{how_to_provide()}"
        )
    raise CheckpointError(
        f"{path}: not a recognised checkpoint (expected a .gguf file, a folder with config.json, "
        "or a LLaMA folder with params.json + consolidated.*.pth)"
    )


def read_config(source: str | Path) -> PretrainedConfig:
    fmt, path = resolve_source(source)
    reader = {"hf": hf_folder.read_config, "gguf": gguf_file.read_config, "llama_v1": llama_v1.read_config}[fmt]
    return reader(path)


def load_layer_weights(
    source: str | Path,
    layer_indices: list[int],
    with_final_norm: bool,
    config: PretrainedConfig | None = None,
    dtype: torch.dtype | None = None,
    range_requests: bool | None = None,
) -> LayerWeights:
    """Tensors of ``layer_indices`` (and the final norm if asked), checked against the config and
    cast to ``dtype`` (None: as stored; GGUF: dequantized fp32) tensor by tensor. ``range_requests``: a hub
    id's single-file checkpoint is read tensor by tensor over HTTP ranges (None: ``MMLLM_HUB_RANGE_REQUESTS``)."""
    fmt, path = resolve_source(source)
    if config is None:
        config = read_config(source)
    spec: ArchitectureSpec = spec_for_config(config)
    if fmt == "llama_v1" and spec.name != "llama":
        raise CheckpointError(f"{path}: params.json folders hold LLaMA weights only")
    expected = {i: expected_shapes(layer_template(spec, config, i)) for i in layer_indices}
    names = {i: list(shapes) for i, shapes in expected.items()}
    norm_expected = expected_shapes(final_norm_template(spec, config)) if with_final_norm else None
    norm_names = list(norm_expected) if norm_expected is not None else None
    if fmt == "hf":
        # a hub snapshot: fetch just these layers' shard(s), or their byte ranges
        path = hub.ensure_layers(path, spec, names, norm_names, range_requests=range_requests)
        items = hf_folder.iter_layer_tensors(path, spec, names, norm_names)
    elif fmt == "gguf":
        items = gguf_file.iter_layer_tensors(path, spec, config, names, norm_names)
    else:
        items = llama_v1.iter_layer_tensors(path, config, names, norm_names)
    layers: dict[int, dict[str, torch.Tensor]] = {i: {} for i in layer_indices}
    final: dict[str, torch.Tensor] = {}
    pieces: dict[tuple[int, str], bytes] = {}
    digests: dict[tuple[int, str], bytes] = {}
    for group, name, tensor in items:
        if group == "final_norm":
            assert norm_expected is not None  # readers yield the final norm only when asked for it
            check_shape(tensor, norm_expected[name], name, "final norm", str(path))
            final[name] = cast(tensor, dtype)
            check_finite(final[name], name, "final norm", str(path), tensor.dtype)
        else:
            assert isinstance(group, int)  # a layer index
            check_shape(tensor, expected[group][name], name, f"layer {group}", str(path))
            pieces[(group, name)] = fingerprint_piece(group, name, tensor)
            digests[(group, name)] = digest_piece(group, name, tensor)
            layers[group][name] = cast(tensor, dtype)
            check_finite(layers[group][name], name, f"layer {group}", str(path), tensor.dtype)
        del tensor  # the source (a mapped or dequantized copy) goes before the next tensor is read
    checked = {i: check_tensors(layers[i], expected[i], f"layer {i}", str(path)) for i in layer_indices}
    final_norm = check_tensors(final, norm_expected, "final norm", str(path)) if norm_expected is not None else None
    return LayerWeights(
        config=config,
        layers=checked,
        final_norm=final_norm,
        source=str(path),
        fingerprint=fingerprint(pieces),
        sha256=tensor_sha256(digests),
    )


def extra_tensor_names(config: PretrainedConfig) -> list[str]:
    """Names :func:`load_extra_tensors` accepts for this LLM family."""
    return [t.name for t in spec_for_config(config).extra_tensors]


def load_extra_tensors(
    source: str | Path,
    names: Sequence[str],
    config: PretrainedConfig | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Named tensors outside the decoder layers (``word_embeddings``, ``final_norm``, ``lm_head``, ...;
    see ``ArchitectureSpec.extra_tensors``), read without loading anything else, in transformers'
    layout (GGUF: dequantized, Gemma's ``1 + w`` norm undone; LLaMA-v1: shards merged)."""
    if isinstance(names, str):
        raise ConfigError(f"names must be a list of tensor names, got the string {names!r}")
    fmt, path = resolve_source(source)
    if config is None:
        config = read_config(source)
    spec = spec_for_config(config)
    wanted = {name: spec.extra(name) for name in dict.fromkeys(names)}
    found = _read_extras(fmt, path, spec, config, wanted, dtype)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for name, extra in wanted.items():
        if name in found:
            continue
        if extra.tied_to is not None and tied:
            source_name = extra.tied_to
            if source_name not in found:
                found.update(_read_extras(fmt, path, spec, config, {source_name: spec.extra(source_name)}, dtype))
            if source_name in found:
                found[name] = found[source_name]
                continue
        raise CheckpointError(f"{path}: no tensor {name!r} (looked for {_where(fmt, extra)})")
    return {name: found[name] for name in wanted}


def _where(fmt: str, extra: ExtraTensor) -> list[str] | str | None:
    return {"hf": list(extra.hf), "gguf": extra.gguf, "llama_v1": extra.llama_v1 and extra.llama_v1[0]}[fmt]


def _read_extras(
    fmt: str,
    path: Path,
    spec: ArchitectureSpec,
    config: PretrainedConfig,
    wanted: dict[str, ExtraTensor],
    dtype: torch.dtype | None,
) -> dict[str, torch.Tensor]:
    if fmt == "hf":
        hub.ensure_keys(path, [key for e in wanted.values() for key in e.hf])
        items = hf_folder.iter_named_tensors(path, {n: e.hf for n, e in wanted.items()})
    elif fmt == "gguf":
        items = gguf_file.iter_named_tensors(
            path, spec, config, {n: (e.gguf, e.hf[0]) for n, e in wanted.items() if e.gguf is not None}
        )
    else:
        items = llama_v1.iter_named_tensors(path, {n: e.llama_v1 for n, e in wanted.items() if e.llama_v1})
    out: dict[str, torch.Tensor] = {}
    for name, tensor in items:
        check_shape(tensor, wanted[name].shape(config), name, "extra", str(path))
        out[name] = cast(tensor, dtype)
        check_finite(out[name], name, "extra", str(path), tensor.dtype)
        del tensor
    return out
