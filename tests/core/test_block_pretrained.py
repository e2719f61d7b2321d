"""FrozenLLMBlock.from_pretrained / save_pretrained (transformers' conventions), on tiny random checkpoints."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_llms import layer_state, save_tiny, tiny_model

from mmllm import CheckpointError, ConfigError, FrozenLLMBlock, build_block
from mmllm.precision import resolve_dtype


def _randomise_adapters(block, seed=1):
    """Adapters away from their init, so a reload that forgot them would be caught."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (block.adapter_in.weight, block.adapter_out.weight):
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llm") / "llama"
    save_tiny("llama", folder)
    return folder


@pytest.mark.parametrize("include_frozen", [False, True])
def test_round_trip_identical_outputs(llama_dir, tmp_path, include_frozen):
    block = FrozenLLMBlock.from_pretrained(
        llama_dir, layers="-2:", visual_dim=12, dtype="float32", final_norm="pretrained"
    )
    _randomise_adapters(block)
    x = torch.randn(2, 7, 12, generator=torch.Generator().manual_seed(0))
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 5:] = True
    with torch.no_grad():
        want, want_pad = block(x), block(x, padding_mask=pad)
    saved = block.save_pretrained(tmp_path / "saved", include_frozen=include_frozen)

    adapters = load_file(str(saved / "adapters.safetensors"))
    assert sorted(adapters) == ["adapter_in.weight", "adapter_out.weight"]  # the frozen layers are referenced
    meta = json.loads((saved / "block_config.json").read_text())
    assert meta["frozen"]["sha256"] == block.frozen_sha256 and meta["layer_indices"] == [2, 3]
    assert (saved / "frozen" / "model.safetensors").is_file() == include_frozen

    again = FrozenLLMBlock.from_pretrained(saved)
    assert again.layer_indices == [2, 3] and again.visual_dim == 12
    with torch.no_grad():
        assert torch.equal(again(x), want)
        assert torch.equal(again(x, padding_mask=pad), want_pad)
    assert all(not p.requires_grad for p in again.layers.parameters())
    assert again.adapter_in.weight.requires_grad
    # and a second round trip of the re-opened block gives the same again
    third = FrozenLLMBlock.from_pretrained(again.save_pretrained(tmp_path / "again"))
    with torch.no_grad():
        assert torch.equal(third(x), want)


def test_included_frozen_layers_are_the_source_tensors(llama_dir, tmp_path):
    """The copied layers equal transformers' own model's (an independent reference), not only our loader's."""
    block = FrozenLLMBlock.from_pretrained(llama_dir, layers=[1], visual_dim=8, dtype="bf16")
    saved = block.save_pretrained(tmp_path / "s", include_frozen=True)
    copied = load_file(str(saved / "frozen" / "model.safetensors"))
    reference = layer_state(tiny_model("llama"), "llama", 1)
    assert sorted(copied) == sorted(f"model.layers.1.{k}" for k in reference)
    for name, tensor in reference.items():
        assert torch.equal(copied[f"model.layers.1.{name}"], tensor)  # as stored (fp32), not the bf16 copy


def test_fingerprint_mismatch_is_an_error(tmp_path):
    source = tmp_path / "llm"
    save_tiny("llama", source, seed=0)
    block = FrozenLLMBlock.from_pretrained(source, visual_dim=8, dtype="float32")
    saved = block.save_pretrained(tmp_path / "saved")
    save_tiny("llama", source, seed=1)  # same architecture, other weights under the recorded source
    with pytest.raises(CheckpointError, match="SHA-256"):
        FrozenLLMBlock.from_pretrained(saved)
    # re-pointing source= at the original weights works
    moved = tmp_path / "moved"
    save_tiny("llama", moved, seed=0)
    assert FrozenLLMBlock.from_pretrained(saved, source=str(moved)).frozen_sha256 == block.frozen_sha256


def test_missing_or_changed_tensors_are_errors(llama_dir, tmp_path):
    block = FrozenLLMBlock.from_pretrained(llama_dir, visual_dim=8, dtype="float32")
    saved = block.save_pretrained(tmp_path / "saved", include_frozen=True)
    adapters = load_file(str(saved / "adapters.safetensors"))
    save_file({"adapter_in.weight": adapters["adapter_in.weight"]}, str(saved / "adapters.safetensors"))
    with pytest.raises(CheckpointError, match="adapter_out.weight"):
        FrozenLLMBlock.from_pretrained(saved)
    save_file(adapters, str(saved / "adapters.safetensors"))
    frozen = load_file(str(saved / "frozen" / "model.safetensors"))
    key = "model.layers.3.mlp.down_proj.weight"
    save_file({k: v for k, v in frozen.items() if k != key}, str(saved / "frozen" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="down_proj"):
        FrozenLLMBlock.from_pretrained(saved)
    frozen[key] = frozen[key] + 1e-3  # a changed copy of the frozen weights
    save_file(frozen, str(saved / "frozen" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="SHA-256"):
        FrozenLLMBlock.from_pretrained(saved)


def test_adapters_holding_nan_are_named(llama_dir, tmp_path):
    block = FrozenLLMBlock.from_pretrained(llama_dir, visual_dim=8, dtype="float32")
    saved = block.save_pretrained(tmp_path / "saved")
    adapters = load_file(str(saved / "adapters.safetensors"))
    adapters["adapter_out.weight"][0, 0] = float("nan")
    save_file(adapters, str(saved / "adapters.safetensors"))
    with pytest.raises(CheckpointError, match=r"adapters\.safetensors: tensor\(s\) \['adapter_out\.weight'\] hold NaN"):
        FrozenLLMBlock.from_pretrained(saved)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("bf16", torch.bfloat16),
        ("bfloat16", torch.bfloat16),
        ("float32", torch.float32),
        ("fp32", torch.float32),
        (torch.bfloat16, torch.bfloat16),
        (torch.float32, torch.float32),
        ("auto", None),
    ],
)
def test_dtype_names(llama_dir, name, expected):
    block = FrozenLLMBlock.from_pretrained(llama_dir, visual_dim=8, dtype=name)
    want = resolve_dtype("auto") if expected is None else expected
    assert {p.dtype for p in block.layers.parameters()} == {want}
    assert block.adapter_in.weight.dtype == torch.float32  # adapters train in fp32 whatever the block runs in


def test_dtype_errors_and_reopen_checks(llama_dir, tmp_path):
    with pytest.raises(ConfigError, match="fp8"):
        FrozenLLMBlock.from_pretrained(llama_dir, visual_dim=8, dtype="fp8")
    with pytest.raises(ConfigError, match="visual_dim"):
        FrozenLLMBlock.from_pretrained(llama_dir)
    block = FrozenLLMBlock.from_pretrained(llama_dir, visual_dim=8, dtype="float32")
    saved = block.save_pretrained(tmp_path / "s")
    bf16 = FrozenLLMBlock.from_pretrained(saved, dtype="bfloat16")  # the same weights, another compute dtype
    assert next(bf16.layers.parameters()).dtype == torch.bfloat16 and bf16.frozen_sha256 == block.frozen_sha256
    with pytest.raises(ConfigError, match="layers"):
        FrozenLLMBlock.from_pretrained(saved, layers="first")
    with pytest.raises(ConfigError, match="visual_dim"):
        FrozenLLMBlock.from_pretrained(saved, visual_dim=16)


def test_hub_id_missing_from_cache_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(CheckpointError) as info:
        FrozenLLMBlock.from_pretrained("HuggingFaceTB/SmolLM2-135M", visual_dim=8)
    message = str(info.value)
    assert "'HuggingFaceTB/SmolLM2-135M'" in message and "smollm2-135m" in message and ".gguf" in message
    assert str(tmp_path / "hf" / "hub") in message


def test_hub_id_found_in_local_cache(tmp_path, monkeypatch):
    """The hub cache layout (models--org--name/snapshots/<rev>/ + refs/main), filled by hand."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--tiny-org--tiny-llama"
    save_tiny("llama", repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    block = FrozenLLMBlock.from_pretrained("tiny-org/tiny-llama", layers=0, visual_dim=8, dtype="float32")
    reference = layer_state(tiny_model("llama"), "llama", 0)
    own = block.layers[0].state_dict()
    assert all(torch.equal(own[k], v) for k, v in reference.items())
    # the same id works as a YAML-style block source (one loader for both paths), and is what a save records
    same = build_block({"kind": "llm_block", "source": "tiny-org/tiny-llama", "layers": 0, "dtype": "float32"}, 8)
    assert same.frozen_sha256 == block.frozen_sha256
    meta = json.loads((block.save_pretrained(tmp_path / "s") / "block_config.json").read_text())
    assert meta["options"]["source"] == "tiny-org/tiny-llama"


@pytest.mark.parametrize("kind", ["llm_block_finetuned", "random_trained", "random_frozen"])
def test_round_trip_of_the_control_kinds(llama_dir, tmp_path, kind):
    """Kinds whose layers a rebuild cannot restore (trained, or random) save the layers with the adapters."""
    block = FrozenLLMBlock.from_pretrained(llama_dir, visual_dim=8, dtype="float32", kind=kind)
    _randomise_adapters(block)
    with torch.no_grad():
        for p in block.layers.parameters():
            p.add_(0.01)  # as if trained: away from both the source and the random init
    x = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = block(x)
    saved = block.save_pretrained(tmp_path / kind)
    assert any(k.startswith("layers.") for k in load_file(str(saved / "adapters.safetensors")))
    again = FrozenLLMBlock.from_pretrained(saved)
    assert again.kind == kind
    with torch.no_grad():
        assert torch.equal(again(x), want)
