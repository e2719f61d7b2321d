"""Every bad input raises a clear mmllm error that says what is wrong."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_llms import save_tiny

from mmllm import (
    CheckpointError,
    ConfigError,
    DataError,
    FrozenLLMBlock,
    LayerIndexError,
    LLMBlockConfig,
    UnsupportedArchitectureError,
    assets,
    build_block,
    load_layer_weights,
    resolve_layers,
)


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
    assert resolve_layers("first", 30) == [0]
    with pytest.raises(LayerIndexError, match="where the block sits in the visual encoder"):
        resolve_layers("head", 30)  # the paper's head/middle/tail is an insertion position, not an LLM layer
    with pytest.raises(LayerIndexError, match="repeats"):
        resolve_layers([1, 1], 30)
    with pytest.raises(LayerIndexError, match="unknown layer spec"):
        resolve_layers("penultimate", 30)


def test_unsupported_architecture_names_supported_ones(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=2, n_embd=16, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError, match="gpt2.*supported.*llama.*opt.*qwen2"):
        FrozenLLMBlock(LLMBlockConfig(visual_dim=8, source=str(tmp_path)))


def _llama_copy(llama_dir, folder, edit):
    """A copy of the tiny LLaMA checkpoint in ``folder`` with ``edit`` applied to its state dict."""
    for f in llama_dir.iterdir():
        shutil.copy(f, folder / f.name)
    state = load_file(folder / "model.safetensors")
    edit(state)
    save_file(state, folder / "model.safetensors")
    return folder


def test_missing_tensor_is_named(llama_dir, tmp_path):
    source = _llama_copy(llama_dir, tmp_path, lambda state: state.pop("model.layers.3.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"layer 3 is missing tensor\(s\) \['mlp.up_proj.weight'\]"):
        FrozenLLMBlock(LLMBlockConfig(visual_dim=8, source=str(source)))


def test_misshapen_tensor_is_named(llama_dir, tmp_path):
    def reshape(state):
        state["model.layers.3.mlp.up_proj.weight"] = torch.zeros(3, 3)

    source = _llama_copy(llama_dir, tmp_path, reshape)
    with pytest.raises(CheckpointError, match="up_proj.weight.*shape"):
        load_layer_weights(source, [3], with_final_norm=False)


def test_nan_in_a_layer_tensor_is_named(llama_dir, tmp_path):
    def diverged(state):
        state["model.layers.3.self_attn.o_proj.weight"][1, 2] = float("nan")

    source = _llama_copy(llama_dir, tmp_path, diverged)
    with pytest.raises(CheckpointError, match=r"layer 3 tensor 'self_attn\.o_proj\.weight' holds NaN or inf$"):
        load_layer_weights(source, [3], with_final_norm=False)
    load_layer_weights(source, [2], with_final_norm=True)  # the other layers are usable


def test_inf_after_the_cast_to_float16_is_named(llama_dir, tmp_path):
    """A value beyond float16's range (65,504: bfloat16 LLMs hold such) is finite as stored, inf once cast."""

    def large(state):
        state["model.norm.weight"][0] = 1e5

    source = _llama_copy(llama_dir, tmp_path, large)
    load_layer_weights(source, [3], with_final_norm=True, dtype=torch.float32)
    with pytest.raises(
        CheckpointError,
        match=r"final norm tensor 'weight' holds NaN or inf after the cast from torch\.float32 to torch\.float16",
    ):
        load_layer_weights(source, [3], with_final_norm=True, dtype=torch.float16)


def test_nan_in_an_extra_tensor_is_named(llama_dir, tmp_path):
    from mmllm import load_extra_tensors

    def diverged(state):
        state["model.embed_tokens.weight"][5, 0] = float("inf")

    source = _llama_copy(llama_dir, tmp_path, diverged)
    with pytest.raises(CheckpointError, match=r"extra tensor 'word_embeddings' holds NaN or inf"):
        load_extra_tensors(source, ["word_embeddings"])


def test_visual_dim_mismatch(llama_dir):
    block = FrozenLLMBlock(LLMBlockConfig(visual_dim=8, source=str(llama_dir), dtype="float32"))
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
    torch.save(
        {"layers.0.feed_forward.w1.weight": torch.zeros(4, 8), "evil": Payload()}, folder / "consolidated.00.pth"
    )
    with pytest.raises(CheckpointError, match="refused to unpickle: .*weights_only=True"):
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

    LlamaConfig(num_hidden_layers=2, hidden_size=16, num_attention_heads=2, intermediate_size=32).save_pretrained(
        tmp_path
    )
    with pytest.raises(CheckpointError, match="no weights found"):
        load_layer_weights(tmp_path, [0], False)


def test_mlp_control_switches_on_over_a_block_config():
    """kind=mlp from the command line over a config written for llm_block: its layers/dtype mean
    nothing for the control and are ignored (a dotlist override cannot delete them)."""
    from mmllm.blocks import AdapterMLP, build_block

    block = build_block(
        {
            "kind": "mlp",
            "layers": "last",
            "dtype": "bfloat16",
            "final_norm": "unit",
            "llm_config": {
                "model_type": "llama",
                "hidden_size": 16,
                "num_attention_heads": 2,
                "num_hidden_layers": 1,
                "intermediate_size": 32,
            },
            "source": None,
        },
        8,
    )
    assert isinstance(block, AdapterMLP) and block.adapter_in.out_features == 16


@pytest.mark.parametrize(
    "options,message",
    [
        ({"visual_dim": 8, "dtype": "float8"}, "dtype"),
        ({"visual_dim": 8, "final_norm": "learned"}, "final_norm"),
        ({"visual_dim": 8, "init": "random"}, "'init' was removed.*kind: random_trained"),
        ({"visual_dim": 8, "frozen": False}, "'frozen' was removed.*kind: llm_block_finetuned"),
        ({"visual_dim": 8, "layer": -1}, "kind 'llm_block' has no option 'layer' \\(did you mean 'layers'\\?\\)"),
        ({"source": "x"}, "visual_dim"),
        ({"visual_dim": "384"}, "visual_dim.*valid integer"),
        ({"visual_dim": 8, "out_dim": 2.5}, "out_dim"),
        ({"visual_dim": 8, "layers": [1, "x"]}, "layers must be"),
        ({"visual_dim": 8, "source": None}, "needs a source"),
    ],
)
def test_bad_config(options, message):
    with pytest.raises(ConfigError, match=message):
        LLMBlockConfig.from_dict(options)


@pytest.mark.parametrize("visual_dim", ["384", 3.5, True, 0, None])
def test_non_int_visual_dim_is_a_config_error(llama_dir, visual_dim):
    with pytest.raises(ConfigError, match="visual_dim must be a positive int"):
        build_block({"source": str(llama_dir)}, visual_dim)


@pytest.mark.parametrize(
    "options,message",
    [
        (
            {"kind": "mlp", "lyers": "last"},
            "kind 'mlp' has no option 'lyers'",
        ),  # mlp ignores llm_block's options, not typos
        ({"kind": "llm_block", "llm_config": {"model_type": "llama"}}, "no option 'llm_config'.*random_trained"),
        ({"kind": "random_trained", "final_norm": "pretrained"}, "random-init block has none"),
        ({"kind": "random_frozen", "source": "x", "llm_config": {"model_type": "llama"}}, "not both"),
        ({"kind": "none", "lyers": 2}, "kind 'none' has no option 'lyers'"),
        ({"kind": "random_traind"}, "unknown block kind 'random_traind' \\(did you mean 'random_trained'\\?\\)"),
        ({"kind": "llm_block", "visual_dim": 9}, "disagrees with the width"),
    ],
)
def test_options_are_checked_per_kind(options, message):
    with pytest.raises(ConfigError, match=message):
        build_block(options, 8)


def test_none_ignores_other_kinds_options():
    """``kind=none`` on the command line switches off a config written for the block."""
    block = build_block({"kind": "none", "source": "smollm2-135m", "layers": "last", "dtype": "bfloat16"}, 8)
    assert block.kind == "none"


@pytest.mark.parametrize("kind", ["llm_block", "mlp"])
def test_nan_in_padding_does_not_reach_real_tokens(llama_dir, kind):
    block = build_block({"kind": kind, "source": str(llama_dir), **({"dtype": "float32"} if kind != "mlp" else {})}, 8)
    x = torch.randn(2, 5, 8)
    pad = torch.tensor([[False] * 3 + [True] * 2, [False] * 5])
    clean = block(x, pad)
    x[0, 3] = float("nan")
    x[0, 4] = float("inf")
    with torch.no_grad():
        out = block(x, pad)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, clean)
    torch.testing.assert_close(out[0, :3], block(x[:1, :3])[0])  # as if the padding were not there
    assert torch.all(out[0, 3:] == 0)


@pytest.mark.parametrize("kind", ["llm_block", "mlp", "none"])
@pytest.mark.parametrize("shape", [(0, 4, 8), (2, 0, 8)])
def test_empty_batch_or_no_tokens_is_a_clear_error(llama_dir, kind, shape):
    block = build_block({"kind": kind, "source": str(llama_dir)}, 8) if kind != "none" else build_block(None, 8)
    with pytest.raises(DataError, match=r"empty batch of tokens.*at least one"):
        block(torch.randn(*shape))


# -- the asset cache: hashes recorded when written, checked when read ---------------------


def _tensor_byte_range(path: Path, key: str) -> tuple[int, int]:
    """Where a tensor's bytes lie in a safetensors file, from the format's own header:
    8 bytes little-endian header length, a JSON header, then the data block."""
    import json
    import struct

    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    start, end = header[key]["data_offsets"]
    return 8 + length + start, 8 + length + end


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A copy of the prepared SmolLM2 cache under a private $MMLLM_CACHE (the shared one stays intact)."""
    real = assets.prepare("smollm2-135m")
    monkeypatch.setenv("MMLLM_CACHE", str(tmp_path))
    shutil.copytree(real, tmp_path / "smollm2-135m")
    return tmp_path / "smollm2-135m"


def test_changed_cached_layer_is_refused(private_cache):
    asset = assets.get("smollm2-135m")
    assert asset.cached()
    weights = private_cache / "model.safetensors"
    start, _ = _tensor_byte_range(weights, "model.layers.29.mlp.down_proj.weight")
    with open(weights, "r+b") as handle:  # NaNs (bf16 0x7FC0) over the first 64 values, same size
        handle.seek(start)
        handle.write(b"\xc0\x7f" * 64)
    assert not asset.cached()  # `mmllm assets list` no longer calls it cached
    with pytest.raises(
        CheckpointError, match="changed since it was written.*mmllm assets prepare smollm2-135m --force"
    ):
        asset.verify_cache()
    with pytest.raises(CheckpointError, match="down_proj.weight.*changed.*mmllm assets prepare smollm2-135m --force"):
        FrozenLLMBlock(LLMBlockConfig(visual_dim=8, source="smollm2-135m", dtype="float32"))
    # a load checks only the tensors it reads: layer 0 is intact and still loads
    block = FrozenLLMBlock(LLMBlockConfig(visual_dim=8, source="smollm2-135m", layers=0, dtype="float32"))
    assert all(torch.isfinite(p).all() for p in block.layers.parameters())


def test_truncated_cache_is_refused(private_cache):
    weights = private_cache / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as handle:
        handle.truncate(size // 2)
    with pytest.raises(CheckpointError, match="truncated.*mmllm assets prepare smollm2-135m --force"):
        FrozenLLMBlock(LLMBlockConfig(visual_dim=8, source="smollm2-135m", dtype="float32"))
    assert not assets.get("smollm2-135m").cached()
