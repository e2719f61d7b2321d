"""Every bad input raises a clear mmllm error that says what is wrong."""
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmllm import (
    CheckpointError,
    ConfigError,
    FrozenLLMBlock,
    LayerIndexError,
    LLMBlockConfig,
    UnsupportedArchitectureError,
    assets,
    load_layer_weights,
    resolve_layers,
)
from tiny_llms import save_tiny


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    save_tiny("llama", folder)
    return folder


@pytest.mark.parametrize("spec", [4, -5, 100, [0, 9], "7", "5:9"])
def test_layer_index_out_of_range(llama_dir, spec):
    with pytest.raises(LayerIndexError, match="out of range|selects no layer"):
        FrozenLLMBlock(LLMBlockConfig(visual_dim=8, source=str(llama_dir), layers=spec))


def test_layer_spec_forms():
    assert resolve_layers("last", 30) == [29]
    assert resolve_layers(-1, 30) == [29]
    assert resolve_layers("-2:", 30) == [28, 29]
    assert resolve_layers(range(2, 4), 30) == [2, 3]
    assert resolve_layers("middle", 30) == [15]
    assert resolve_layers("head", 30) == [0]
    with pytest.raises(LayerIndexError, match="repeats"):
        resolve_layers([1, 1], 30)
    with pytest.raises(LayerIndexError, match="unknown layer spec"):
        resolve_layers("penultimate", 30)


def test_unsupported_architecture_names_supported_ones(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=2, n_embd=16, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError, match="gpt2.*supported.*llama.*opt.*qwen2"):
        FrozenLLMBlock(LLMBlockConfig(visual_dim=8, source=str(tmp_path)))


def test_missing_tensor_is_named(llama_dir, tmp_path):
    for f in llama_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    state = load_file(tmp_path / "model.safetensors")
    del state["model.layers.3.mlp.up_proj.weight"]
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"layer 3 is missing tensor\(s\) \['mlp.up_proj.weight'\]"):
        FrozenLLMBlock(LLMBlockConfig(visual_dim=8, source=str(tmp_path)))


def test_misshapen_tensor_is_named(llama_dir, tmp_path):
    for f in llama_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    state = load_file(tmp_path / "model.safetensors")
    state["model.layers.3.mlp.up_proj.weight"] = torch.zeros(3, 3)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="up_proj.weight.*shape"):
        load_layer_weights(tmp_path, [3], with_final_norm=False)


def test_visual_dim_mismatch(llama_dir):
    block = FrozenLLMBlock(LLMBlockConfig(visual_dim=8, source=str(llama_dir)))
    with pytest.raises(ValueError, match=r"\[B, N, 8\]"):
        block(torch.randn(1, 3, 9))
    with pytest.raises(ValueError, match="padding_mask must be bool"):
        block(torch.randn(1, 3, 8), torch.zeros(1, 3))


class Payload:  # anything that is not a tensor needs code to unpickle
    pass


def test_pth_with_pickled_code_is_refused(tmp_path):
    folder = tmp_path / "meta"
    folder.mkdir()
    (folder / "params.json").write_text('{"dim": 8, "n_layers": 1, "n_heads": 2}')
    torch.save({"layers.0.feed_forward.w1.weight": torch.zeros(4, 8), "evil": Payload()}, folder / "consolidated.00.pth")
    with pytest.raises(CheckpointError, match="refusing to load.*unpickling"):
        FrozenLLMBlock(LLMBlockConfig(visual_dim=8, source=str(folder)))


@pytest.mark.parametrize("keep", [0.5, 0.0005])
def test_truncated_gguf(tmp_path, keep):
    with tempfile.TemporaryDirectory() as scratch:
        src = assets.gguf_path("smollm2-135m", Path(scratch))
        size = os.path.getsize(src)
        with open(src, "rb") as f:
            data = f.read(int(size * keep))
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data)
    with pytest.raises(CheckpointError, match="truncated"):
        FrozenLLMBlock(LLMBlockConfig(visual_dim=8, source=str(bad)))


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"NOPE" + b"\0" * 100)
    with pytest.raises(CheckpointError, match="not a GGUF"):
        load_layer_weights(bad, [0], False)


def test_unknown_source_says_nothing_is_downloaded():
    with pytest.raises(CheckpointError, match="nothing is downloaded"):
        FrozenLLMBlock(LLMBlockConfig(visual_dim=8, source="meta-llama/Llama-2-7b-hf"))


def test_folder_without_weights(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(num_hidden_layers=2, hidden_size=16, num_attention_heads=2, intermediate_size=32).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no weights found"):
        load_layer_weights(tmp_path, [0], False)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"visual_dim": 8, "dtype": "float8"}, "dtype"),
        ({"visual_dim": 8, "final_norm": "learned"}, "final_norm"),
        ({"visual_dim": 8, "init": "xavier"}, "init"),
        ({"visual_dim": 8, "layer": -1}, "unknown llm_block option"),
        ({"source": "x"}, "visual_dim"),
    ],
)
def test_bad_config(options, message):
    with pytest.raises(ConfigError, match=message):
        LLMBlockConfig.from_dict(options)
