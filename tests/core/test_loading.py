"""Checkpoint readers load exactly the tensors of the selected layers, and only those."""

import json
import tempfile
from pathlib import Path

import pytest
import torch
from tiny_llms import ARCHS, final_norm_state, layer_state, save_tiny, tiny_model

from mmllm import FrozenLLMBlock, LLMBlockConfig, assets, load_extra_tensors, load_layer_weights, resolve_dtype
from mmllm.errors import CheckpointError, ConfigError
from mmllm.loading import hf_folder


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
    (folder / "params.json").write_text(
        json.dumps(
            {
                "dim": cfg.hidden_size,
                "n_layers": cfg.num_hidden_layers,
                "n_heads": cfg.num_attention_heads,
                "n_kv_heads": cfg.num_key_value_heads,
                "norm_eps": cfg.rms_norm_eps,
                "vocab_size": -1,
                "multiple_of": 32,
            }
        )
    )
    sd = model.state_dict()
    parts = [{} for _ in range(shards)]
    names = {
        "q_proj": ("attention.wq", 0),
        "k_proj": ("attention.wk", 0),
        "v_proj": ("attention.wv", 0),
        "o_proj": ("attention.wo", 1),
        "gate_proj": ("feed_forward.w1", 0),
        "down_proj": ("feed_forward.w2", 1),
        "up_proj": ("feed_forward.w3", 0),
    }
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        for hf, (meta, dim) in names.items():
            w = sd[
                p + ("self_attn." if hf.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp.") + hf + ".weight"
            ]
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
        parts[s]["output.weight"] = sd["lm_head.weight"].chunk(shards, dim=0)[s].clone()
        torch.save(parts[s], folder / f"consolidated.{s:02d}.pth")


@pytest.mark.parametrize("shards", [1, 2])
def test_llama_v1_consolidated_matches_hf(tmp_path, shards):
    model = tiny_model("llama")
    write_llama_v1(model, tmp_path / "meta", shards)
    weights = load_layer_weights(tmp_path / "meta", [3], with_final_norm=True)
    for name, tensor in layer_state(model, "llama", 3).items():
        assert torch.equal(weights.layers[3][name], tensor), name
    assert weights.config.intermediate_size == model.config.intermediate_size
    assert weights.config.vocab_size == model.config.vocab_size  # from tok_embeddings (params.json says -1)
    extras = load_extra_tensors(tmp_path / "meta", ["word_embeddings", "final_norm", "lm_head"])
    assert torch.equal(extras["word_embeddings"], model.get_input_embeddings().weight)  # merged along dim 1
    assert torch.equal(extras["lm_head"], model.get_output_embeddings().weight)  # merged along dim 0
    assert torch.equal(extras["final_norm"], model.model.norm.weight)
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
        extras = load_extra_tensors(gguf, ["word_embeddings", "final_norm", "lm_head"], ours.config)
    assert ours.config.model_type == model_type and ours.config.hidden_size == hidden
    prefix = f"model.layers.{last}."
    want = {k[len(prefix) :]: v for k, v in full.state_dict().items() if k.startswith(prefix)}
    assert sorted(ours.layers[last]) == sorted(want)
    for key, tensor in want.items():
        assert torch.equal(ours.layers[last][key], tensor), key
    assert torch.equal(ours.final_norm["weight"], full.state_dict()["model.norm.weight"])
    assert torch.equal(extras["word_embeddings"], full.get_input_embeddings().weight)
    assert torch.equal(extras["final_norm"], full.model.norm.weight)
    assert torch.equal(extras["lm_head"], full.get_output_embeddings().weight)  # tied: the embedding table
    return full


def test_real_smollm2_layer_from_gguf_matches_transformers():
    """The embedded SmolLM2 loads offline; our tensor-by-tensor GGUF read equals transformers' full load,
    and so do the named extra tensors, from the GGUF and from the prepared (bf16) cache."""
    full = _gguf_last_layer_matches_transformers("smollm2-135m", "llama", 576)
    cached = load_extra_tensors("smollm2-135m", ["word_embeddings"])["word_embeddings"]
    assert cached.dtype == torch.bfloat16  # as stored in the cache
    assert torch.equal(cached, full.get_input_embeddings().weight.bfloat16())


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,model_type,hidden", [("gemma3-270m", "gemma3_text", 640), ("qwen2.5-0.5b", "qwen2", 896)]
)
def test_real_larger_assets_match_transformers(name, model_type, hidden):
    """Gemma's (1 + w) norms and Qwen's q/k/v biases read right from GGUF (assets installed separately)."""
    if not assets.get(name).installed():
        pytest.skip(f"{name} not installed: {assets.get(name).pip}")
    _gguf_last_layer_matches_transformers(name, model_type, hidden)


def test_real_smollm2_asset_block_runs_offline():
    block = FrozenLLMBlock(LLMBlockConfig(visual_dim=64, source="smollm2-135m", dtype="bfloat16"))
    assert block.layer_indices == [29] and block.hidden_size == 576
    assert block.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    auto = FrozenLLMBlock(LLMBlockConfig(visual_dim=64, source="smollm2-135m"))  # dtype: auto, the default
    assert auto.layers[0].self_attn.q_proj.weight.dtype == resolve_dtype("auto")
    assert auto.source_fingerprint == block.source_fingerprint  # the fingerprint ignores the load dtype
    cached = load_layer_weights(assets.prepare("smollm2-135m"), [29], with_final_norm=False)
    assert torch.equal(block.layers[0].mlp.down_proj.weight, cached.layers[29]["mlp.down_proj.weight"].bfloat16())
    x = torch.randn(2, 10, 64, requires_grad=True)
    out = block(x)
    out.sum().backward()
    assert out.shape == (2, 10, 64) and torch.isfinite(out).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_extra_tensors_match_transformers(tmp_path, arch):
    """word_embeddings / final_norm / lm_head equal transformers' own modules, per family."""
    model = save_tiny(arch, tmp_path)
    extras = load_extra_tensors(tmp_path, ["word_embeddings", "final_norm", "lm_head"])
    assert torch.equal(extras["word_embeddings"], model.get_input_embeddings().weight)
    assert torch.equal(extras["lm_head"], model.get_output_embeddings().weight)
    norm = model.model.decoder.final_layer_norm if arch == "opt" else model.model.norm
    assert torch.equal(extras["final_norm"], norm.weight)
    if arch == "opt":
        assert torch.equal(load_extra_tensors(tmp_path, ["final_norm_bias"])["final_norm_bias"], norm.bias)


def test_extra_tensors_from_sharded_folder_open_only_their_shard(tmp_path, monkeypatch):
    model = save_tiny("qwen2", tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    opened = []
    real_open = hf_folder.safe_open

    def spy(path, *a, **kw):
        opened.append(Path(path).name)
        return real_open(path, *a, **kw)

    monkeypatch.setattr(hf_folder, "safe_open", spy)
    got = load_extra_tensors(tmp_path, ["word_embeddings"], dtype=torch.bfloat16)["word_embeddings"]
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, model.get_input_embeddings().weight.bfloat16())
    assert set(opened) == {index["model.embed_tokens.weight"]}


def test_tied_lm_head_is_the_embedding_table(tmp_path):
    model = tiny_model("llama", tie_word_embeddings=True)
    model.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as handle:
        assert "lm_head.weight" not in handle.keys()  # tied weights are saved once
    extras = load_extra_tensors(tmp_path, ["lm_head"])
    assert torch.equal(extras["lm_head"], model.get_output_embeddings().weight)


def test_unknown_or_missing_extra_tensor(tmp_path):
    save_tiny("llama", tmp_path)
    with pytest.raises(ConfigError, match="no extra tensor 'word_embedding'.*did you mean 'word_embeddings'"):
        load_extra_tensors(tmp_path, ["word_embedding"])
    with pytest.raises(ConfigError, match="no extra tensor 'final_norm_bias'"):  # an OPT-only name
        load_extra_tensors(tmp_path, ["final_norm_bias"])
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "model.safetensors")
    del state["model.embed_tokens.weight"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="no tensor 'word_embeddings'.*model.embed_tokens.weight"):
        load_extra_tensors(tmp_path, ["word_embeddings"])


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_layers_cast_on_load_and_fingerprint_ignores_dtype(tmp_path, fmt):
    model = tiny_model("llama")
    if fmt == "bin":
        model.config.save_pretrained(tmp_path)
        torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    else:
        model.save_pretrained(tmp_path)
    want = layer_state(model, "llama", 2)
    as_stored = load_layer_weights(tmp_path, [2], with_final_norm=False)
    bf16 = load_layer_weights(tmp_path, [2], with_final_norm=False, dtype=torch.bfloat16)
    for name, tensor in want.items():
        assert torch.equal(as_stored.layers[2][name], tensor), name  # still right after its pages were dropped
        assert bf16.layers[2][name].dtype == torch.bfloat16
        assert torch.equal(bf16.layers[2][name], tensor.bfloat16()), name
    assert as_stored.fingerprint == bf16.fingerprint is not None
