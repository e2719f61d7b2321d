"""One spec per supported LLM family: which transformers class is its decoder layer,
where its layers, final norm and other named tensors (the token embedding table, ...)
live in each checkpoint format, and how its norm is built.

The decoder layers themselves are transformers' own classes; nothing here
re-implements attention or MLPs, so a layer behaves exactly as in the LLM.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig

from .errors import ConfigError, UnsupportedArchitectureError
from .schema import suggest


def _import(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class ExtraTensor:
    """A tensor of the LLM outside its decoder layers, by name, with where each format keeps it.

    ``hf``: candidate keys in a Hugging Face checkpoint (first match wins); ``gguf``: the
    GGUF tensor name; ``llama_v1``: (key, dim the model-parallel shards split it along, None
    if every shard holds it whole); ``shape``: expected shape from the config; ``tied_to``:
    the tensor it equals when the config ties them (``tie_word_embeddings``) and the
    checkpoint leaves it out.
    """

    name: str
    hf: tuple[str, ...]
    shape: Callable[[PretrainedConfig], tuple[int, ...]]
    gguf: str | None = None
    llama_v1: tuple[str, int | None] | None = None
    tied_to: str | None = None
    description: str = ""


def _embedding_width(config: PretrainedConfig) -> int:
    return getattr(config, "word_embed_proj_dim", None) or config.hidden_size  # OPT-350m projects 512 -> 1024


def _llama_extras(hf_prefixes: tuple[str, ...]) -> tuple[ExtraTensor, ...]:
    return (
        ExtraTensor(
            "word_embeddings",
            tuple(p + "embed_tokens.weight" for p in hf_prefixes),
            lambda c: (c.vocab_size, c.hidden_size),
            gguf="token_embd.weight",
            llama_v1=("tok_embeddings.weight", 1),
            description="token embedding table [vocab, hidden] (Gemma multiplies it by sqrt(hidden) "
            "at lookup; the table itself is unscaled)",
        ),
        ExtraTensor(
            "final_norm",
            tuple(p + "norm.weight" for p in hf_prefixes),
            lambda c: (c.hidden_size,),
            gguf="output_norm.weight",
            llama_v1=("norm.weight", None),
            description="weight of the RMSNorm after the last layer",
        ),
        ExtraTensor(
            "lm_head",
            ("lm_head.weight", "language_model.lm_head.weight"),
            lambda c: (c.vocab_size, c.hidden_size),
            gguf="output.weight",
            llama_v1=("output.weight", 0),
            tied_to="word_embeddings",
            description="output projection to the vocabulary [vocab, hidden]",
        ),
    )


_OPT_PREFIXES = ("model.decoder.", "decoder.")
_OPT_EXTRAS = (
    ExtraTensor(
        "word_embeddings",
        tuple(p + "embed_tokens.weight" for p in _OPT_PREFIXES),
        lambda c: (c.vocab_size, _embedding_width(c)),
        description="token embedding table",
    ),
    ExtraTensor(
        "final_norm",
        tuple(p + "final_layer_norm.weight" for p in _OPT_PREFIXES),
        lambda c: (c.hidden_size,),
        description="weight of the LayerNorm after the last layer",
    ),
    ExtraTensor(
        "final_norm_bias",
        tuple(p + "final_layer_norm.bias" for p in _OPT_PREFIXES),
        lambda c: (c.hidden_size,),
        description="bias of the LayerNorm after the last layer",
    ),
    ExtraTensor(
        "lm_head",
        ("lm_head.weight",),
        lambda c: (c.vocab_size, _embedding_width(c)),
        tied_to="word_embeddings",
        description="output projection to the vocabulary",
    ),
)


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
    extra_tensors: tuple[ExtraTensor, ...] = ()

    def extra(self, name: str) -> ExtraTensor:
        """The named extra tensor, or a ConfigError listing this family's names."""
        known = [t.name for t in self.extra_tensors]
        for tensor in self.extra_tensors:
            if tensor.name == name:
                return tensor
        raise ConfigError(f"{self.name} has no extra tensor {name!r}{suggest(name, known)}; known: {known}")

    def build_layer(self, config: PretrainedConfig, index: int) -> nn.Module:
        return _import(self.layer_class)(config, layer_idx=index)

    def build_final_norm(self, config: PretrainedConfig) -> nn.Module:
        """A norm at its constructor init: unit scale (LayerNorm: weight 1, bias 0)."""
        if self.norm_is_layernorm:
            return nn.LayerNorm(
                config.hidden_size, elementwise_affine=getattr(config, "layer_norm_elementwise_affine", True)
            )
        return _import(self.norm_class)(config.hidden_size, eps=config.rms_norm_eps)

    def head_dim(self, config: PretrainedConfig) -> int:
        return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads

    def has_final_norm(self, config: PretrainedConfig) -> bool:
        if self.norm_is_layernorm:  # OPT-350m (post-norm) has no final layer norm
            return bool(getattr(config, "do_layer_norm_before", True)) and not getattr(
                config, "_remove_final_layer_norm", False
            )
        return True


_LLAMA_MODEL = ("model.", "", "model.language_model.", "language_model.model.")
_LLAMA_PREFIXES = tuple(p + "layers." for p in _LLAMA_MODEL)
_LLAMA_NORM = tuple(p + "norm." for p in _LLAMA_MODEL)
_LLAMA_EXTRAS = _llama_extras(_LLAMA_MODEL)

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
            extra_tensors=_LLAMA_EXTRAS,
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
            extra_tensors=_LLAMA_EXTRAS,
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
            extra_tensors=_LLAMA_EXTRAS,
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
            extra_tensors=_OPT_EXTRAS,
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
