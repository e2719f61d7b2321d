"""CLS→token attention recomputed from a module's own projections (Pang et al., ICLR 2024, §6), against
independent references: nn.MultiheadAttention's own returned weights, timm's unfused path (its softmax
seen by a hook on attn_drop), and an explicit softmax(q kᵀ · scale) written here from the weights."""

import math

import pytest
import torch
from timm.models.vision_transformer import Attention
from torch import nn

from mmllm.analysis.attention import CLSAttentionRecorder, attention_weights
from mmllm.errors import ConfigError


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_matches_its_own_weights(batch_first):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(12, 3, batch_first=batch_first).eval()
    x = torch.randn(2, 5, 12)
    x_in = x if batch_first else x.transpose(0, 1)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    _, reference = mha(x_in, x_in, x_in, key_padding_mask=pad, need_weights=True, average_attn_weights=True)
    ours = attention_weights(mha, x_in, x_in, x_in, key_padding_mask=pad, need_weights=False)
    assert ours.shape == (2, 5, 5)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)
    assert ours[1, :, 3:].abs().max() == 0  # padded keys get no attention


def test_multihead_attention_float_and_bool_attn_mask():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(3, 4, 8)
    for mask in (torch.randn(4, 4), torch.tensor([[False, True, False, False]] * 4)):
        _, reference = mha(x, x, x, attn_mask=mask, need_weights=True)
        torch.testing.assert_close(attention_weights(mha, x, x, x, attn_mask=mask), reference, atol=1e-6, rtol=1e-5)


def timm_reference(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """timm's own unfused softmax, head-averaged: fused_attn=False, the probabilities read at attn_drop."""
    seen = []
    handle = attn.attn_drop.register_forward_hook(lambda m, args, out: seen.append(out))
    attn.fused_attn = False
    with torch.no_grad():
        attn(x)
    handle.remove()
    attn.fused_attn = True
    return seen[0].mean(dim=1)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_timm_attention_matches_timm_unfused_softmax(qk_norm):
    torch.manual_seed(0)
    attn = Attention(16, num_heads=4, qkv_bias=True, qk_norm=qk_norm, norm_layer=nn.LayerNorm).eval()
    if qk_norm:  # non-trivial norms, so that skipping them would fail the test
        for norm in (attn.q_norm, attn.k_norm):
            nn.init.normal_(norm.weight, 1.0, 0.5)
            nn.init.normal_(norm.bias, 0.0, 0.5)
    x = torch.randn(2, 6, 16)
    torch.testing.assert_close(attention_weights(attn, x), timm_reference(attn, x), atol=1e-6, rtol=1e-5)


def test_timm_attention_against_explicit_softmax():
    torch.manual_seed(2)
    attn = Attention(8, num_heads=2, qkv_bias=False).eval()
    x = torch.randn(1, 3, 8)
    w = attn.qkv.weight  # rows: q (8), k (8), v (8); heads split the 8 features 4 + 4
    q, k = x[0] @ w[:8].T, x[0] @ w[8:16].T
    probs = []
    for h in range(2):
        qh, kh = q[:, 4 * h : 4 * h + 4], k[:, 4 * h : 4 * h + 4]
        probs.append(torch.softmax(qh @ kh.T / math.sqrt(4), dim=-1))
    expected = (probs[0] + probs[1]) / 2
    torch.testing.assert_close(attention_weights(attn, x)[0], expected.detach(), atol=1e-6, rtol=1e-5)


def test_recorder_keeps_cls_row_over_patches_of_each_call():
    torch.manual_seed(3)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(2, 5, 8)  # CLS + 4 patches
    with CLSAttentionRecorder(mha, prefix=1) as recorder, torch.no_grad():
        out = mha(x[:1], x[:1], x[:1], need_weights=False)[0]
        mha(x[1:], x[1:], x[1:], need_weights=False)
    _, reference = mha(x, x, x, need_weights=True)
    rows = recorder.result()
    assert rows.shape == (2, 4)
    torch.testing.assert_close(rows, reference[:, 0, 1:], atol=1e-6, rtol=1e-5)
    assert not mha._forward_pre_hooks  # the hook is gone after the block
    torch.testing.assert_close(out, mha(x[:1], x[:1], x[:1])[0])  # the module's own output is untouched


def test_unsupported_modules_are_refused():
    with pytest.raises(ConfigError, match="neither"):
        CLSAttentionRecorder(nn.Linear(4, 4), prefix=1)
    with pytest.raises(ConfigError, match="CLS token"):
        CLSAttentionRecorder(nn.MultiheadAttention(4, 1), prefix=0)
    with pytest.raises(ConfigError, match="never called"):
        CLSAttentionRecorder(nn.MultiheadAttention(4, 1), prefix=1).result()
