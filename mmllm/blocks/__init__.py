"""Blocks that sit between a host model's visual tokens: the frozen LLM block and its controls.

The contract every block kind keeps
-----------------------------------
``block = build_block(options, visual_dim)`` where ``options`` is a mapping (a YAML
``model.llm_block`` section) with ``kind`` and that kind's own options, and ``visual_dim``
is the width of the tokens the host passes in. Then::

    out = block(x, padding_mask=None, **context)

* ``x``: [B, N, visual_dim] float, B >= 1 and N >= 1 (an empty batch is a DataError).
* ``padding_mask``: None or [B, N] bool, True = padding (PyTorch's ``key_padding_mask``).
  Padded tokens are zeroed before the block (so a NaN in padding cannot reach real tokens),
  never attended to, and come out as zeros (``none`` passes ``x`` through unchanged).
* ``context``: optional per-token extras, e.g. ``modality_ids`` ([B, N] long). A kind that
  does not use a context entry ignores it, so hosts can always pass what they have.
* ``out``: [B, N, out_dim] (``out_dim`` defaults to ``visual_dim``), in the adapters' dtype.

Options are validated per kind: an option that means nothing for the kind is a ConfigError
naming the kind and the nearest known option (``kind: none`` alone ignores other kinds'
options, so ``kind=none`` switches any block config off). ``visual_dim`` must be a
positive int.

Kinds (``block_kinds()``): ``llm_block`` (the frozen pretrained block, the paper's method),
``llm_block_finetuned``, ``random_trained`` (the paper's control, Appendix B.2),
``random_frozen``, ``mlp`` (the paper's MLP control, Sec. 5.1) and ``none``. A new kind is a
config class (subclass :class:`BlockConfig`) and a builder registered with
``@register_block("name", NameConfig)`` in a module of this package (found on first use)
or of a package advertising it in the ``mmllm.blocks`` entry-point group.
"""

from .controls import AdapterMLP, MLPBlockConfig, NoBlock, NoBlockConfig
from .llm_block import (
    FinetunedBlockConfig,
    FrozenLLMBlock,
    LLMBlockConfig,
    RandomFrozenBlockConfig,
    RandomTrainedBlockConfig,
)
from .registry import (
    BlockConfig,
    BlockOptions,
    block_config_class,
    block_kinds,
    build_block,
    is_block_options_field,
    parse_block_options,
    register_block,
)
from .tokens import additive_padding_mask, check_tokens, zero_padded

build_visual_llm_layer = build_block  # the name projects already call

__all__ = [
    "AdapterMLP",
    "BlockConfig",
    "BlockOptions",
    "FinetunedBlockConfig",
    "FrozenLLMBlock",
    "LLMBlockConfig",
    "MLPBlockConfig",
    "NoBlock",
    "NoBlockConfig",
    "RandomFrozenBlockConfig",
    "RandomTrainedBlockConfig",
    "additive_padding_mask",
    "block_config_class",
    "block_kinds",
    "build_block",
    "build_visual_llm_layer",
    "check_tokens",
    "is_block_options_field",
    "parse_block_options",
    "register_block",
    "zero_padded",
]
