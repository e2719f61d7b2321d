"""Plain-torch reference maths for one decoder layer of each family, written from the
papers/model cards, independent of transformers and of mmllm: no positions, no causal
mask, padded keys dropped. Weights use Hugging Face checkpoint names."""

import math

import torch
import torch.nn.functional as F


def rms_norm(x, weight, eps, gemma=False):
    x32 = x.float()
    y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return y * (1.0 + weight.float()) if gemma else y * weight.float()


def _linear(x, w, b=None):
    y = x @ w.float().T
    return y + b.float() if b is not None else y


def attention(x, W, cfg, pad, arch):
    B, N, _ = x.shape
    H, KV = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    o_name = "self_attn.out_proj" if arch == "opt" else "self_attn.o_proj"
    q = _linear(x, W["self_attn.q_proj.weight"], W.get("self_attn.q_proj.bias")).view(B, N, H, hd).transpose(1, 2)
    k = _linear(x, W["self_attn.k_proj.weight"], W.get("self_attn.k_proj.bias")).view(B, N, KV, hd).transpose(1, 2)
    v = _linear(x, W["self_attn.v_proj.weight"], W.get("self_attn.v_proj.bias")).view(B, N, KV, hd).transpose(1, 2)
    if arch == "gemma3":
        q = rms_norm(q, W["self_attn.q_norm.weight"], cfg.rms_norm_eps, gemma=True)
        k = rms_norm(k, W["self_attn.k_norm.weight"], cfg.rms_norm_eps, gemma=True)
        scale = cfg.query_pre_attn_scalar**-0.5
    else:
        scale = 1.0 / math.sqrt(hd)
    k = k.repeat_interleave(H // KV, dim=1)
    v = v.repeat_interleave(H // KV, dim=1)
    scores = q @ k.transpose(-1, -2) * scale
    if pad is not None:
        scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, N, H * hd)
    return _linear(out, W[o_name + ".weight"], W.get(o_name + ".bias"))


def layer_forward(x, W, cfg, arch, pad=None):
    """One decoder layer, fp32."""
    x = x.float()
    if arch in ("llama", "qwen2"):
        h = x + attention(rms_norm(x, W["input_layernorm.weight"], cfg.rms_norm_eps), W, cfg, pad, arch)
        n = rms_norm(h, W["post_attention_layernorm.weight"], cfg.rms_norm_eps)
        mlp = _linear(
            F.silu(_linear(n, W["mlp.gate_proj.weight"])) * _linear(n, W["mlp.up_proj.weight"]),
            W["mlp.down_proj.weight"],
        )
        return h + mlp
    if arch == "gemma3":
        eps = cfg.rms_norm_eps
        a = attention(rms_norm(x, W["input_layernorm.weight"], eps, True), W, cfg, pad, arch)
        h = x + rms_norm(a, W["post_attention_layernorm.weight"], eps, True)
        n = rms_norm(h, W["pre_feedforward_layernorm.weight"], eps, True)
        g = F.gelu(_linear(n, W["mlp.gate_proj.weight"]), approximate="tanh")
        m = _linear(g * _linear(n, W["mlp.up_proj.weight"]), W["mlp.down_proj.weight"])
        return h + rms_norm(m, W["post_feedforward_layernorm.weight"], eps, True)
    if arch == "opt":  # pre-LayerNorm variant (all OPT sizes but 350m)
        ln1 = F.layer_norm(
            x, (x.shape[-1],), W["self_attn_layer_norm.weight"].float(), W["self_attn_layer_norm.bias"].float()
        )
        h = x + attention(ln1, W, cfg, pad, arch)
        ln2 = F.layer_norm(h, (h.shape[-1],), W["final_layer_norm.weight"].float(), W["final_layer_norm.bias"].float())
        return h + _linear(F.relu(_linear(ln2, W["fc1.weight"], W["fc1.bias"])), W["fc2.weight"], W["fc2.bias"])
    raise ValueError(arch)


def final_norm(h, W, cfg, arch):
    """The LLM's final norm with the given weights (W=None: unit weights)."""
    if arch == "opt":
        w = W["weight"] if W else torch.ones(h.shape[-1])
        b = W["bias"] if W else torch.zeros(h.shape[-1])
        return F.layer_norm(h, (h.shape[-1],), w.float(), b.float())
    if arch == "gemma3":
        return rms_norm(h, W["weight"] if W else torch.zeros(h.shape[-1]), cfg.rms_norm_eps, gemma=True)
    return rms_norm(h, W["weight"] if W else torch.ones(h.shape[-1]), cfg.rms_norm_eps)
