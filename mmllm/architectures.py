"""One spec per supported LLM family: which transformers class is its decoder layer,
where its layers and final norm live in a checkpoint, and how its norm is built.

The decoder layers themselves are transformers' own classes; nothing here
re-implements attention or MLPs, so a layer behaves exactly as in the LLM.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from transformers import PretrainedConfig

from .errors import UnsupportedArchitectureError


def _import(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class ArchitectureSpec:
    """How to build and find one decoder layer of an LLM family."""

    name: str
    model_types: tuple[str, ...]
    layer_class: str
    norm_class: str
    layer_prefixes: tuple[str, ...]
    final_norm_prefixes: tuple[str, ...]
    rotary: bool
    gguf_arch: str | None = None
    norm_is_layernorm: bool = False

    def build_layer(self, config: PretrainedConfig, index: int) -> nn.Module:
        return _import(self.layer_class)(config, layer_idx=index)

    def build_final_norm(self, config: PretrainedConfig) -> nn.Module:
        """A norm at its constructor init: unit scale (LayerNorm: weight 1, bias 0)."""
        if self.norm_is_layernorm:
            return nn.LayerNorm(config.hidden_size, elementwise_affine=getattr(config, "layer_norm_elementwise_affine", True))
        return _import(self.norm_class)(config.hidden_size, eps=config.rms_norm_eps)

    def head_dim(self, config: PretrainedConfig) -> int:
        return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def has_final_norm(self, config: PretrainedConfig) -> bool:
        if self.norm_is_layernorm:  # OPT-350m (post-norm) has no final layer norm
            return bool(getattr(config, "do_layer_norm_before", True)) and not getattr(
                config, "_remove_final_layer_norm", False
            )
        return True


_LLAMA_PREFIXES = ("model.layers.", "layers.", "model.language_model.layers.", "language_model.model.layers.")
_LLAMA_NORM = ("model.norm.", "norm.", "model.language_model.norm.", "language_model.model.norm.")

ARCHITECTURES: dict[str, ArchitectureSpec] = {
    spec.name: spec
    for spec in (
        ArchitectureSpec(
            name="llama",
            model_types=("llama", "mistral"),
            layer_class="transformers.models.llama.modeling_llama.LlamaDecoderLayer",
            norm_class="transformers.models.llama.modeling_llama.LlamaRMSNorm",
            layer_prefixes=_LLAMA_PREFIXES,
            final_norm_prefixes=_LLAMA_NORM,
            rotary=True,
            gguf_arch="llama",
        ),
        ArchitectureSpec(
            name="qwen2",
            model_types=("qwen2",),
            layer_class="transformers.models.qwen2.modeling_qwen2.Qwen2DecoderLayer",
            norm_class="transformers.models.qwen2.modeling_qwen2.Qwen2RMSNorm",
            layer_prefixes=_LLAMA_PREFIXES,
            final_norm_prefixes=_LLAMA_NORM,
            rotary=True,
            gguf_arch="qwen2",
        ),
        ArchitectureSpec(
            name="gemma3",
            model_types=("gemma3_text", "gemma3"),
            layer_class="transformers.models.gemma3.modeling_gemma3.Gemma3DecoderLayer",
            norm_class="transformers.models.gemma3.modeling_gemma3.Gemma3RMSNorm",
            layer_prefixes=_LLAMA_PREFIXES,
            final_norm_prefixes=_LLAMA_NORM,
            rotary=True,
            gguf_arch="gemma3",
        ),
        ArchitectureSpec(
            name="opt",
            model_types=("opt",),
            layer_class="transformers.models.opt.modeling_opt.OPTDecoderLayer",
            norm_class="torch.nn.LayerNorm",
            layer_prefixes=("model.decoder.layers.", "decoder.layers."),
            final_norm_prefixes=("model.decoder.final_layer_norm.", "decoder.final_layer_norm."),
            rotary=False,
            norm_is_layernorm=True,
        ),
    )
}


def supported_model_types() -> list[str]:
    return sorted(t for spec in ARCHITECTURES.values() for t in spec.model_types)


def spec_for_config(config: PretrainedConfig) -> ArchitectureSpec:
    model_type = getattr(config, "model_type", None)
    for spec in ARCHITECTURES.values():
        if model_type in spec.model_types:
            return spec
    raise UnsupportedArchitectureError(
        f"LLM architecture {model_type!r} is not supported; supported model_type values: "
        f"{', '.join(supported_model_types())}"
    )


def text_config(config: PretrainedConfig) -> PretrainedConfig:
    """The language model's config, also for multimodal wrappers (e.g. Gemma3ForConditionalGeneration)."""
    sub = getattr(config, "text_config", None)
    return sub if isinstance(sub, PretrainedConfig) else config


def prepare_config(config: PretrainedConfig, attn_implementation: str) -> PretrainedConfig:
    """Copy of ``config`` set up for one bidirectional layer: the attention kernel is explicit."""
    if attn_implementation not in ("sdpa", "eager"):
        raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', got {attn_implementation!r}")
    config = config.__class__.from_dict(config.to_dict())
    config._attn_implementation = attn_implementation
    if getattr(config, "model_type", None) == "opt":
        config.dropout = 0.0  # frozen blocks never drop out; a fine-tuned one is set by the caller
    return config


def identity_rotation(
    batch: int, length: int, head_dim: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos=1, sin=0: rotary embedding that rotates nothing, i.e. no positional information."""
    cos = torch.ones(batch, length, head_dim, dtype=dtype, device=device)
    return cos, torch.zeros_like(cos)
