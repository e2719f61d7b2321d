"""mmllm: a frozen transformer block of a pretrained LLM as a visual encoder layer."""

from .architectures import ARCHITECTURES, supported_model_types
from .blocks import (
    AdapterMLP,
    FrozenLLMBlock,
    LLMBlockConfig,
    NoBlock,
    block_kinds,
    build_block,
    build_visual_llm_layer,
    register_block,
)
from .errors import (
    AssetMissingError,
    CheckpointError,
    ConfigError,
    DataError,
    LayerIndexError,
    MMLLMError,
    UnsupportedArchitectureError,
)
from .factory import create_model_and_transforms
from .layer_selection import resolve_layers
from .loading import load_extra_tensors, load_layer_weights, read_config
from .precision import resolve_dtype, resolve_precision

__all__ = [
    "ARCHITECTURES",
    "AdapterMLP",
    "AssetMissingError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "FrozenLLMBlock",
    "LLMBlockConfig",
    "LayerIndexError",
    "MMLLMError",
    "NoBlock",
    "UnsupportedArchitectureError",
    "block_kinds",
    "build_block",
    "build_visual_llm_layer",
    "create_model_and_transforms",
    "load_extra_tensors",
    "load_layer_weights",
    "read_config",
    "register_block",
    "resolve_dtype",
    "resolve_layers",
    "resolve_precision",
    "supported_model_types",
]
__version__ = "0.1.0"
