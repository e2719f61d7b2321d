"""The LLM transformer block as a visual encoder layer (Pang et al., ICLR 2024), and its controls.

    visual tokens --Linear(visual_dim, llm_dim)--> LLM decoder layer(s) --> norm
                  --Linear(llm_dim, out_dim)--> visual tokens

The LLM layers are transformers' own decoder-layer modules with the two changes the paper
makes: no positional information (an identity rotary rotation; OPT's learned positions live
in its decoder and are simply not added) and no causal mask (every token attends to every
non-padded token). Four kinds share this module and differ only in where the layers' weights
come from and whether they train:

=======================  ======================  ==========================================
kind                     layer weights           trained?
=======================  ======================  ==========================================
``llm_block``            the pretrained LLM's    no (frozen: the paper's method)
``llm_block_finetuned``  the pretrained LLM's    yes (control: fine-tuned block)
``random_trained``       random (LLM's init)     yes (the paper's control, Appendix B.2)
``random_frozen``        random (LLM's init)     no (control: a fixed random block)
=======================  ======================  ==========================================
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import field_validator, model_validator
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoConfig, PretrainedConfig

from ..architectures import ArchitectureSpec, identity_rotation, prepare_config, spec_for_config, text_config
from ..errors import ConfigError
from ..layer_selection import resolve_layers
from ..loading import load_layer_weights, read_config
from ..precision import check_dtype_name, resolve_dtype
from .registry import BlockConfig, PositiveInt, register_block
from .tokens import additive_padding_mask, check_tokens, zero_padded


def architecture_of(source: str | None, llm_config: dict[str, Any] | None) -> PretrainedConfig:
    """The LLM config from a source (only its config is read) or from a mapping with ``model_type``."""
    if llm_config is None:
        assert source is not None  # check_one_architecture: exactly one of the two
        return read_config(source)
    data = dict(llm_config)
    return text_config(AutoConfig.for_model(data.pop("model_type"), **data))


def check_one_architecture(source: str | None, llm_config: dict[str, Any] | None) -> None:
    if (source is None) == (llm_config is None):
        raise ValueError(
            "give the LLM architecture either as source (its config is read) or as llm_config, not both and not neither"
        )
    if llm_config is not None and "model_type" not in llm_config:
        raise ValueError("llm_config needs a model_type (e.g. llama, qwen2, gemma3_text, opt)")


def llm_config_replaces_source(data: Any) -> Any:
    """Before validation: an ``llm_config`` without an explicit ``source`` replaces the default source."""
    if isinstance(data, dict) and data.get("llm_config") is not None and "source" not in data:
        data = {**data, "source": None}
    return data


class LLMBlockConfig(BlockConfig):
    """Kind ``llm_block``: the frozen pretrained block. YAML ``model.llm_block`` maps onto it.

    ``final_norm`` defaults to ``"unit"``: the official code applies the LLM's final
    RMSNorm class after the block but never loads its weight, so it stays 1 — a
    parameter-free normalisation of the block's residual stream (whose late-layer
    outliers are large) before the trainable output adapter. ``"pretrained"`` loads
    the LLM's final-norm weight instead; ``"none"`` skips it. ``dtype: auto`` is bf16 on
    a GPU that has it and, on a CPU, the faster of bf16/fp32 as measured (:mod:`mmllm.precision`).
    """

    pretrained: ClassVar[bool] = True
    trainable: ClassVar[bool] = False

    out_dim: PositiveInt | None = None
    source: str | None = "smollm2-135m"
    layers: Any = "last"  # int, negative int, list of ints, "first" | "middle" | "last", slice string "-2:"
    dtype: Any = "auto"  # auto | bfloat16 | float16 | float32 (bf16/fp16/fp32 too) or a torch.dtype
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    final_norm: Literal["unit", "pretrained", "none"] = "unit"
    gradient_checkpointing: bool = False
    adapter_bias: bool = False
    # a hub id whose checkpoint is one model.safetensors: read only the chosen layers' tensors by HTTP range
    # requests (None: the MMLLM_HUB_RANGE_REQUESTS environment variable decides; mmllm.loading.hub)
    hub_range_requests: bool | None = None

    @field_validator("source", mode="before")
    @classmethod
    def _source_text(cls, value: Any) -> Any:
        return str(value) if hasattr(value, "__fspath__") else value  # a Path is fine too

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: Any) -> Any:
        return check_dtype_name(value)

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: Any) -> Any:
        ok = (isinstance(value, (int, str, range)) and not isinstance(value, bool)) or (
            isinstance(value, (list, tuple)) and all(isinstance(i, int) and not isinstance(i, bool) for i in value)
        )
        if not ok:
            raise ValueError("layers must be an int, a list of ints, 'first' | 'middle' | 'last' or a slice like '-2:'")
        return value

    @model_validator(mode="after")
    def _needs_source(self) -> LLMBlockConfig:
        if self.pretrained and self.source is None:
            raise ValueError(
                "a pretrained block needs a source (an asset name, HF folder, .gguf or params.json folder)"
            )
        return self

    def architecture(self) -> PretrainedConfig:
        """The LLM's config (read from the source; no weights are loaded)."""
        assert self.source is not None  # _needs_source
        return read_config(self.source)


class FinetunedBlockConfig(LLMBlockConfig):
    """Kind ``llm_block_finetuned``: the pretrained block, trained with the model (a control)."""

    trainable: ClassVar[bool] = True


class RandomFrozenBlockConfig(LLMBlockConfig):
    """Kind ``random_frozen``: the LLM's layer architecture, randomly initialised as the LLM's own
    pretraining init (N(0, initializer_range) linears), kept frozen.

    The architecture comes from ``source`` (only its config is read) or from ``llm_config``,
    a transformers config as a mapping with ``model_type`` (then leave ``source`` out).
    """

    pretrained: ClassVar[bool] = False

    llm_config: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _llm_config_replaces_source(cls, data: Any) -> Any:
        return llm_config_replaces_source(data)

    @model_validator(mode="after")
    def _one_architecture(self) -> RandomFrozenBlockConfig:
        if self.final_norm == "pretrained":
            raise ValueError(
                "final_norm='pretrained' loads the LLM's norm weight; a random-init block has "
                "none: use 'unit' or 'none'"
            )
        check_one_architecture(self.source, self.llm_config)
        return self

    def architecture(self) -> PretrainedConfig:
        return architecture_of(self.source, self.llm_config)


class RandomTrainedBlockConfig(RandomFrozenBlockConfig):
    """Kind ``random_trained``: random-init LLM layers trained end to end (the paper's control,
    Appendix B.2: is it the pretrained weights, or just more layers?)."""

    trainable: ClassVar[bool] = True


def _init_like_llm(layer: nn.Module, config: PretrainedConfig) -> None:
    """Random init as the LLM's own pretraining init: N(0, initializer_range) linears, zero biases."""
    std = getattr(config, "initializer_range", 0.02) or getattr(config, "init_std", 0.02)
    for module in layer.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


@register_block("random_trained", RandomTrainedBlockConfig)
@register_block("random_frozen", RandomFrozenBlockConfig)
@register_block("llm_block_finetuned", FinetunedBlockConfig)
@register_block("llm_block", LLMBlockConfig)
class FrozenLLMBlock(nn.Module):
    """One or more LLM decoder layers between two trainable linear adapters.

    The module of every LLM-layer kind: ``llm_block`` (pretrained, frozen: the paper's method, hence the
    name, kept as the public interface), ``random_frozen`` (frozen), and the two kinds whose layers *train*,
    ``llm_block_finetuned`` and ``random_trained`` (the paper's controls). Whether the layers train is the
    kind's (``cfg.trainable``, a class constant of its config), never the class name's.

    ``forward(x, padding_mask=None, **context)``: ``x`` is [B, N, visual_dim];
    ``padding_mask`` is [B, N] bool with True marking padding (as PyTorch's
    ``key_padding_mask``). Padded tokens are zeroed on the way in, never attended to, and
    output as zeros. Context (e.g. ``modality_ids``) is accepted and not used.
    """

    def __init__(self, cfg: LLMBlockConfig):
        super().__init__()
        if not isinstance(cfg, LLMBlockConfig):
            raise ConfigError(f"FrozenLLMBlock takes an LLMBlockConfig (or a subclass), got {type(cfg).__name__}")
        self.cfg = cfg
        self.kind = cfg.kind
        config = prepare_config(cfg.architecture(), cfg.attn_implementation)
        self.spec: ArchitectureSpec = spec_for_config(config)
        self.llm_config = config
        self.layer_indices = resolve_layers(cfg.layers, config.num_hidden_layers)
        self.visual_dim = cfg.visual_dim
        self.out_dim = cfg.out_dim or cfg.visual_dim
        self.hidden_size = config.hidden_size
        self.compute_dtype = resolve_dtype(cfg.dtype)
        self.frozen = not cfg.trainable
        self.gradient_checkpointing = cfg.gradient_checkpointing
        self.source_fingerprint: str | None = None
        self.frozen_sha256: str | None = None  # SHA-256 of the pretrained layer tensors as stored in the source

        self.adapter_in = nn.Linear(cfg.visual_dim, config.hidden_size, bias=cfg.adapter_bias)
        self.adapter_out = nn.Linear(config.hidden_size, self.out_dim, bias=cfg.adapter_bias)
        self.layers, self.final_norm = self._build_llm_part(cfg, config)
        for module in (self.layers, self.final_norm):
            module.to(self.compute_dtype)  # a no-op for loaded weights: they arrive in compute_dtype
            module.requires_grad_(cfg.trainable)
        if cfg.final_norm == "unit":
            self.final_norm.requires_grad_(False)  # the official code's never-loaded weight stays 1
        for layer in self.layers:
            # torch types a submodule as Tensor | Module
            layer.self_attn.is_causal = False  # type: ignore[union-attr]  # SDPA would otherwise run causal when no mask is given
        self.train(False)

    def _build_llm_part(self, cfg: LLMBlockConfig, config: PretrainedConfig) -> tuple[nn.ModuleList, nn.Module]:
        norm_wanted = cfg.final_norm != "none" and self.spec.has_final_norm(config)
        if not cfg.pretrained:
            layers = [self.spec.build_layer(config, i) for i in self.layer_indices]
            for layer in layers:
                _init_like_llm(layer, config)
            norm: nn.Module = self.spec.build_final_norm(config) if norm_wanted else nn.Identity()
            return nn.ModuleList(layers), norm
        want_pretrained_norm = cfg.final_norm == "pretrained" and norm_wanted
        assert cfg.source is not None  # _needs_source: a pretrained block has one
        weights = load_layer_weights(
            cfg.source,
            self.layer_indices,
            want_pretrained_norm,
            config,
            self.compute_dtype,
            range_requests=cfg.hub_range_requests,
        )
        with torch.device("meta"):
            layers = [self.spec.build_layer(config, i) for i in self.layer_indices]
        for layer, i in zip(layers, self.layer_indices):
            layer.load_state_dict(weights.layers.pop(i), assign=True, strict=True)  # no copy: already cast
        if not norm_wanted:
            norm = nn.Identity()
        elif want_pretrained_norm:
            with torch.device("meta"):
                norm = self.spec.build_final_norm(config)
            assert weights.final_norm is not None  # asked for with want_pretrained_norm
            norm.load_state_dict(weights.final_norm, assign=True)
        else:
            norm = self.spec.build_final_norm(config)
        self.source_fingerprint = weights.fingerprint
        self.frozen_sha256 = weights.sha256
        return nn.ModuleList(layers), norm

    # -- transformers' conventions (mmllm.blocks.pretrained)
    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        /,
        *,
        layers: Any = None,
        visual_dim: int | None = None,
        dtype: str | torch.dtype | None = None,
        kind: str | None = None,
        **options: Any,
    ) -> FrozenLLMBlock:
        """The block from an LLM ``source`` or from a folder written by :meth:`save_pretrained`.

        ``source``: an embedded asset name (``smollm2-135m``), a hub id found in the local Hugging
        Face cache (``HuggingFaceTB/SmolLM2-135M``; never downloaded), a Hugging Face folder, a
        ``.gguf`` file or a LLaMA ``params.json`` folder: then ``visual_dim`` is required and
        ``layers`` (default ``"last"``), ``dtype`` (a ``torch.dtype`` or ``"auto"``, ``"bf16"``,
        ``"bfloat16"``, ``"float32"``, ...), ``kind`` (default ``llm_block``) and the other
        ``model.llm_block`` options apply. A saved folder re-opens the block with its adapters,
        after checking the frozen weights' SHA-256 (``dtype=`` may change, ``source=`` re-points the
        frozen weights, e.g. to a moved folder).
        Built through :func:`build_block`, as a YAML ``model.llm_block`` section is.
        """
        from .pretrained import from_pretrained

        return from_pretrained(source, layers=layers, visual_dim=visual_dim, dtype=dtype, kind=kind, **options)

    def save_pretrained(self, directory: str | os.PathLike, include_frozen: bool = False) -> Path:
        """Write the block's options, its trainable adapters (safetensors) and the frozen weights'
        source and SHA-256 to ``directory``; ``include_frozen=True`` also copies the frozen layers."""
        from .pretrained import save_pretrained

        return save_pretrained(self, directory, include_frozen=include_frozen)

    # -- frozen means frozen: eval mode (no dropout) even when the model trains
    def train(self, mode: bool = True) -> FrozenLLMBlock:
        super().train(mode)
        if self.frozen:
            self.layers.eval()
            self.final_norm.eval()
        return self

    def frozen_state_keys(self) -> list[str]:
        """state_dict keys a checkpoint may omit because rebuilding the block restores them:
        pretrained frozen weights (reloaded from the source) and the constant unit norm."""
        reloadable = self.frozen and self.cfg.pretrained
        keys = []
        if reloadable:
            keys += ["layers." + k for k in self.layers.state_dict()]
        if reloadable or self.cfg.final_norm == "unit":
            keys += ["final_norm." + k for k in self.final_norm.state_dict()]
        return keys

    def _run_layer(self, layer: nn.Module, h: torch.Tensor, mask, rotation) -> torch.Tensor:
        kwargs = {"attention_mask": mask}
        if self.spec.rotary:
            kwargs["position_embeddings"] = rotation
        out = layer(h, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None, **context: Any) -> torch.Tensor:
        check_tokens(x, padding_mask, self.visual_dim, self.kind)
        batch, length, _ = x.shape
        # the dtype the layers hold now: DeepSpeed bf16 casts a frozen fp32 block too
        dtype = next(self.layers.parameters()).dtype
        h = self.adapter_in(zero_padded(x, padding_mask)).to(dtype)
        mask = additive_padding_mask(padding_mask, dtype) if padding_mask is not None else None
        rotation = None
        if self.spec.rotary:
            rotation = identity_rotation(batch, length, self.spec.head_dim(self.llm_config), dtype, x.device)
        for layer in self.layers:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                h = checkpoint(self._run_layer, layer, h, mask, rotation, use_reentrant=False)
            else:
                h = self._run_layer(layer, h, mask, rotation)
        h = self.final_norm(h)
        out = self.adapter_out(h.to(self.adapter_out.weight.dtype))
        if padding_mask is not None:
            out = out.masked_fill(padding_mask[..., None], 0.0)
        return out

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind}, arch={self.spec.name}, layers={self.layer_indices}, llm_dim={self.hidden_size}, "
            f"dtype={self.compute_dtype}, final_norm={self.cfg.final_norm}"
        )
