"""The video ViT: tubelet embedding and position table against hand references, and the LLM block
sitting exactly after ViT block k (checked with forward hooks)."""

import math

import pytest
import torch

from mmllm.errors import ConfigError
from vision.action.model import VideoViTOptions, create_videovit_model, sinusoid_table

TINY_LLM = {
    "kind": "random_frozen",
    "llm_config": {
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
    },
    "layers": "last",
    "dtype": "float32",
}


def options(**overrides):
    base = dict(
        num_classes=5,
        img_size=32,
        num_frames=4,
        patch_size=16,
        tubelet_size=2,
        embed_dim=24,
        depth=3,
        num_heads=2,
        llm_block=TINY_LLM,
    )
    return {**base, **overrides}


def test_tubelet_embedding_is_a_linear_map_of_each_tubelet():
    torch.manual_seed(0)
    model = create_videovit_model(options(llm_block=None))
    video = torch.randn(2, 3, 4, 32, 32)
    tokens = model.patch_embed(video)
    assert tokens.shape == (2, 2 * 2 * 2, 24)
    conv = model.patch_embed.proj
    # token order: time slice, then row, then column; each token = W . tubelet + b
    for b in range(2):
        for n, (t, r, c) in enumerate((t, r, c) for t in range(2) for r in range(2) for c in range(2)):
            tubelet = video[b, :, 2 * t : 2 * t + 2, 16 * r : 16 * r + 16, 16 * c : 16 * c + 16]
            expected = conv.weight.flatten(1) @ tubelet.flatten() + conv.bias
            torch.testing.assert_close(tokens[b, n], expected, rtol=1e-5, atol=1e-5)


def test_sinusoid_table_matches_the_formula():
    table = sinusoid_table(7, 6)
    assert table.shape == (1, 7, 6)
    for pos in range(7):
        for i in range(3):
            angle = pos / 10000 ** (2 * i / 6)
            assert table[0, pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[0, pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


@pytest.mark.parametrize("insert_after,expected", [(0, 0), (1, 1), (-1, 2), (2, 2)])
def test_block_sits_after_vit_block_k(insert_after, expected):
    torch.manual_seed(0)
    model = create_videovit_model(options(insert_after=insert_after)).eval()
    calls = []

    def hook(name):
        return lambda module, args, output: calls.append((name, args[0].detach().clone(), output.detach().clone()))

    for i, block in enumerate(model.blocks):
        block.register_forward_hook(hook(f"vit{i}"))
    model.llm_block.register_forward_hook(hook("llm"))
    model.fc_norm.register_forward_hook(hook("fc_norm"))
    with torch.no_grad():
        model(torch.randn(2, 3, 4, 32, 32))
    names = [c[0] for c in calls]
    order = [f"vit{i}" for i in range(expected + 1)] + ["llm"] + [f"vit{i}" for i in range(expected + 1, 3)]
    assert names == order + ["fc_norm"]
    at = names.index("llm")
    assert torch.equal(calls[at][1], calls[at - 1][2])  # the block sees ViT block k's output
    assert not torch.equal(calls[at][2], calls[at][1])  # ... and changes it
    following = calls[at + 1]
    if following[0] == "fc_norm":  # the last block: its output is mean-pooled before the norm and head
        torch.testing.assert_close(following[1], calls[at][2].mean(dim=1))
    else:
        assert torch.equal(following[1], calls[at][2])


def test_frozen_block_is_not_trained_and_no_block_is_identity():
    model = create_videovit_model(options())
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("llm_block.layers.", "llm_block.final_norm.")) for n in frozen)
    assert any(n.startswith("llm_block.adapter") and p.requires_grad for n, p in model.named_parameters())
    plain = create_videovit_model(options(llm_block={**TINY_LLM, "kind": "none"}))
    x = torch.randn(3, 8, 24)
    assert torch.equal(plain.llm_block(x), x)
    logits = plain(torch.randn(2, 3, 4, 32, 32))
    assert logits.shape == (2, 5)


def test_single_frame_model_and_bad_options():
    one = create_videovit_model(options(num_frames=1, tubelet_size=1, llm_block=None))
    assert one(torch.randn(2, 3, 1, 32, 32)).shape == (2, 5)
    with pytest.raises(ValueError, match=r"\(C, T, H, W\) = \(3, 1, 32, 32\)"):
        one(torch.randn(2, 3, 4, 32, 32))
    with pytest.raises(ConfigError, match=r"insert_after must be in \[-3, 2\] for depth 3, got 3"):
        VideoViTOptions.parse(options(insert_after=3), "model")
    with pytest.raises(ConfigError, match="num_frames 4 is not a multiple of tubelet_size 3"):
        VideoViTOptions.parse(options(tubelet_size=3), "model")
    with pytest.raises(ConfigError, match="model.pos_embd: unknown key"):
        VideoViTOptions.parse(options(pos_embd="learned"), "model")
    learned = create_videovit_model(options(pos_embed="learned", llm_block=None))
    assert learned.pos_embed.requires_grad and learned.pos_embed.shape == (1, 8, 24)
