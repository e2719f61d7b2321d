"""LLaViT's three switches: visual Q/K/V copies (exactly the baseline at init), the block mask
(against a hand-built one, and its effect), multi-depth encoder features, and cached generation
under both changes against a no-cache recomputation. Tiny random LMs only."""

import copy

import pytest
import torch
from tiny_llms import tiny_model

from mmllm.models.llava import VisualPrefixLM
from mmllm.models.llavit import ModalityContext, ModalityLinear, install_visual_qkv, visual_block_mask

PAD, EOS = 0, 3


def batch(rows):
    width = max(len(r) for r in rows)
    return (
        torch.tensor([r + [PAD] * (width - len(r)) for r in rows]),
        torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows]),
    )


def pair(arch="llama", **options):
    """The baseline and a LLaViT model sharing the LM weights and the projector."""
    lm = tiny_model(arch, seed=0)
    base = VisualPrefixLM(lm, 8, "linear", [5, 6], PAD, [EOS])
    other = VisualPrefixLM(copy.deepcopy(lm), 8, "linear", [5, 6], PAD, [EOS], **options)
    other.projector.load_state_dict(base.projector.state_dict())
    return base.eval(), other.eval()


INPUTS = dict(prompts=[[7, 8, 9], [10]], answers=[[12, EOS], [13, 14, EOS]])


def logits(model, visual):
    return model.logits(visual, *batch(INPUTS["prompts"]), *batch(INPUTS["answers"]))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@torch.no_grad()
def test_visual_qkv_at_init_reproduces_the_baseline_exactly(arch):
    base, llavit = pair(arch, visual_qkv=True)
    n = sum(isinstance(m, ModalityLinear) for m in llavit.lm.modules())
    assert n == 3 * llavit.lm.config.num_hidden_layers  # q, k, v in every layer
    visual = torch.randn(2, 3, 8)
    assert torch.equal(logits(base, visual), logits(llavit, visual))
    # different visual copies: text before the image is untouched, everything after it changes
    for m in llavit.lm.modules():
        if isinstance(m, ModalityLinear):
            m.visual.weight.add_(0.05 * torch.randn_like(m.visual.weight))
    a, b = logits(base, visual), logits(llavit, visual)
    assert torch.equal(a[0, :2], b[0, :2])  # row 0 is unpadded: its prefix comes first
    assert not torch.allclose(a[:, -1], b[:, -1])


def test_visual_qkv_copies_train_while_the_lm_stays_frozen():
    _, llavit = pair(visual_qkv=True)
    llavit.freeze_lm()
    loss = llavit(torch.randn(2, 3, 8), *batch(INPUTS["prompts"]), *batch(INPUTS["answers"]))
    loss.backward()
    grads = {n: p.grad for n, p in llavit.lm.named_parameters()}
    assert all(grads[n] is not None for n in grads if ".visual." in n)
    assert all(grads[n] is None for n in grads if ".visual." not in n)
    frozen = set(llavit.frozen_state_keys())
    assert "lm.model.layers.0.self_attn.q_proj.text.weight" in frozen
    assert "lm.model.layers.0.self_attn.q_proj.visual.weight" not in frozen


def test_modality_linear_routes_by_id():
    ctx = ModalityContext()
    text = torch.nn.Linear(4, 3)
    layer = ModalityLinear(text, ctx)
    with torch.no_grad():
        layer.visual.weight.mul_(2)
    x = torch.randn(1, 3, 4)
    ctx.ids = torch.tensor([[0, 1, 0]])
    out = layer(x)
    torch.testing.assert_close(out[0, [0, 2]], text(x[0, [0, 2]]))
    torch.testing.assert_close(out[0, 1], x[0, 1] @ (2 * text.weight).T + text.bias)
    ctx.ids = torch.tensor([[0, 1]])
    with pytest.raises(ValueError):
        layer(x)
    with pytest.raises(ValueError):
        install_visual_qkv(torch.nn.Sequential(torch.nn.Linear(2, 2)), ctx)


def test_block_mask_against_a_hand_built_one():
    # one row: [pad, text, vis, vis, vis, text, text]
    modality = torch.tensor([[0, 0, 1, 1, 1, 0, 0]])
    attention = torch.tensor([[0, 1, 1, 1, 1, 1, 1]])
    allowed = torch.tensor(
        [  # rows: queries, columns: keys
            [1, 0, 0, 0, 0, 0, 0],  # padding query: itself only
            [0, 1, 0, 0, 0, 0, 0],  # text: causal
            [0, 1, 1, 1, 1, 0, 0],  # visual: earlier text + every visual token
            [0, 1, 1, 1, 1, 0, 0],
            [0, 1, 1, 1, 1, 0, 0],
            [0, 1, 1, 1, 1, 1, 0],  # text after the image: causal (sees all visual tokens)
            [0, 1, 1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    mask = visual_block_mask(modality, attention, torch.float32)
    assert mask.shape == (1, 1, 7, 7)
    expected = torch.zeros(7, 7).masked_fill(~allowed, torch.finfo(torch.float32).min)
    assert torch.equal(mask[0, 0], expected)
    # with no visual token it is transformers' own causal + padding mask
    causal = visual_block_mask(torch.zeros_like(modality), attention, torch.float32)[0, 0]
    causal_allowed = torch.tensor(
        [[1, 0, 0, 0, 0, 0, 0]] + [[0] + [1] * q + [0] * (6 - q) for q in range(1, 7)], dtype=torch.bool
    )
    assert torch.equal(causal == 0, causal_allowed)


@torch.no_grad()
def test_bidirectional_visual_attention_takes_effect():
    base, llavit = pair(bidirectional_visual=True)
    visual = torch.randn(2, 3, 8)
    changed = visual.clone()
    changed[:, -1] += 1.0  # change only the LAST visual token
    a, b = logits(llavit, visual), logits(llavit, changed)
    # row 0 = [5, 6, v0, v1, v2, ...]: the text prefix cannot see the image; v0 sees v2 only bidirectionally
    assert torch.equal(a[0, :2], b[0, :2])
    assert not torch.allclose(a[0, 2], b[0, 2])
    c, d = logits(base, visual), logits(base, changed)
    assert torch.equal(c[0, :4], d[0, :4])  # causal baseline: v0, v1 never see v2


@torch.no_grad()
def test_custom_4d_causal_mask_equals_transformers_own_mask():
    """Our 4D path with no bidirectional block must give what the 2D mask gives inside transformers."""
    base, llavit = pair(bidirectional_visual=True)
    visual = torch.randn(2, 3, 8)
    inputs = base.assemble(visual, *batch(INPUTS["prompts"]), *batch(INPUTS["answers"]))
    mask4d = visual_block_mask(torch.zeros_like(inputs["modality_ids"]), inputs["attention_mask"], torch.float32)
    ref = base.lm(
        inputs_embeds=inputs["inputs_embeds"],
        attention_mask=inputs["attention_mask"],
        position_ids=inputs["position_ids"],
    ).logits
    got = base.lm(
        inputs_embeds=inputs["inputs_embeds"], attention_mask=mask4d, position_ids=inputs["position_ids"]
    ).logits
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(got[real], ref[real], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_cached_generation_matches_recomputation_with_both_changes():
    _, llavit = pair(visual_qkv=True, bidirectional_visual=True)
    for m in llavit.lm.modules():
        if isinstance(m, ModalityLinear):
            m.visual.weight.add_(0.05 * torch.randn_like(m.visual.weight))
    visual = torch.randn(2, 3, 8)
    prompts = INPUTS["prompts"]
    got = llavit.generate(visual, *batch(prompts), max_new_tokens=5, eos_ids=[63])
    for i in range(2):
        out = []
        for _ in range(5):  # no cache: the whole sequence again, generated tokens as text
            ids, mask = batch([prompts[i] + out])
            token = int(llavit.logits(visual[i : i + 1], ids, mask)[0, -1].argmax())
            if token == 63:
                break
            out.append(token)
        assert got[i] == out


def test_multi_depth_features_concatenate_encoder_depths():
    from mmllm.errors import ConfigError
    from mmllm.models.encoders import VisionOptions, build_vision_encoder
    from mmllm_vqa.generative_model import MultiDepthVision

    torch.manual_seed(0)
    enc = build_vision_encoder(
        VisionOptions(vit={"image_size": 32, "patch_size": 16, "width": 16, "layers": 3, "heads": 2})
    ).eval()
    images = torch.randn(2, 3, 32, 32)
    captured = []  # independent reference: each residual block's output, through the final LayerNorm
    hooks = [b.register_forward_hook(lambda m, i, o: captured.append(o)) for b in enc.visual.transformer.resblocks]
    final = enc(images)
    for h in hooks:
        h.remove()
    per_depth = [enc.visual.ln_post(t) for t in captured]
    with torch.no_grad():
        torch.testing.assert_close(MultiDepthVision(enc, None)(images), final)
        torch.testing.assert_close(MultiDepthVision(enc, [-1])(images), final)
        both = MultiDepthVision(enc, [-1, 0])
        assert both.out_dim == 32
        torch.testing.assert_close(both(images), torch.cat([per_depth[2], per_depth[0]], dim=-1))
    for bad in ([], [3], [0, -3]):
        with pytest.raises(ConfigError):
            MultiDepthVision(enc, bad)


def test_multi_depth_features_of_the_cnn_encoder():
    """A CNN's depths: its stages (hooked here on timm's own blocks), pooled onto the last grid, then its head."""
    from torch.nn import functional as F

    from mmllm.errors import ConfigError
    from mmllm.models.cnn_encoder import CNNOptions, CNNVisionEncoder
    from mmllm_vqa.generative_model import MultiDepthVision

    enc = CNNVisionEncoder(CNNOptions(image_size=64, weights=None)).eval()
    images = torch.randn(2, 3, 64, 64)
    stage_modules = [enc.net.get_submodule(info["module"]) for info in enc.net.feature_info]
    captured = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(k, o)) for k, m in enumerate(stage_modules)
    ]
    with torch.no_grad():
        head = enc.net.forward_features(images)  # [2, 1280, 2, 2]
        for h in hooks:
            h.remove()
        both = MultiDepthVision(enc, [-1, 3])
        assert both.out_dim == 1280 + enc.net.feature_info[3]["num_chs"]
        grid = torch.cat([head, F.adaptive_avg_pool2d(captured[3], head.shape[-2:])], dim=1)
        tokens = grid.flatten(2).transpose(1, 2)
        torch.testing.assert_close(both(images), torch.cat([tokens.mean(1, keepdim=True), tokens], 1))
        torch.testing.assert_close(MultiDepthVision(enc, None)(images), MultiDepthVision(enc, [-1])(images))
    for bad in ([], [6], [5, -1]):
        with pytest.raises(ConfigError):
            MultiDepthVision(enc, bad)
