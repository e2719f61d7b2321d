"""FrozenLLMBlock output vs an independent plain-torch reference, per architecture."""

import pytest
import torch
from llm_reference import final_norm, layer_forward
from tiny_llms import ARCHS, final_norm_state, layer_state, save_tiny

from mmllm import FrozenLLMBlock, LLMBlockConfig

VISUAL = 20


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {arch: (root / arch, save_tiny(arch, root / arch)) for arch in ARCHS}


def reference(block, model, arch, layers, x, pad, norm):
    h = x @ block.adapter_in.weight.T
    for i in layers:
        h = layer_forward(h, layer_state(model, arch, i), model.config, arch, pad)
    if norm == "pretrained":
        h = final_norm(h, final_norm_state(model, arch), model.config, arch)
    elif norm == "unit":
        h = final_norm(h, None, model.config, arch)
    out = h @ block.adapter_out.weight.T
    if pad is not None:
        out = out.masked_fill(pad[..., None], 0.0)
    return out


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("norm", ["unit", "pretrained", "none"])
def test_matches_reference(checkpoints, arch, attn, norm):
    folder, model = checkpoints[arch]
    block = FrozenLLMBlock(
        LLMBlockConfig(
            visual_dim=VISUAL, source=str(folder), dtype="float32", attn_implementation=attn, final_norm=norm
        )
    )
    assert block.layer_indices == [3]  # default: last layer
    torch.manual_seed(1)
    x = torch.randn(3, 7, VISUAL)  # 7 tokens > gemma3 sliding_window=3: the window must not apply
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 5:] = True
    pad[2, 2:] = True
    with torch.no_grad():
        got = block(x, pad)
        want = reference(block, model, arch, [3], x, pad, norm)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(block(x), reference(block, model, arch, [3], x, None, norm), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("layers,expected", [("-2:", [2, 3]), ([0, 2], [0, 2]), ("first", [0]), ("middle", [2])])
def test_layer_selection_matches_stacked_reference(checkpoints, arch, layers, expected):
    folder, model = checkpoints[arch]
    block = FrozenLLMBlock(LLMBlockConfig(visual_dim=VISUAL, source=str(folder), dtype="float32", layers=layers))
    assert block.layer_indices == expected
    x = torch.randn(2, 5, VISUAL)
    with torch.no_grad():
        torch.testing.assert_close(
            block(x), reference(block, model, arch, expected, x, None, "unit"), atol=2e-5, rtol=1e-4
        )


@pytest.mark.parametrize("arch", ARCHS)
def test_padding_changes_nothing_for_real_tokens(checkpoints, arch):
    folder, _ = checkpoints[arch]
    block = FrozenLLMBlock(LLMBlockConfig(visual_dim=VISUAL, source=str(folder), dtype="float32"))
    short = torch.randn(1, 4, VISUAL)
    padded = torch.cat([short, 100 * torch.randn(1, 3, VISUAL)], dim=1)  # junk in the padded slots
    pad = torch.tensor([[False] * 4 + [True] * 3])
    with torch.no_grad():
        alone = block(short)
        batched = block(padded, pad)
    torch.testing.assert_close(batched[:, :4], alone, atol=1e-5, rtol=1e-5)
    assert torch.all(batched[:, 4:] == 0)


@pytest.mark.parametrize("arch", ARCHS)
def test_no_causal_mask_first_token_sees_last(checkpoints, arch):
    folder, _ = checkpoints[arch]
    block = FrozenLLMBlock(LLMBlockConfig(visual_dim=VISUAL, source=str(folder), dtype="float32"))
    x = torch.randn(1, 6, VISUAL)
    y = x.clone()
    y[0, -1] += 1.0
    with torch.no_grad():
        assert not torch.allclose(block(x)[0, 0], block(y)[0, 0])


@pytest.mark.parametrize("arch", ARCHS)
def test_no_positions_permutation_equivariant(checkpoints, arch):
    """Without positional information the block is equivariant to permuting tokens."""
    folder, _ = checkpoints[arch]
    block = FrozenLLMBlock(LLMBlockConfig(visual_dim=VISUAL, source=str(folder), dtype="float32"))
    x = torch.randn(2, 6, VISUAL)
    perm = torch.randperm(6)
    with torch.no_grad():
        torch.testing.assert_close(block(x[:, perm]), block(x)[:, perm], atol=1e-5, rtol=1e-5)


def test_bf16_close_to_fp32_and_grads_reach_input(checkpoints):
    folder, _ = checkpoints["llama"]
    torch.manual_seed(0)
    fp32 = FrozenLLMBlock(LLMBlockConfig(visual_dim=VISUAL, source=str(folder), dtype="float32"))
    bf16 = FrozenLLMBlock(LLMBlockConfig(visual_dim=VISUAL, source=str(folder), dtype="bfloat16"))
    bf16.load_state_dict(fp32.state_dict())
    assert bf16.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert bf16.adapter_in.weight.dtype == torch.float32
    x = torch.randn(2, 5, VISUAL, requires_grad=True)
    out = bf16(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fp32(x), atol=5e-2, rtol=5e-2)
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_gradient_checkpointing_same_output_and_grads(checkpoints):
    folder, _ = checkpoints["qwen2"]
    cfg = dict(visual_dim=VISUAL, source=str(folder), dtype="float32", layers="-2:")
    plain = FrozenLLMBlock(LLMBlockConfig(**cfg))
    ckpt = FrozenLLMBlock(LLMBlockConfig(**cfg, gradient_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    x1 = torch.randn(2, 5, VISUAL, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    plain(x1).sum().backward()
    ckpt(x2).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(plain.adapter_in.weight.grad, ckpt.adapter_in.weight.grad)
