"""Model state dicts that leave out frozen LLM weights (they are reloaded from their source)."""
from __future__ import annotations

import torch
from torch import nn

from .block import FrozenLLMBlock
from .errors import CheckpointError


def frozen_keys(model: nn.Module) -> set[str]:
    """Keys of ``model.state_dict()`` that rebuilding the model restores by itself."""
    keys: set[str] = set()
    for prefix, module in model.named_modules():
        if isinstance(module, FrozenLLMBlock):
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
        if isinstance(module, FrozenLLMBlock)
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
