"""The block seam: a registry of kinds, each with its own config, all keeping one forward contract."""

import importlib.metadata
import sys

import pytest
import torch
from omegaconf import OmegaConf
from tiny_llms import save_tiny
from torch import nn

from mmllm import ConfigError, block_kinds, build_block, build_visual_llm_layer, register_block
from mmllm.blocks import BlockConfig, LLMBlockConfig, registry

VISUAL = 12
BUILTIN = ["llm_block", "llm_block_finetuned", "mlp", "none", "random_frozen", "random_trained"]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    save_tiny("llama", folder)
    return folder


@pytest.fixture
def clean_registry(monkeypatch):
    """Kinds registered by a test disappear after it."""
    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))
    monkeypatch.setattr(registry, "_BROKEN", {})


def test_builtin_kinds_are_listed():
    assert set(BUILTIN) <= set(block_kinds())
    assert build_visual_llm_layer is build_block


@pytest.mark.parametrize("kind", BUILTIN)
def test_every_kind_keeps_the_forward_contract(llama_dir, kind):
    options = {"kind": kind, "source": str(llama_dir)}
    if kind not in ("mlp", "none"):
        options["dtype"] = "float32"
    block = build_block(options, VISUAL)
    x = torch.randn(2, 5, VISUAL, requires_grad=True)
    pad = torch.tensor([[False] * 5, [False] * 2 + [True] * 3])
    modality_ids = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 0, 0, 0]])
    out = block(x, padding_mask=pad, modality_ids=modality_ids)  # context a kind does not use is ignored
    assert out.shape == (2, 5, VISUAL)
    torch.testing.assert_close(block(x, pad), out)
    if kind == "none":  # the identity on real tokens; padded tokens come out as zeros, as for every kind
        assert torch.equal(out[~pad], x[~pad]) and torch.all(out[1, 2:] == 0)
        return
    assert torch.all(out[1, 2:] == 0)  # padded tokens come out as zeros
    out.square().sum().backward()
    assert x.grad[0].abs().sum() > 0  # gradients reach the input


def test_config_round_trips_and_accepts_omegaconf(llama_dir):
    options = OmegaConf.create({"kind": "random_frozen", "source": str(llama_dir), "layers": [0, 2], "dtype": "fp32"})
    cfg = registry.parse_block_options(options, VISUAL)
    assert type(cfg).kind == "random_frozen" and cfg.layers == [0, 2]
    again = registry.parse_block_options(cfg.to_dict(), VISUAL)
    assert again == cfg


def test_no_options_means_no_block():
    assert build_block(None, VISUAL).kind == "none"
    assert build_block({}, VISUAL).kind == "none"


class ScaleConfig(BlockConfig):
    factor: float = 2.0


class Scale(nn.Module):
    def __init__(self, cfg: ScaleConfig):
        super().__init__()
        self.factor = cfg.factor

    def forward(self, x, padding_mask=None, **context):
        return x * self.factor


def test_a_new_kind_registers_itself(clean_registry):
    register_block("scale", ScaleConfig)(Scale)
    assert "scale" in block_kinds()
    block = build_block({"kind": "scale", "factor": 3.0}, VISUAL)
    x = torch.randn(1, 2, VISUAL)
    assert torch.equal(block(x), 3 * x)
    with pytest.raises(ConfigError, match="kind 'scale' has no option 'factr' \\(did you mean 'factor'\\?\\)"):
        build_block({"kind": "scale", "factr": 3.0}, VISUAL)
    with pytest.raises(ConfigError, match="registered twice"):
        register_block("scale", ScaleConfig)(lambda cfg: Scale(cfg))
    with pytest.raises(ConfigError, match="already the config of block kind 'scale'"):
        register_block("scale2", ScaleConfig)(Scale)
    with pytest.raises(ConfigError, match="must subclass"):
        register_block("plain", dict)(Scale)


def test_kinds_found_through_entry_points(clean_registry, monkeypatch, tmp_path):
    (tmp_path / "my_blocks_plugin.py").write_text(
        "from mmllm.blocks import BlockConfig, register_block\n"
        "from torch import nn\n"
        "class HalfConfig(BlockConfig):\n    pass\n"
        "@register_block('half', HalfConfig)\n"
        "class Half(nn.Module):\n"
        "    def __init__(self, cfg):\n        super().__init__()\n"
        "    def forward(self, x, padding_mask=None, **context):\n        return x / 2\n"
    )
    (tmp_path / "broken_blocks_plugin.py").write_text("raise ImportError('missing dependency xyz')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [
        importlib.metadata.EntryPoint("half", "my_blocks_plugin", registry.ENTRY_POINT_GROUP),
        importlib.metadata.EntryPoint("broken", "broken_blocks_plugin", registry.ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: points if group else [])
    monkeypatch.setattr(registry, "_DISCOVERED", False)
    with pytest.warns(UserWarning, match="broken_blocks_plugin.*missing dependency xyz"):
        block = build_block({"kind": "half"}, VISUAL)  # an unregistered kind triggers discovery
    assert torch.equal(block(torch.ones(1, 1, VISUAL)), torch.full((1, 1, VISUAL), 0.5))
    with pytest.raises(ConfigError, match="unknown block kind 'twice'.*failed to import.*broken_blocks_plugin"):
        build_block({"kind": "twice"}, VISUAL)
    sys.modules.pop("my_blocks_plugin", None)


def test_frozen_block_class_takes_only_block_configs():
    with pytest.raises(ConfigError, match="takes an LLMBlockConfig"):
        from mmllm import FrozenLLMBlock

        FrozenLLMBlock({"visual_dim": 8})
    assert issubclass(LLMBlockConfig, BlockConfig)
