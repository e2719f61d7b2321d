"""The result every checkpoint reader returns, and the checks shared by all readers."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PretrainedConfig

from ..architectures import ArchitectureSpec
from ..errors import CheckpointError


@dataclass
class LayerWeights:
    """Tensors of the selected decoder layers, named as in transformers' layer modules."""

    config: PretrainedConfig
    layers: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    final_norm: dict[str, torch.Tensor] | None = None
    source: str = ""


def expected_shapes(module: torch.nn.Module) -> dict[str, torch.Size]:
    """Names and shapes of a module's persistent tensors (the ones a checkpoint must hold)."""
    return {name: t.shape for name, t in module.state_dict().items()}


def layer_template(spec: ArchitectureSpec, config: PretrainedConfig, index: int) -> torch.nn.Module:
    with torch.device("meta"):
        return spec.build_layer(config, index)


def final_norm_template(spec: ArchitectureSpec, config: PretrainedConfig) -> torch.nn.Module:
    with torch.device("meta"):
        return spec.build_final_norm(config)


def check_tensors(
    found: dict[str, torch.Tensor], expected: dict[str, torch.Size], where: str, source: str
) -> dict[str, torch.Tensor]:
    """Raise a CheckpointError naming every missing or misshapen tensor."""
    missing = sorted(set(expected) - set(found))
    if missing:
        raise CheckpointError(f"{source}: {where} is missing tensor(s) {missing}")
    for name, shape in expected.items():
        if tuple(found[name].shape) != tuple(shape):
            raise CheckpointError(
                f"{source}: {where} tensor {name!r} has shape {tuple(found[name].shape)}, "
                f"the config implies {tuple(shape)}"
            )
    return {name: found[name] for name in expected}
