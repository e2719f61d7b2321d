"""Model state dicts and final-model files that leave out frozen LLM weights (reloaded from their source)."""

from __future__ import annotations

import pickle
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .loading.state_fit import require_finite
from .safeload import refusal


def frozen_keys(model: nn.Module) -> set[str]:
    """Keys of ``model.state_dict()`` that rebuilding the model restores by itself."""
    keys: set[str] = set()
    for prefix, module in model.named_modules():
        if callable(getattr(module, "frozen_state_keys", None)):  # any block kind holding reloadable weights
            head = f"{prefix}." if prefix else ""
            keys.update(head + k for k in module.frozen_state_keys())
    return keys


def model_state_dict(model: nn.Module, include_frozen: bool = False) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    if include_frozen:
        return state
    skip = frozen_keys(model)
    return {k: v for k, v in state.items() if k not in skip}


def block_fingerprints(model: nn.Module) -> dict[str, str | None]:
    """Which pretrained weights each LLM block was built from, to store beside a checkpoint."""
    return {
        prefix: module.source_fingerprint
        for prefix, module in model.named_modules()
        if hasattr(module, "source_fingerprint")
    }


def load_model_state_dict(
    model: nn.Module, state: dict[str, torch.Tensor], fingerprints: dict[str, str | None] | None = None
) -> None:
    """Load a state dict that may lack the frozen weights; anything else missing is an error."""
    if fingerprints:
        current = block_fingerprints(model)
        for prefix, fp in fingerprints.items():
            if fp is not None and current.get(prefix) not in (None, fp):
                raise CheckpointError(
                    f"checkpoint was trained with different frozen LLM weights at {prefix!r} "
                    f"(fingerprint {fp}, model has {current.get(prefix)}): check llm_block.source/layers"
                )
    result = model.load_state_dict(state, strict=False)
    missing = set(result.missing_keys) - frozen_keys(model)
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"checkpoint does not fit the model: missing {sorted(missing)[:10]}, "
            f"unexpected {sorted(result.unexpected_keys)[:10]}"
        )


def save_model_file(
    path: str | Path, state: dict[str, torch.Tensor], fingerprints: dict[str, str | None], config: dict[str, Any]
) -> None:
    """A final-model file: trainable weights, the frozen blocks' fingerprints and the run's config,
    written atomically (a full disk leaves no partial file and says so)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save({"state_dict": state, "fingerprints": fingerprints, "config": config}, tmp)
        tmp.replace(path)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"could not write {path}: {describe_write_error(exc, path)}") from exc


def read_model_file(path: str | Path) -> dict[str, Any]:
    """The blob of a final-model file, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused a global: planted code, not damage
        raise CheckpointError(refusal(path, exc)) from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many types for truncated/corrupt zips
        raise CheckpointError(f"model file {path} is truncated or corrupt ({type(exc).__name__}: {exc})") from exc
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise CheckpointError(f"{path} is not an mmllm model file (no 'state_dict')")
    require_finite(blob["state_dict"], f"model file {path}")
    return blob


def selected_key(key: str, prefixes: list[str]) -> bool:
    """Whether ``key`` is under one of ``prefixes``: a name prefix (``backbone.``), or a glob when it holds
    ``*``/``?`` (``lm.lm.*.visual.*``: weights spread over every layer, as LLaViT's visual Q/K/V copies)."""
    return any(key.startswith(p) or (("*" in p or "?" in p) and fnmatchcase(key, p)) for p in prefixes)


def load_model_file(model: nn.Module, path: str | Path, prefixes: list[str] | None = None) -> dict[str, Any]:
    """Initialise ``model`` from a final-model file; with ``prefixes`` only those submodules (stage
    transfer, e.g. a pretrained ``backbone.``; globs too, :func:`selected_key`). Returns the file's blob
    (its config, fingerprints)."""
    blob = read_model_file(path)
    state = blob["state_dict"]
    if not prefixes:
        load_model_state_dict(model, state, blob.get("fingerprints"))
        return blob
    state = {k: v for k, v in state.items() if selected_key(k, prefixes)}
    if not state:
        raise CheckpointError(f"{path}: no tensor under {prefixes}")
    wanted = {k for k in model.state_dict() if selected_key(k, prefixes)}
    missing = wanted - set(state) - frozen_keys(model)
    if missing:
        raise CheckpointError(f"{path}: lacks {sorted(missing)[:10]}")
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise CheckpointError(f"{path}: unexpected tensors {result.unexpected_keys[:10]}")
    return blob


def describe_write_error(exc: BaseException, path: str | Path) -> str:
    """'disk full (N MB free ...)' when that is why a write failed (torch says 'iostream error')."""
    import errno
    import shutil

    folder = Path(path).parent
    try:
        free = shutil.disk_usage(folder if folder.exists() else Path.cwd()).free
    except OSError:
        free = None
    if (
        getattr(exc, "errno", None) == errno.ENOSPC
        or "No space left" in str(exc)
        or (free is not None and free < 64 << 20)
    ):
        room = f"{free / 2**20:.0f} MB free" if free is not None else "no space left"
        return f"disk full ({room} on the device of {folder}); the partial file was removed"
    return f"{type(exc).__name__}: {exc}"
