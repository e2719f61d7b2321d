"""Tiny random checkpoints of each supported family, saved by transformers' own model classes."""

from pathlib import Path

import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

COMMON = dict(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4)


def random_llama_block() -> dict:
    """Block options of a frozen random-init tiny LLaMA (2 layers, width 32, GQA 4/2): no weights to read, any
    host width. A fresh dict each call, so a test may change it."""
    return {
        "kind": "random_frozen",
        "dtype": "float32",
        "llm_config": {
            "model_type": "llama",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "num_hidden_layers": 2,
        },
    }


def tiny_config(arch: str, **overrides):
    if arch == "llama":
        return LlamaConfig(**{**COMMON, "num_key_value_heads": 2, **overrides})
    if arch == "qwen2":
        return Qwen2Config(**{**COMMON, "num_key_value_heads": 2, **overrides})
    if arch == "gemma3":
        return Gemma3TextConfig(
            **{
                **COMMON,
                "num_key_value_heads": 2,
                "head_dim": 16,
                "query_pre_attn_scalar": 20,
                "sliding_window": 3,
                **overrides,
            }
        )
    if arch == "opt":
        kw = {k: v for k, v in COMMON.items() if k != "intermediate_size"}
        return OPTConfig(**{**kw, "ffn_dim": 96, "word_embed_proj_dim": 48, "max_position_embeddings": 64, **overrides})
    raise ValueError(arch)


MODEL_CLASSES = {
    "llama": LlamaForCausalLM,
    "qwen2": Qwen2ForCausalLM,
    "gemma3": Gemma3ForCausalLM,
    "opt": OPTForCausalLM,
}
ARCHS = tuple(MODEL_CLASSES)


def tiny_model(arch: str, seed: int = 0, **overrides):
    """A model whose every tensor (norms and biases too) is random, so no weight goes untested."""
    torch.manual_seed(seed)
    model = MODEL_CLASSES[arch](tiny_config(arch, **overrides))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_((0.0 if arch == "gemma3" else 1.0) + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0, 0.1)
    return model.eval()


def save_tiny(arch: str, folder: Path, seed: int = 0, **save_kwargs):
    model = tiny_model(arch, seed)
    model.save_pretrained(str(folder), **save_kwargs)
    return model


def layer_state(model, arch: str, index: int) -> dict:
    prefix = f"model.decoder.layers.{index}." if arch == "opt" else f"model.layers.{index}."
    return {k[len(prefix) :]: v for k, v in model.state_dict().items() if k.startswith(prefix)}


def final_norm_state(model, arch: str) -> dict:
    prefix = "model.decoder.final_layer_norm." if arch == "opt" else "model.norm."
    return {k[len(prefix) :]: v for k, v in model.state_dict().items() if k.startswith(prefix)}
