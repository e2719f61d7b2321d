"""The paper's controls without an LLM block: ``mlp`` (equal trainable size) and ``none`` (identity)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import field_validator, model_validator
from torch import nn
from transformers import PretrainedConfig

from .llm_block import architecture_of, check_one_architecture, llm_config_replaces_source
from .registry import BlockConfig, PositiveInt, register_block
from .tokens import check_tokens, zero_padded


class MLPBlockConfig(BlockConfig):
    """Kind ``mlp``: the LLM's width comes from ``source`` (only its config is read) or ``llm_config``."""

    out_dim: PositiveInt | None = None
    source: str | None = "smollm2-135m"
    llm_config: dict[str, Any] | None = None
    adapter_bias: bool = False

    @field_validator("source", mode="before")
    @classmethod
    def _source_text(cls, value: Any) -> Any:
        return str(value) if hasattr(value, "__fspath__") else value

    @model_validator(mode="before")
    @classmethod
    def _llm_config_replaces_source(cls, data: Any) -> Any:
        return llm_config_replaces_source(data)

    @model_validator(mode="after")
    def _one_architecture(self) -> MLPBlockConfig:
        check_one_architecture(self.source, self.llm_config)
        return self

    def architecture(self) -> PretrainedConfig:
        return architecture_of(self.source, self.llm_config)


class AdapterMLP(nn.Module):
    """The paper's MLP control (Sec. 5.1): adapter_in -> GELU -> LayerNorm -> adapter_out, no LLM block.

    Its adapters have the block's shapes, so its trainable size equals the frozen block's
    (whose only trainable parameters are its two adapters) plus the LayerNorm's 2 * llm_dim
    (weight and bias): as equal as this definition allows. A gain of the block over this
    control is then not explained by the adapters' extra capacity.
    """

    def __init__(self, visual_dim: int, hidden_size: int, out_dim: int | None = None, bias: bool = False):
        super().__init__()
        self.kind = "mlp"
        self.visual_dim = visual_dim
        self.adapter_in = nn.Linear(visual_dim, hidden_size, bias=bias)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(hidden_size)
        self.adapter_out = nn.Linear(hidden_size, out_dim or visual_dim, bias=bias)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None, **context: Any) -> torch.Tensor:
        check_tokens(x, padding_mask, self.visual_dim, self.kind)
        out = self.adapter_out(self.norm(self.act(self.adapter_in(zero_padded(x, padding_mask)))))
        if padding_mask is not None:
            out = out.masked_fill(padding_mask[..., None], 0.0)
        return out


@register_block("mlp", MLPBlockConfig, ignores_foreign_options=True)
def build_mlp(cfg: MLPBlockConfig) -> AdapterMLP:
    return AdapterMLP(cfg.visual_dim, cfg.architecture().hidden_size, cfg.out_dim, cfg.adapter_bias)


class NoBlockConfig(BlockConfig):
    """Kind ``none``: no block. Options of other kinds are accepted and ignored, so that
    ``model.llm_block.kind=none`` switches any block config off."""


class NoBlock(nn.Module):
    """Control: no block at all (the baseline), the identity with the block's call signature. It keeps the
    contract of every kind: padded tokens come out as zeros (a NaN in padding is not passed on)."""

    def __init__(self, visual_dim: int | None = None):
        super().__init__()
        self.kind = "none"
        self.visual_dim = visual_dim

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None, **context: Any) -> torch.Tensor:
        check_tokens(x, padding_mask, self.visual_dim, self.kind)
        return zero_padded(x, padding_mask)


@register_block("none", NoBlockConfig, ignores_foreign_options=True)
def build_none(cfg: NoBlockConfig) -> NoBlock:
    return NoBlock(cfg.visual_dim)
