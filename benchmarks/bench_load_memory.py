"""Peak RSS of taking one layer from a 32-layer LLaMA checkpoint: the official code's way
(``torch.load`` of the whole ``consolidated.00.pth``) vs mmllm (only the layer's tensors,
from the same .pth via mmap and from a safetensors folder). Each variant runs in its own
process; its peak RSS (VmHWM, reset after imports) minus its RSS after imports is reported.

    python benchmarks/bench_load_memory.py [--dim 1024] [--layers 32]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil


def build_checkpoints(root: Path, dim: int, layers: int) -> None:
    import torch
    from transformers import LlamaConfig

    hidden = 4 * dim * 2 // 3
    hidden = 256 * ((hidden + 255) // 256)
    heads = dim // 128
    meta = root / "meta"
    meta.mkdir()
    (meta / "params.json").write_text(json.dumps({"dim": dim, "n_layers": layers, "n_heads": heads, "norm_eps": 1e-6, "vocab_size": 32000, "multiple_of": 256}))
    g = torch.Generator().manual_seed(0)
    state = {"tok_embeddings.weight": torch.randn(32000, dim, generator=g, dtype=torch.float32).half(), "norm.weight": torch.ones(dim, dtype=torch.float16), "output.weight": torch.randn(32000, dim, generator=g).half()}
    hf = {}
    for i in range(layers):
        shapes = {"attention.wq.weight": (dim, dim), "attention.wk.weight": (dim, dim), "attention.wv.weight": (dim, dim), "attention.wo.weight": (dim, dim), "feed_forward.w1.weight": (hidden, dim), "feed_forward.w2.weight": (dim, hidden), "feed_forward.w3.weight": (hidden, dim), "attention_norm.weight": (dim,), "ffn_norm.weight": (dim,)}
        for name, shape in shapes.items():
            state[f"layers.{i}.{name}"] = (torch.randn(*shape, generator=g) * 0.02).half()
    torch.save(state, meta / "consolidated.00.pth")
    # same weights as a Hugging Face safetensors folder
    from safetensors.torch import save_file

    rename = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj", "feed_forward.w3": "mlp.up_proj", "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    for k, v in state.items():
        if k.startswith("layers."):
            _, i, rest = k.split(".", 2)
            mod = rest.rsplit(".", 1)[0]
            hf[f"model.layers.{i}.{rename[mod]}.weight"] = v
    hf["model.norm.weight"], hf["model.embed_tokens.weight"], hf["lm_head.weight"] = state["norm.weight"], state["tok_embeddings.weight"], state["output.weight"]
    (root / "hf").mkdir()
    save_file(hf, root / "hf" / "model.safetensors")
    LlamaConfig(hidden_size=dim, intermediate_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads, vocab_size=32000).save_pretrained(root / "hf")


def child(mode: str, root: Path) -> None:
    import torch

    import mmllm  # noqa: F401  (imports counted in the baseline)

    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM) after imports
    base = psutil.Process().memory_info().rss
    if mode == "official":
        # what the official code does: load the whole file, then keep one layer
        state = torch.load(root / "meta" / "consolidated.00.pth", map_location="cpu")
        layer = {k: v.float() for k, v in state.items() if k.startswith("layers.31.")}
        del state
    else:
        from mmllm import FrozenLLMBlock, LLMBlockConfig

        source = root / ("meta" if mode == "mmllm_pth" else "hf")
        layer = FrozenLLMBlock(LLMBlockConfig(visual_dim=384, source=str(source), layers=31, dtype="float32"))
    # ru_maxrss would be wrong here: Linux carries it over from the parent across fork+exec
    status = Path("/proc/self/status").read_text()
    peak = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) * 1024
    print(json.dumps({"mode": mode, "peak_above_baseline_mb": (peak - base) / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--child", nargs=2)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_checkpoints(root, args.dim, args.layers)
        size = (root / "meta" / "consolidated.00.pth").stat().st_size / 2**20
        print(f"checkpoint: {args.layers} layers, dim {args.dim}, {size:.0f} MB fp16; loading layer 31")
        results = {}
        for mode in ("official", "mmllm_pth", "mmllm_safetensors"):
            out = subprocess.run([sys.executable, __file__, "--child", mode, str(root)], capture_output=True, text=True, check=True)
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])["peak_above_baseline_mb"]
        for mode, mb in results.items():
            print(f"{mode:20s} peak RSS above baseline: {mb:8.1f} MB   ratio official/this: {results['official'] / mb:6.1f}x")


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    main()
