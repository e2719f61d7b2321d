"""mmllm: a frozen transformer block of a pretrained LLM as a visual encoder layer."""
from .architectures import ARCHITECTURES, supported_model_types
from .block import AdapterMLP, FrozenLLMBlock, LLMBlockConfig, NoBlock, build_visual_llm_layer
from .errors import (
    AssetMissingError,
    CheckpointError,
    ConfigError,
    DataError,
    LayerIndexError,
    MMLLMError,
    UnsupportedArchitectureError,
)
from .layer_selection import resolve_layers
from .loading import load_layer_weights, read_config

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
    "build_visual_llm_layer",
    "load_layer_weights",
    "read_config",
    "resolve_layers",
    "supported_model_types",
]
__version__ = "0.1.0"
