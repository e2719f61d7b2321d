"""Kept so that ``from mmllm.block import ...`` keeps working: the blocks live in :mod:`mmllm.blocks`."""

from .blocks import (  # noqa: F401
    AdapterMLP,
    FrozenLLMBlock,
    LLMBlockConfig,
    NoBlock,
    additive_padding_mask,
    build_block,
    build_visual_llm_layer,
)
