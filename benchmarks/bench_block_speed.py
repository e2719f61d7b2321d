"""Forward+backward time of one frozen LLM block on visual tokens: the official code's
setting (fp32 weights, eager attention) vs bf16 weights and SDPA attention (all four
combinations), measured side by side in one run; the one ``dtype: auto`` picks here is marked.

    python benchmarks/bench_block_speed.py [--source smollm2-135m] [--batch 8] [--tokens 197]

``--source random:HIDDEN`` benchmarks a random LLaMA-shaped layer of that width instead.
Uses CUDA when available.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mmllm import FrozenLLMBlock, LLMBlockConfig, resolve_dtype
from mmllm.blocks import RandomFrozenBlockConfig


def block_config(source: str, dtype: str, attn: str) -> LLMBlockConfig:
    if source.startswith("random:"):
        hidden = int(source.split(":")[1])
        llm = {
            "model_type": "llama",
            "hidden_size": hidden,
            "intermediate_size": hidden * 8 // 3 // 64 * 64,
            "num_attention_heads": hidden // 128,
            "num_key_value_heads": hidden // 128,
            "num_hidden_layers": 1,
        }
        return RandomFrozenBlockConfig(visual_dim=384, llm_config=llm, dtype=dtype, attn_implementation=attn)
    return LLMBlockConfig(visual_dim=384, source=source, dtype=dtype, attn_implementation=attn)


def time_block(block: FrozenLLMBlock, x: torch.Tensor, repeats: int) -> float:
    def step():
        x.grad = None
        block(x).float().square().mean().backward()
        if x.is_cuda:
            torch.cuda.synchronize()

    step()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=197)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; source {args.source}; batch {args.batch} x {args.tokens} tokens")
    x = torch.randn(args.batch, args.tokens, 384, device=device, requires_grad=True)
    results = {}
    for dtype, attn in (("float32", "eager"), ("float32", "sdpa"), ("bfloat16", "eager"), ("bfloat16", "sdpa")):
        torch.manual_seed(0)
        block = FrozenLLMBlock(block_config(args.source, dtype, attn)).to(device)
        results[(dtype, attn)] = time_block(block, x, args.repeats)
    base = results[("float32", "eager")]
    default = (str(resolve_dtype("auto", device)).removeprefix("torch."), "sdpa")  # dtype: auto, as measured
    for (dtype, attn), sec in results.items():
        tag = " (official)" if (dtype, attn) == ("float32", "eager") else ""
        tag += " (mmllm default: dtype auto)" if (dtype, attn) == default else ""
        print(f"{dtype:9s} {attn:5s}: {sec * 1000:8.1f} ms   speed-up vs fp32 eager: {base / sec:5.2f}x{tag}")


if __name__ == "__main__":
    main()
