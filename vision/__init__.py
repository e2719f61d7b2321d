"""Pure-vision tasks that use mmllm's frozen LLM block (image classification first)."""
from .vit_llm import ViTLLMClassifier, create_vit_llm

__all__ = ["ViTLLMClassifier", "create_vit_llm"]
