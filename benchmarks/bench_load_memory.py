"""Peak RAM of taking one layer from a 32-layer LLaMA checkpoint, side by side in one run: the
official code's way (``torch.load`` of the whole ``consolidated.00.pth``, then the layer in the
compute dtype) vs mmllm (only the layer's tensors, from the same .pth via mmap and from a
safetensors folder), for an fp32 and an fp16 checkpoint, each loaded in its own dtype and the
fp16 one also cast (to fp32, as on a CPU where fp32 is faster, and to bf16, as on a GPU).

Each variant runs in its own process; its peak RSS (VmHWM, reset after imports, transformers'
LLaMA modeling code included) minus its RSS after imports is reported. mmllm's variants touch every weight after loading (as a forward
would), so weights that stay memory-mapped are counted as resident.

    python benchmarks/bench_load_memory.py [--dim 1024] [--layers 32] [--checkpoints float32,float16]
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

TARGET_RATIO = 20.0  # one layer must cost at most 1/20 of loading the whole checkpoint
RENAME = {
    "attention.wq": "self_attn.q_proj",
    "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def build_checkpoints(root: Path, dim: int, layers: int, dtype_name: str) -> None:
    """The same random LLaMA-shaped weights as a Meta .pth and as a Hugging Face safetensors folder."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    dtype = getattr(torch, dtype_name)
    hidden = 256 * ((4 * dim * 2 // 3 + 255) // 256)
    heads = dim // 128
    meta = root / "meta"
    meta.mkdir(parents=True)
    (meta / "params.json").write_text(
        json.dumps(
            {
                "dim": dim,
                "n_layers": layers,
                "n_heads": heads,
                "norm_eps": 1e-6,
                "vocab_size": 32000,
                "multiple_of": 256,
            }
        )
    )
    g = torch.Generator().manual_seed(0)
    state = {
        "tok_embeddings.weight": torch.randn(32000, dim, generator=g).to(dtype),
        "norm.weight": torch.ones(dim, dtype=dtype),
        "output.weight": torch.randn(32000, dim, generator=g).to(dtype),
    }
    shapes = {
        "attention.wq.weight": (dim, dim),
        "attention.wk.weight": (dim, dim),
        "attention.wv.weight": (dim, dim),
        "attention.wo.weight": (dim, dim),
        "feed_forward.w1.weight": (hidden, dim),
        "feed_forward.w2.weight": (dim, hidden),
        "feed_forward.w3.weight": (hidden, dim),
        "attention_norm.weight": (dim,),
        "ffn_norm.weight": (dim,),
    }
    for i in range(layers):
        for name, shape in shapes.items():
            state[f"layers.{i}.{name}"] = (torch.randn(*shape, generator=g) * 0.02).to(dtype)
    torch.save(state, meta / "consolidated.00.pth")
    hf = {}
    for k, v in state.items():
        if k.startswith("layers."):
            _, i, rest = k.split(".", 2)
            hf[f"model.layers.{i}.{RENAME[rest.rsplit('.', 1)[0]]}.weight"] = v
    hf["model.norm.weight"], hf["model.embed_tokens.weight"] = state["norm.weight"], state["tok_embeddings.weight"]
    hf["lm_head.weight"] = state["output.weight"]
    (root / "hf").mkdir()
    save_file(hf, root / "hf" / "model.safetensors")
    LlamaConfig(
        hidden_size=dim,
        intermediate_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        vocab_size=32000,
    ).save_pretrained(root / "hf")


def child(mode: str, root: Path, layer: int, dtype_name: str) -> None:
    import torch
    import transformers.models.llama.modeling_llama  # noqa: F401  (code, imported lazily by mmllm: baseline)

    import mmllm  # noqa: F401  (imports counted in the baseline)

    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM) after imports
    base = psutil.Process().memory_info().rss
    dtype = getattr(torch, dtype_name)
    if mode == "whole":
        # what the official code does: load the whole file, then keep one layer in the compute dtype
        state = torch.load(root / "meta" / "consolidated.00.pth", map_location="cpu")
        kept = {k: v.to(dtype) for k, v in state.items() if k.startswith(f"layers.{layer}.")}
        del state
    else:
        from mmllm import FrozenLLMBlock, LLMBlockConfig

        source = root / ("meta" if mode == "mmllm_pth" else "hf")
        block = FrozenLLMBlock(LLMBlockConfig(visual_dim=384, source=str(source), layers=layer, dtype=dtype_name))
        kept = dict(block.layers.named_parameters())
        assert all(p.dtype == dtype for p in kept.values())
    # every weight resident, as a forward makes it; read in small chunks so no full-size temporary is counted
    touched = sum(float(c.float().sum()) for p in kept.values() for c in p.detach().reshape(-1).split(1 << 16))
    # ru_maxrss would be wrong here: Linux carries it over from the parent across fork+exec
    status = Path("/proc/self/status").read_text()
    peak = int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) * 1024
    layer_mb = sum(p.numel() * p.element_size() for p in kept.values()) / 2**20
    print(json.dumps({"peak_mb": (peak - base) / 2**20, "layer_mb": layer_mb, "checksum": touched}))


def run_child(mode: str, root: Path, layer: int, dtype_name: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(root), str(layer), dtype_name], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"{mode} {dtype_name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--checkpoints", default="float32,float16", help="checkpoint dtypes to build")
    parser.add_argument("--child", nargs=4)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]), int(args.child[2]), args.child[3])
        return
    layer = args.layers - 1
    rows = []
    for ckpt_dtype in args.checkpoints.split(","):
        loads = [ckpt_dtype] + (["float32", "bfloat16"] if ckpt_dtype == "float16" else [])
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            build_checkpoints(root, args.dim, args.layers, ckpt_dtype)
            size = (root / "meta" / "consolidated.00.pth").stat().st_size / 2**20
            print(
                f"checkpoint: {args.layers} layers, dim {args.dim}, {ckpt_dtype}, {size:.0f} MB; loading layer {layer}",
                flush=True,
            )
            for load_dtype in loads:
                whole = run_child("whole", root, layer, load_dtype)
                for mode in ("mmllm_pth", "mmllm_safetensors"):
                    got = run_child(mode, root, layer, load_dtype)
                    assert abs(got["checksum"] - whole["checksum"]) <= 1e-3 * max(1.0, abs(whole["checksum"]))
                    rows.append((ckpt_dtype, load_dtype, mode, whole["peak_mb"], got["peak_mb"], got["layer_mb"]))
    print(
        f"\n{'checkpoint':10s} {'loaded as':9s} {'reader':18s} {'whole file':>10s} {'one layer':>9s} "
        f"{'(layer size)':>12s} {'ratio':>6s}  target >= {TARGET_RATIO:.0f}x"
    )
    for ckpt, load, mode, whole_mb, layer_peak, layer_mb in rows:
        ratio = whole_mb / layer_peak
        verdict = "ok" if ratio >= TARGET_RATIO else ("below (cast grows the layer)" if load != ckpt else "BELOW")
        print(
            f"{ckpt:10s} {load:9s} {mode:18s} {whole_mb:8.0f}MB {layer_peak:7.1f}MB {layer_mb:10.1f}MB "
            f"{ratio:6.1f}x  {verdict}"
        )


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    main()
