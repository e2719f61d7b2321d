"""Checkpoint readers load exactly the tensors of the selected layers, and only those."""
import json
import tempfile
from pathlib import Path

import pytest
import safetensors
import torch

from mmllm import FrozenLLMBlock, LLMBlockConfig, assets, load_layer_weights
from mmllm.loading import hf_folder
from tiny_llms import final_norm_state, layer_state, save_tiny, tiny_model


def test_sharded_safetensors_reads_only_needed_shards(tmp_path, monkeypatch):
    model = save_tiny("llama", tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(index.values())) > 3, "test needs a multi-shard checkpoint"
    opened = []
    real_open = hf_folder.safe_open

    def spy(path, *a, **kw):
        opened.append(Path(path).name)
        return real_open(path, *a, **kw)

    monkeypatch.setattr(hf_folder, "safe_open", spy)
    weights = load_layer_weights(tmp_path, [2], with_final_norm=False)
    want = layer_state(model, "llama", 2)
    assert sorted(weights.layers[2]) == sorted(want)
    for name, tensor in want.items():
        assert torch.equal(weights.layers[2][name], tensor), name
    shards_of_layer = {v for k, v in index.items() if k.startswith("model.layers.2.")}
    assert set(opened) == shards_of_layer


def test_pytorch_bin_folder(tmp_path):
    model = tiny_model("qwen2")
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    weights = load_layer_weights(tmp_path, [1, 3], with_final_norm=True)
    for i in (1, 3):
        for name, tensor in layer_state(model, "qwen2", i).items():
            assert torch.equal(weights.layers[i][name], tensor)
    assert torch.equal(weights.final_norm["weight"], final_norm_state(model, "qwen2")["weight"])


def _hf_to_meta_rows(w, heads):
    """Meta's interleaved rotary row order, as in the LLaMA release (the inverse of HF's conversion)."""
    rows, cols = w.shape
    return w.view(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def write_llama_v1(model, folder: Path, shards: int):
    """Write a tiny HF LLaMA in Meta's original layout, split model-parallel like LLaMA-13B+."""
    cfg = model.config
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.json").write_text(json.dumps({
        "dim": cfg.hidden_size, "n_layers": cfg.num_hidden_layers, "n_heads": cfg.num_attention_heads,
        "n_kv_heads": cfg.num_key_value_heads, "norm_eps": cfg.rms_norm_eps, "vocab_size": -1, "multiple_of": 32,
    }))
    sd = model.state_dict()
    parts = [{} for _ in range(shards)]
    names = {"q_proj": ("attention.wq", 0), "k_proj": ("attention.wk", 0), "v_proj": ("attention.wv", 0),
             "o_proj": ("attention.wo", 1), "gate_proj": ("feed_forward.w1", 0), "down_proj": ("feed_forward.w2", 1),
             "up_proj": ("feed_forward.w3", 0)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        for hf, (meta, dim) in names.items():
            w = sd[p + ("self_attn." if hf.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp.") + hf + ".weight"]
            if hf == "q_proj":
                w = _hf_to_meta_rows(w, cfg.num_attention_heads)
            if hf == "k_proj":
                w = _hf_to_meta_rows(w, cfg.num_key_value_heads)
            for s, chunk in enumerate(w.chunk(shards, dim=dim)):
                parts[s][f"layers.{i}.{meta}.weight"] = chunk.clone()
        for s in range(shards):
            parts[s][f"layers.{i}.attention_norm.weight"] = sd[p + "input_layernorm.weight"].clone()
            parts[s][f"layers.{i}.ffn_norm.weight"] = sd[p + "post_attention_layernorm.weight"].clone()
    for s in range(shards):
        parts[s]["norm.weight"] = sd["model.norm.weight"].clone()
        parts[s]["tok_embeddings.weight"] = sd["model.embed_tokens.weight"].chunk(shards, dim=1)[s].clone()
        torch.save(parts[s], folder / f"consolidated.{s:02d}.pth")


@pytest.mark.parametrize("shards", [1, 2])
def test_llama_v1_consolidated_matches_hf(tmp_path, shards):
    model = tiny_model("llama")
    write_llama_v1(model, tmp_path / "meta", shards)
    weights = load_layer_weights(tmp_path / "meta", [3], with_final_norm=True)
    for name, tensor in layer_state(model, "llama", 3).items():
        assert torch.equal(weights.layers[3][name], tensor), name
    assert weights.config.intermediate_size == model.config.intermediate_size
    model.save_pretrained(tmp_path / "hf")
    x = torch.randn(2, 5, 12)
    a = FrozenLLMBlock(LLMBlockConfig(visual_dim=12, source=str(tmp_path / "meta"), dtype="float32"))
    b = FrozenLLMBlock(LLMBlockConfig(visual_dim=12, source=str(tmp_path / "hf"), dtype="float32"))
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def _gguf_last_layer_matches_transformers(name, model_type, hidden):
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as scratch:
        gguf = assets.gguf_path(name, Path(scratch))
        full = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        last = full.config.num_hidden_layers - 1
        ours = load_layer_weights(gguf, [last], with_final_norm=True)
    assert ours.config.model_type == model_type and ours.config.hidden_size == hidden
    prefix = f"model.layers.{last}."
    want = {k[len(prefix):]: v for k, v in full.state_dict().items() if k.startswith(prefix)}
    assert sorted(ours.layers[last]) == sorted(want)
    for key, tensor in want.items():
        assert torch.equal(ours.layers[last][key], tensor), key
    assert torch.equal(ours.final_norm["weight"], full.state_dict()["model.norm.weight"])


def test_real_smollm2_layer_from_gguf_matches_transformers():
    """The embedded SmolLM2 loads offline; our tensor-by-tensor GGUF read equals transformers' full load."""
    _gguf_last_layer_matches_transformers("smollm2-135m", "llama", 576)


@pytest.mark.slow
@pytest.mark.parametrize("name,model_type,hidden", [("gemma3-270m", "gemma3_text", 640), ("qwen2.5-0.5b", "qwen2", 896)])
def test_real_larger_assets_match_transformers(name, model_type, hidden):
    """Gemma's (1 + w) norms and Qwen's q/k/v biases read right from GGUF (assets installed separately)."""
    if not assets.get(name).installed():
        pytest.skip(f"{name} not installed: {assets.get(name).pip}")
    _gguf_last_layer_matches_transformers(name, model_type, hidden)


def test_real_smollm2_asset_block_runs_offline():
    block = FrozenLLMBlock(LLMBlockConfig(visual_dim=64, source="smollm2-135m"))
    assert block.layer_indices == [29] and block.hidden_size == 576
    assert block.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    cached = load_layer_weights(assets.prepare("smollm2-135m"), [29], with_final_norm=False)
    assert torch.equal(block.layers[0].mlp.down_proj.weight, cached.layers[29]["mlp.down_proj.weight"].bfloat16())
    x = torch.randn(2, 10, 64, requires_grad=True)
    out = block(x)
    out.sum().backward()
    assert out.shape == (2, 10, 64) and torch.isfinite(out).all() and x.grad.abs().sum() > 0
