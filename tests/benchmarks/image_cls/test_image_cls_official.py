"""Image classification against the official LM4VisualEncoding ``image_classification`` code
(github.com/ziqipang/LM4VisualEncoding, commit e34e919): which parameters take no weight decay (``optimizer_utils.py``
l. 20-34 and 96-100, ``models/vit_llama.py`` l. 112-113), how the adapters start (``vit_llama.py``
l. 103-109 and 172-177: timm's trunc_normal_ std .02, zero biases) and the ImageNet warm-up (README l. 24-26:
``--warmup-epochs 20``; ``main.py`` l. 94: ``--warmup-lr 1e-6``).
"""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from conftest import ROOT
from tiny_llms import save_tiny

from mmllm.params import param_groups
from vision.classification.model import create_vit_cls_model, init_adapters
from vision.classification.task import ClsModelOptions

# vit_llama.py l. 112-113, written out here rather than imported
OFFICIAL_SKIP_LIST = {"pos_embed", "cls_token", "dist_token"}


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_llama")
    save_tiny("llama", folder)  # hidden size 48
    return str(folder)


def _model(tiny_llm, embed_dim=32, adapter_bias=False, **extra):
    vit = {"img_size": 16, "patch_size": 8, "embed_dim": embed_dim, "depth": 2, "num_heads": 2}
    block = {"kind": "llm_block", "source": tiny_llm, "dtype": "float32", "adapter_bias": adapter_bias}
    torch.manual_seed(0)
    return create_vit_cls_model(
        ClsModelOptions(vit="vit_tiny_patch16_224", vit_kwargs=vit, llm_block=block, **extra), num_classes=5
    )


def _official_no_decay(model) -> set[str]:
    """optimizer_utils.add_weight_decay l. 23-31 on our names: trainable only; 1-d, ``.bias`` or in the skip list
    (the official names are the ViT's own, ours sit under ``vit.``)."""
    out = set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        own = name.removeprefix("vit.")
        if len(p.shape) == 1 or name.endswith(".bias") or own in OFFICIAL_SKIP_LIST:
            out.add(name)
    return out


def test_no_weight_decay_names_are_the_official_ones(tiny_llm):
    """``model.no_weight_decay: official``: the engine's groups (the ones the trainer builds) skip the official names."""
    model = _model(tiny_llm, no_weight_decay="official")
    groups = param_groups(model, lr=1e-3, weight_decay=0.05)
    zero = {n for g in groups if g["weight_decay"] == 0.0 for n in g["names"]}
    decayed = {n for g in groups if g["weight_decay"] == 0.05 for n in g["names"]}
    assert zero == _official_no_decay(model)
    assert {"vit.pos_embed", "vit.cls_token"} <= zero  # 3-d tensors: the 1-d rule alone would decay them
    assert {"llm_block.adapter_in.weight", "llm_block.adapter_out.weight", "vit.patch_embed.proj.weight"} <= decayed
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert zero | decayed == trainable and not zero & decayed
    assert not any(n.startswith("llm_block.layers.") for n in trainable)  # the frozen LLM layer is in no group
    assert all(g["lr"] == 1e-3 for g in groups)
    # per-module LR multipliers still apply to both halves
    scaled = param_groups(model, 1e-3, 0.05, {"vit.": 2.0})
    assert {g["lr"] for g in scaled if "vit.pos_embed" in g["names"]} == {2e-3}
    # the default keeps the committed runs' rule: only 1-d tensors, biases and norms skip the decay
    plain = param_groups(_model(tiny_llm), lr=1e-3, weight_decay=0.05)
    assert {"vit.pos_embed", "vit.cls_token"} <= {n for g in plain if g["weight_decay"] == 0.05 for n in g["names"]}


def test_trunc_normal_adapter_init_std(tiny_llm):
    """A 768 -> 48 -> 768 adapter pair (73,728 weights): the std is 0.02 and the shape normal (68.3 % of the
    weights within one std); the default init (PyTorch's nn.Linear, uniform +-1/sqrt(fan_in)) is not."""
    model = _model(tiny_llm, embed_dim=768, adapter_init="trunc_normal")
    weights = torch.cat([model.llm_block.adapter_in.weight.flatten(), model.llm_block.adapter_out.weight.flatten()])
    assert weights.numel() == 2 * 768 * 48
    assert weights.std().item() == pytest.approx(0.02, rel=0.02)
    assert weights.mean().item() == pytest.approx(0.0, abs=5e-4)
    assert (weights.abs() < 0.02).float().mean().item() == pytest.approx(math.erf(1 / math.sqrt(2)), abs=0.01)
    default = _model(tiny_llm, embed_dim=768).llm_block.adapter_out.weight  # fan_in 48
    assert default.std().item() == pytest.approx(1 / math.sqrt(3 * 48), rel=0.05)
    # biases (when the block has them) start at zero, as init_weights_vit_timm (l. 176-177)
    biased = _model(tiny_llm, adapter_bias=True).llm_block
    assert torch.count_nonzero(biased.adapter_in.bias) > 0  # PyTorch's default init
    init_adapters(biased, "trunc_normal")
    assert torch.count_nonzero(biased.adapter_in.bias) == 0 and torch.count_nonzero(biased.adapter_out.bias) == 0


def test_imagenet_config_follows_the_official_recipe():
    cfg = yaml.safe_load((ROOT / "configs/vision/image_cls_imagenet_deit_small.yaml").read_text())
    steps_per_epoch = 1_281_167 // 1024  # ImageNet-1k train images at the official total batch, drop_last
    assert cfg["run"]["warmup_steps"] == 20 * steps_per_epoch
    assert cfg["run"]["warmup_lr"] == 1e-6
    assert cfg["model"]["adapter_init"] == "trunc_normal"
    assert ClsModelOptions().adapter_init == "default"  # committed runs of the other configs stay as they were
