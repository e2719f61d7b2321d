"""Layer-wise LR decay (``run.layer_decay``) on the action model, against scales computed by hand.

VideoMAE's fine-tuning (github.com/MCG-NJU/VideoMAE ``run_class_finetuning.py`` with ``optim_factory.py``'s
``LayerDecayValueAssigner``) gives layer id ``i`` of a depth-``L`` ViT the scale ``decay ** (L + 1 - i)``: id 0 =
patch and position embeddings, id ``b + 1`` = block ``b``, id ``L + 1`` = everything else (norm, head). For
``L = 2`` and decay 0.7 that is 0.343 / 0.49 / 0.7 / 1.0, written out below rather than recomputed.
"""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from tiny_llms import random_llama_block
from torch import nn

from mmllm.engine.run_config import RunConfig
from mmllm.engine.schedule import build_scheduler
from mmllm.errors import ConfigError
from mmllm.params import param_groups
from vision.action.model import VideoViTClassifier, create_videovit_model

LR, WD = 1e-3, 0.05
EMBED, BLOCK0, BLOCK1, TOP = 0.343, 0.49, 0.7, 1.0  # 0.7**3, 0.7**2, 0.7**1, 0.7**0

TINY_LLM = random_llama_block()


def model(**overrides) -> VideoViTClassifier:
    opts = dict(
        num_classes=5,
        img_size=32,
        num_frames=4,
        patch_size=16,
        tubelet_size=2,
        embed_dim=24,
        depth=2,
        num_heads=2,
        llm_block={"kind": "none"},
    )
    torch.manual_seed(0)
    return create_videovit_model({**opts, **overrides})


def hand_scale(name: str) -> float:
    if name.startswith("patch_embed.") or name == "pos_embed":
        return EMBED
    if name.startswith("blocks.0."):
        return BLOCK0
    if name.startswith("blocks.1."):
        return BLOCK1
    return TOP  # fc_norm, head


def optimizer_lrs(net: nn.Module, **kwargs) -> dict[str, tuple[float, float]]:
    """name -> (lr, weight decay) as the trainer builds them: param_groups, then AdamW."""
    groups = param_groups(net, LR, WD, **kwargs)
    for group in groups:
        group.pop("names")
    optim = torch.optim.AdamW(groups, lr=LR)
    by_id = {id(p): (g["lr"], g["weight_decay"]) for g in optim.param_groups for p in g["params"]}
    return {name: by_id[id(p)] for name, p in net.named_parameters() if p.requires_grad}


def test_scales_of_a_two_block_model():
    net = model()
    got = optimizer_lrs(net, layer_decay=0.7)
    assert set(got) == {n for n, _ in net.named_parameters()}
    for name, (lr, wd) in got.items():
        assert lr == pytest.approx(LR * hand_scale(name), rel=1e-12), name
        assert wd == (0.0 if name.endswith(".bias") or "norm" in name else WD), name


def test_learned_position_table_is_layer_zero():
    assert optimizer_lrs(model(pos_embed="learned"), layer_decay=0.7)["pos_embed"][0] == pytest.approx(LR * EMBED)


@pytest.mark.parametrize("insert_after,scale", [(0, BLOCK0), (-1, BLOCK1)])
def test_llm_block_adapters_count_as_the_block_they_follow(insert_after, scale):
    got = optimizer_lrs(model(llm_block=TINY_LLM, insert_after=insert_after), layer_decay=0.7)
    adapters = [n for n in got if n.startswith("llm_block.")]
    assert adapters == ["llm_block.adapter_in.weight", "llm_block.adapter_out.weight"]  # the frozen LLM: no group
    for name in adapters:
        assert got[name][0] == pytest.approx(LR * scale), name


def test_composes_with_lr_multipliers():
    net = model(llm_block=TINY_LLM, insert_after=0)
    got = optimizer_lrs(net, layer_decay=0.7, lr_multipliers={"llm_block.adapter": 10.0, "head.": 2.0})
    assert got["llm_block.adapter_in.weight"][0] == pytest.approx(LR * 10 * BLOCK0)
    assert got["head.weight"][0] == pytest.approx(LR * 2 * TOP)
    assert got["blocks.1.attn.qkv.weight"][0] == pytest.approx(LR * BLOCK1)


def test_composes_with_no_weight_decay():
    class Listing(VideoViTClassifier):
        def no_weight_decay(self) -> set[str]:
            return {"blocks.0.mlp.fc1.weight"}

    net = model()
    net.__class__ = Listing
    got = optimizer_lrs(net, layer_decay=0.7)
    assert got["blocks.0.mlp.fc1.weight"] == (pytest.approx(LR * BLOCK0), 0.0)
    assert got["blocks.0.mlp.fc2.weight"] == (pytest.approx(LR * BLOCK0), WD)


def test_schedule_keeps_the_ratios():
    groups = param_groups(model(), LR, WD, layer_decay=0.7)
    for group in groups:
        group.pop("names")
    optim = torch.optim.AdamW(groups, lr=LR)
    scheduler = build_scheduler(optim, "cosine", 10, 2)
    for _ in range(4):
        optim.step()
        scheduler.step()
    top = next(g["lr"] for g in optim.param_groups if g["lr_scale"] == 1.0)
    for group in optim.param_groups:
        assert group["lr"] == pytest.approx(top * group["lr_scale"], rel=1e-9)
    assert sorted({round(g["lr_scale"], 9) for g in optim.param_groups}) == [EMBED, BLOCK0, BLOCK1, TOP]


def test_off_by_default_and_refused_for_a_model_without_layers():
    net = model()
    assert {lr for lr, _ in optimizer_lrs(net).values()} == {LR}
    assert RunConfig(task="t", output_dir="o").layer_decay is None
    with pytest.raises(ConfigError, match="run.layer_decay=0.7 needs a model"):
        param_groups(nn.Linear(2, 2), LR, layer_decay=0.7)


@pytest.mark.parametrize("bad", [0, -0.5, 1.5])
def test_run_option_is_validated(bad):
    with pytest.raises(ValidationError):
        RunConfig(task="t", output_dir="o", layer_decay=bad)
