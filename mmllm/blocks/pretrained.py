"""transformers' ``from_pretrained`` / ``save_pretrained`` conventions for the LLM block.

A saved block is a folder::

    block_config.json       the block's options (kind, source, layers, dtype, ...) and the frozen
                            weights' identity: their source and SHA-256 (of every selected layer
                            tensor's bytes as stored in the source, so independent of the load dtype)
    adapters.safetensors    every tensor a rebuild cannot restore: the trainable adapters (and, for
                            the trained or random kinds, the layers themselves)
    frozen/                 only with ``include_frozen=True``: the frozen layers (and the pretrained
                            final norm) as a minimal Hugging Face folder, copied from the source as stored
                            (kinds whose layers are in adapters.safetensors need no copy: nothing is added)

Loading goes through the same path as a YAML ``model.llm_block`` section (:func:`build_block`
and :func:`mmllm.loading.load_layer_weights`): the frozen layers come from ``frozen/`` when it
is there, else from the recorded source (``source=`` re-points it, e.g. to a moved folder),
and their SHA-256 must equal the recorded one (a :class:`CheckpointError` otherwise).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError
from ..jsonio import atomic_write_text, write_json
from ..layer_selection import resolve_layers
from ..loading import load_layer_weights, locate_source, read_config
from ..loading.state_fit import require_finite
from .registry import build_block

CONFIG_NAME = "block_config.json"
ADAPTERS_NAME = "adapters.safetensors"
FROZEN_DIR = "frozen"
FORMAT = 1
# options a saved block may be re-opened with; the others fix the adapters' shapes or the layers' weights
REOPEN_OPTIONS = {"source", "dtype", "attn_implementation", "gradient_checkpointing"}
FROZEN_KINDS = ("llm_block", "llm_block_finetuned", "random_frozen", "random_trained")


def is_saved_block(path: str | os.PathLike) -> bool:
    return (Path(path).expanduser() / CONFIG_NAME).is_file()


def from_pretrained(
    source: str | os.PathLike,
    /,
    *,
    layers: Any = None,
    visual_dim: int | None = None,
    dtype: str | torch.dtype | None = None,
    kind: str | None = None,
    **options: Any,
):
    """A block from an LLM source (asset name, hub id: downloaded by the shards it needs unless offline, folder, .gguf) or from a
    folder written by :func:`save_pretrained`. See ``FrozenLLMBlock.from_pretrained``."""
    text = os.fspath(source) if isinstance(source, os.PathLike) else source
    if not isinstance(text, str):
        raise ConfigError(f"from_pretrained: source must be a str or a path, got {type(source).__name__}")
    if is_saved_block(text):
        return _load_saved(Path(text).expanduser(), layers, visual_dim, dtype, kind, options)
    try:  # a missing path or an unknown name is said first, before asking for visual_dim
        locate_source(text)
    except CheckpointError as exc:
        raise CheckpointError(
            f"from_pretrained({text!r}): not a folder written by save_pretrained, and {exc}"
        ) from None
    if visual_dim is None:
        raise ConfigError(
            f"from_pretrained({text!r}): give visual_dim= (the width of the tokens the block receives); "
            f"only a folder written by save_pretrained (with {CONFIG_NAME}) records it"
        )
    if "source" in options:
        raise ConfigError(
            f"from_pretrained({text!r}): source= re-points a saved block's frozen weights; "
            f"{text!r} is not a folder written by save_pretrained"
        )
    block_options: dict[str, Any] = {"kind": kind or "llm_block", "source": text, **options}
    if layers is not None:
        block_options["layers"] = layers
    if dtype is not None:
        block_options["dtype"] = dtype
    return _build(block_options, visual_dim)


def _build(block_options: dict[str, Any], visual_dim: int):
    if block_options.get("kind") not in FROZEN_KINDS:
        raise ConfigError(
            f"from_pretrained builds the LLM block kinds {list(FROZEN_KINDS)}, "
            f"not {block_options.get('kind')!r}; use build_block for the others"
        )
    return build_block(block_options, visual_dim)  # a FROZEN_KINDS kind: a FrozenLLMBlock (llm_block imports us)


def _plain_options(block) -> dict[str, Any]:
    """The block's options as JSON data: dtypes by name, ranges as lists, existing paths absolute."""
    from ..precision import _CANONICAL

    data = block.cfg.to_dict()
    if isinstance(data.get("dtype"), torch.dtype):
        data["dtype"] = _CANONICAL[data["dtype"]]
    if isinstance(data.get("layers"), (range, tuple)):
        data["layers"] = list(data["layers"])
    source = data.get("source")
    if source is not None and Path(source).expanduser().exists():
        data["source"] = str(Path(source).expanduser().resolve())
    return data


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors file written atomically (temp file + rename)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _restorable(block) -> bool:
    """True when the layers are frozen pretrained weights: a rebuild from the source restores them."""
    return block.frozen and block.cfg.pretrained


def save_pretrained(block, directory: str | os.PathLike, include_frozen: bool = False) -> Path:
    """Write ``block`` to ``directory`` (see the module docstring); returns the folder."""
    folder = Path(directory).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    skip = set(block.frozen_state_keys())
    state = {k: v for k, v in block.state_dict().items() if k not in skip}
    _save_tensors(folder / ADAPTERS_NAME, state, {"format": "pt", "kind": block.kind})
    included = False
    if include_frozen and _restorable(block):
        _save_frozen(block, folder / FROZEN_DIR)
        included = True
    meta = {
        "format": FORMAT,
        "library": "mmllm",
        "options": _plain_options(block),
        "layer_indices": list(block.layer_indices),
        "num_hidden_layers": int(block.llm_config.num_hidden_layers),
        "frozen": {
            "restored_from_source": _restorable(block),
            "sha256": block.frozen_sha256 if _restorable(block) else None,
            "fingerprint": block.source_fingerprint if _restorable(block) else None,
            "included": included,
        },
        "adapters": sorted(state),
    }
    write_json(folder / CONFIG_NAME, meta)  # last: a folder without it is not a saved block
    return folder


def _save_frozen(block, target: Path) -> None:
    """The frozen layers (and the pretrained final norm) re-read from the source as stored, so the copy
    has exactly the source's bytes (and SHA-256), as a minimal Hugging Face folder the loader reads."""
    source = block.cfg.source
    want_norm = block.cfg.final_norm == "pretrained" and not isinstance(block.final_norm, torch.nn.Identity)
    weights = load_layer_weights(source, block.layer_indices, want_norm, block.llm_config, dtype=None)
    if weights.sha256 != block.frozen_sha256:
        raise CheckpointError(
            f"{source}: its weights changed since the block was loaded (SHA-256 {weights.sha256} vs "
            f"{block.frozen_sha256}); rebuild the block before saving it with include_frozen=True"
        )
    prefix, norm_prefix = block.spec.layer_prefixes[0], block.spec.final_norm_prefixes[0]
    tensors = {f"{prefix}{i}.{name}": t for i, layer in weights.layers.items() for name, t in layer.items()}
    tensors.update({f"{norm_prefix}{name}": t for name, t in (weights.final_norm or {}).items()})
    target.mkdir(parents=True, exist_ok=True)
    _save_tensors(target / "model.safetensors", tensors, {"format": "pt"})
    atomic_write_text(target / "config.json", read_config(source).to_json_string(use_diff=False))


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable block config ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("options"), dict):
        raise CheckpointError(f"{path}: not a block config of format {FORMAT} written by save_pretrained")
    return meta


def _load_saved(
    folder: Path, layers: Any, visual_dim: int | None, dtype: Any, kind: str | None, options: dict[str, Any]
):
    meta = _read_meta(folder)
    saved = dict(meta["options"])
    where = folder / CONFIG_NAME
    if visual_dim is not None and visual_dim != saved.get("visual_dim"):
        raise ConfigError(f"{where}: the block was saved for visual_dim={saved.get('visual_dim')}, not {visual_dim}")
    if kind is not None and kind != saved.get("kind"):
        raise ConfigError(f"{where}: the block was saved as kind {saved.get('kind')!r}, not {kind!r}")
    if layers is not None and resolve_layers(layers, meta["num_hidden_layers"]) != meta["layer_indices"]:
        raise ConfigError(
            f"{where}: the block was saved with layers {meta['layer_indices']}; layers={layers!r} "
            "selects others (its adapters were trained with those)"
        )
    for name, value in options.items():
        if name not in REOPEN_OPTIONS and saved.get(name) != value:
            raise ConfigError(
                f"{where}: option {name}={value!r} differs from the saved {saved.get(name)!r}; "
                f"a saved block can be re-opened with other {sorted(REOPEN_OPTIONS)} only"
            )
    block_options = {**saved, **options}
    if dtype is not None:
        block_options["dtype"] = dtype
    frozen = meta.get("frozen") or {}
    if frozen.get("included") and "source" not in options:
        included = folder / FROZEN_DIR
        if not (included / "config.json").is_file():
            raise CheckpointError(f"{where} says the frozen weights are included, but {included} has no config.json")
        block_options["source"] = str(included)
    visual = block_options.pop("visual_dim")
    block = _build(block_options, visual)
    want = frozen.get("sha256")
    if frozen.get("restored_from_source") and block.frozen_sha256 != want:
        raise CheckpointError(
            f"{folder}: the frozen weights read from {block_options.get('source')!r} are not those the block was "
            f"saved with (SHA-256 {block.frozen_sha256} vs {want} in {where}); point source= at the original weights"
        )
    _load_adapters(block, folder / ADAPTERS_NAME)
    return block


def _load_adapters(block, path: Path) -> None:
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the saved block's trainable weights live there")
    try:
        state = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from exc
    own = block.state_dict()
    expected = set(own) - set(block.frozen_state_keys())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{path}: missing tensor(s) {missing}, unexpected tensor(s) {unexpected}")
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        raise CheckpointError(f"{path}: tensor shapes differ from the block's: {wrong}")
    require_finite(state, str(path))
    block.load_state_dict(state, strict=False)
