"""The frozen LLM transformer block as a visual encoder layer (Pang et al., ICLR 2024).

    visual tokens --Linear(visual_dim, llm_dim)--> LLM decoder layer(s) --> norm
                  --Linear(llm_dim, out_dim)--> visual tokens

The LLM layers are transformers' own decoder-layer modules with two changes the
paper makes: no positional information (an identity rotary rotation; OPT's learned
positions live in its decoder and are simply not added) and no causal mask (every
token attends to every non-padded token).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from typing import Any, Mapping

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoConfig, PretrainedConfig

from .architectures import ArchitectureSpec, identity_rotation, prepare_config, spec_for_config
from .errors import ConfigError
from .layer_selection import LayerSpec, resolve_layers
from .loading import load_layer_weights, read_config

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FINAL_NORMS = ("unit", "pretrained", "none")


@dataclass
class LLMBlockConfig:
    """Everything that defines a visual LLM block; YAML ``model.llm_block`` maps onto it.

    ``final_norm`` defaults to ``"unit"``: the official code applies the LLM's final
    RMSNorm class after the block but never loads its weight, so it stays 1 — a
    parameter-free normalisation of the block's residual stream (whose late-layer
    outliers are large) before the trainable output adapter. ``"pretrained"`` loads
    the LLM's final-norm weight instead; ``"none"`` skips it.
    """

    visual_dim: int
    out_dim: int | None = None
    source: str | None = "smollm2-135m"
    layers: LayerSpec = "last"
    init: str = "pretrained"  # "pretrained" | "random" (paper control)
    frozen: bool = True  # False = fine-tune the block (paper control)
    dtype: str = "bfloat16"
    attn_implementation: str = "sdpa"
    final_norm: str = "unit"
    gradient_checkpointing: bool = False
    llm_config: dict[str, Any] | None = None  # an architecture without weights (random init only)
    adapter_bias: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LLMBlockConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown llm_block option(s) {sorted(unknown)}; known: {sorted(known)}")
        if "visual_dim" not in data:
            raise ConfigError("llm_block needs visual_dim")
        cfg = cls(**dict(data))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.init not in ("pretrained", "random"):
            raise ConfigError(f"init must be 'pretrained' or 'random', got {self.init!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.final_norm not in FINAL_NORMS:
            raise ConfigError(f"final_norm must be one of {FINAL_NORMS}, got {self.final_norm!r}")
        if self.init == "pretrained" and self.source is None:
            raise ConfigError("init='pretrained' needs a source")
        if self.init == "random" and self.final_norm == "pretrained":
            raise ConfigError("final_norm='pretrained' needs init='pretrained'")
        if self.source is None and self.llm_config is None:
            raise ConfigError("give a source or an llm_config")
        if self.visual_dim <= 0 or (self.out_dim is not None and self.out_dim <= 0):
            raise ConfigError("visual_dim and out_dim must be positive")


def additive_padding_mask(padding_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, N] bool (True = padding) -> [B, 1, 1, N] float: 0 keeps a key, dtype-min drops it."""
    mask = torch.zeros(padding_mask.shape, dtype=dtype, device=padding_mask.device)
    mask = mask.masked_fill(padding_mask, torch.finfo(dtype).min)
    return mask[:, None, None, :]


def _llm_config(cfg: LLMBlockConfig) -> PretrainedConfig:
    if cfg.llm_config is not None:
        data = dict(cfg.llm_config)
        model_type = data.pop("model_type", None)
        if model_type is None:
            raise ConfigError("llm_config needs a model_type")
        return AutoConfig.for_model(model_type, **data)
    return read_config(cfg.source)


def _init_like_llm(layer: nn.Module, config: PretrainedConfig) -> None:
    """Random init as the LLM's own pretraining init: N(0, initializer_range) linears, zero biases."""
    std = getattr(config, "initializer_range", 0.02) or getattr(config, "init_std", 0.02)
    for module in layer.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class FrozenLLMBlock(nn.Module):
    """One or more LLM decoder layers between two trainable linear adapters.

    ``forward(x, padding_mask)``: ``x`` is [B, N, visual_dim]; ``padding_mask`` is
    [B, N] bool with True marking padding (as PyTorch's ``key_padding_mask``).
    Padded positions are output as zeros and never attended to.
    """

    def __init__(self, cfg: LLMBlockConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        config = prepare_config(_llm_config(cfg), cfg.attn_implementation)
        self.spec: ArchitectureSpec = spec_for_config(config)
        self.llm_config = config
        self.layer_indices = resolve_layers(cfg.layers, config.num_hidden_layers)
        self.visual_dim = cfg.visual_dim
        self.out_dim = cfg.out_dim or cfg.visual_dim
        self.hidden_size = config.hidden_size
        self.compute_dtype = DTYPES[cfg.dtype]
        self.frozen = cfg.frozen
        self.gradient_checkpointing = cfg.gradient_checkpointing
        self.source_fingerprint: str | None = None

        self.adapter_in = nn.Linear(cfg.visual_dim, config.hidden_size, bias=cfg.adapter_bias)
        self.adapter_out = nn.Linear(config.hidden_size, self.out_dim, bias=cfg.adapter_bias)
        self.layers, self.final_norm = self._build_llm_part(cfg, config)
        for module in (self.layers, self.final_norm):
            module.to(self.compute_dtype)
            module.requires_grad_(not cfg.frozen)
        if cfg.final_norm == "unit":
            self.final_norm.requires_grad_(False)  # the official code's never-loaded weight stays 1
        for layer in self.layers:
            layer.self_attn.is_causal = False  # SDPA would otherwise run causal when no mask is given
        self.train(False)

    def _build_llm_part(self, cfg: LLMBlockConfig, config: PretrainedConfig) -> tuple[nn.ModuleList, nn.Module]:
        norm_wanted = cfg.final_norm != "none" and self.spec.has_final_norm(config)
        if cfg.init == "random":
            layers = [self.spec.build_layer(config, i) for i in self.layer_indices]
            for layer in layers:
                _init_like_llm(layer, config)
            norm = self.spec.build_final_norm(config) if norm_wanted else nn.Identity()
            return nn.ModuleList(layers), norm
        want_pretrained_norm = cfg.final_norm == "pretrained"
        weights = load_layer_weights(cfg.source, self.layer_indices, want_pretrained_norm and norm_wanted, config)
        with torch.device("meta"):
            layers = [self.spec.build_layer(config, i) for i in self.layer_indices]
        for layer, i in zip(layers, self.layer_indices):
            state = {k: v.to(self.compute_dtype, copy=True) for k, v in weights.layers[i].items()}
            layer.load_state_dict(state, assign=True, strict=True)
        if not norm_wanted:
            norm: nn.Module = nn.Identity()
        elif want_pretrained_norm:
            with torch.device("meta"):
                norm = self.spec.build_final_norm(config)
            norm.load_state_dict({k: v.clone() for k, v in weights.final_norm.items()}, assign=True)
        else:
            norm = self.spec.build_final_norm(config)
        self.source_fingerprint = _fingerprint(weights.layers)
        return nn.ModuleList(layers), norm

    # -- frozen means frozen: eval mode (no dropout) even when the model trains
    def train(self, mode: bool = True) -> "FrozenLLMBlock":
        super().train(mode)
        if self.frozen:
            self.layers.eval()
            self.final_norm.eval()
        return self

    def frozen_state_keys(self) -> list[str]:
        """state_dict keys a checkpoint may omit because rebuilding the block restores them:
        pretrained frozen weights (reloaded from the source) and the constant unit norm."""
        reloadable = self.frozen and self.cfg.init == "pretrained"
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

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.visual_dim:
            raise ValueError(f"expected visual tokens [B, N, {self.visual_dim}], got {tuple(x.shape)}")
        if padding_mask is not None:
            if padding_mask.shape != x.shape[:2] or padding_mask.dtype != torch.bool:
                raise ValueError(
                    f"padding_mask must be bool [B, N] = {tuple(x.shape[:2])}, got "
                    f"{padding_mask.dtype} {tuple(padding_mask.shape)}"
                )
        batch, length, _ = x.shape
        h = self.adapter_in(x).to(self.compute_dtype)
        mask = additive_padding_mask(padding_mask, self.compute_dtype) if padding_mask is not None else None
        rotation = None
        if self.spec.rotary:
            rotation = identity_rotation(batch, length, self.spec.head_dim(self.llm_config), self.compute_dtype, x.device)
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
            f"arch={self.spec.name}, layers={self.layer_indices}, llm_dim={self.hidden_size}, "
            f"frozen={self.frozen}, init={self.cfg.init}, dtype={self.cfg.dtype}, final_norm={self.cfg.final_norm}"
        )


def _fingerprint(layers: dict[int, dict[str, torch.Tensor]]) -> str:
    """Short hash of layer shapes and a few values: tells a checkpoint which weights it was trained with."""
    digest = hashlib.sha256()
    for i in sorted(layers):
        for name in sorted(layers[i]):
            t = layers[i][name]
            digest.update(f"{i}.{name}{tuple(t.shape)}".encode())
            digest.update(t.flatten()[:16].float().numpy().tobytes())
    return digest.hexdigest()[:16]


class AdapterMLP(nn.Module):
    """Control: the two adapters with a GELU between them and no LLM block.

    Same trainable parameter count as :class:`FrozenLLMBlock`, so a gain of the block
    over this control is not explained by the adapters' extra capacity.
    """

    def __init__(self, visual_dim: int, hidden_size: int, out_dim: int | None = None, bias: bool = False):
        super().__init__()
        self.visual_dim = visual_dim
        self.adapter_in = nn.Linear(visual_dim, hidden_size, bias=bias)
        self.act = nn.GELU()
        self.adapter_out = nn.Linear(hidden_size, out_dim or visual_dim, bias=bias)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        out = self.adapter_out(self.act(self.adapter_in(x)))
        if padding_mask is not None:
            out = out.masked_fill(padding_mask[..., None], 0.0)
        return out


class NoBlock(nn.Module):
    """Control: no block at all (the baseline). Same call signature as the block."""

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return x


def build_visual_llm_layer(options: Mapping[str, Any] | None, visual_dim: int) -> nn.Module:
    """Factory from a config mapping: ``kind`` is ``llm_block`` (default), ``mlp`` or ``none``.

    ``mlp`` takes the LLM's hidden size from the same ``source``/``llm_config`` so it
    matches the block's trainable size without loading any weights.
    """
    options = dict(options or {"kind": "none"})
    kind = options.pop("kind", "llm_block")
    options.setdefault("visual_dim", visual_dim)
    if kind == "none":
        return NoBlock()
    cfg = LLMBlockConfig.from_dict(options)
    if kind == "llm_block":
        return FrozenLLMBlock(cfg)
    if kind == "mlp":
        hidden = _llm_config(cfg).hidden_size
        return AdapterMLP(cfg.visual_dim, hidden, cfg.out_dim, cfg.adapter_bias)
    raise ConfigError(f"llm_block kind must be 'llm_block', 'mlp' or 'none', got {kind!r}")
