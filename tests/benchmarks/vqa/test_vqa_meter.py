"""METER fidelity of the VQA task: the classifier's layer shapes, the two soft-score schemes on
hand-worked counts (METER's checked against the official accuracy), the per-module learning rates
of the METER configs, and the block's insertion depth in METER's fusion stack."""

import pytest
import torch
from conftest import ROOT
from tiny_llms import save_tiny
from torch import nn

from mmllm.config import load_config
from mmllm.engine.schedule import build_scheduler
from mmllm.errors import ConfigError
from mmllm.params import param_groups
from mmllm_vqa.data import soft_scores
from mmllm_vqa.metrics import question_accuracy
from mmllm_vqa.model import VQAModel, create_vqa_model
from mmllm_vqa.task import METERVQADataOptions, VQAModelOptions


class _Backbone(nn.Module):
    hidden = 8


def test_vqa_head_is_meters():
    """METER's vqa_classifier: Linear(2h, 2h) -> LayerNorm(2h) -> GELU -> Linear(2h, answers)."""
    head = VQAModel(_Backbone(), num_answers=13).vqa_head
    assert [type(m) for m in head] == [nn.Linear, nn.LayerNorm, nn.GELU, nn.Linear]
    assert (head[0].in_features, head[0].out_features) == (16, 16)
    assert head[1].normalized_shape == (16,)
    assert (head[3].in_features, head[3].out_features) == (16, 13)
    assert sum(p.numel() for p in head.parameters()) == (16 * 16 + 16) + 2 * 16 + (16 * 13 + 13)


def _answers(counts: dict[str, int]) -> list[dict]:
    return [{"answer": a, "answer_id": i} for a, n in counts.items() for i in range(n)]


@pytest.mark.parametrize(
    "n, meter, min3", [(1, 0.3, 1 / 3), (2, 0.6, 2 / 3), (3, 0.9, 1.0), (4, 1.0, 1.0), (7, 1.0, 1.0)]
)
def test_soft_scores_by_hand(n, meter, min3):
    answers = _answers({"red": n, "blue": 10 - n})
    index = {"red": 0}
    assert soft_scores(answers, index, "meter") == {0: pytest.approx(meter)}
    assert soft_scores(answers, index, "vqa_min3") == {0: pytest.approx(min3)}


@pytest.mark.parametrize("n", range(1, 11))
def test_meter_scores_equal_the_official_accuracy_with_10_annotators(n):
    """With 10 annotators, the official leave-one-out mean of min(1, matches/3) is 0.3/0.6/0.9/1.0."""
    answers = [{"answer": "red" if i < n else "blue", "answer_id": i + 1} for i in range(10)]
    assert soft_scores(answers, {"red": 0}, "meter")[0] == pytest.approx(question_accuracy("red", answers))


def test_soft_score_option():
    assert METERVQADataOptions.model_fields["soft_score"].default == "meter"
    cfg = load_config(ROOT / "configs/vqa/easyvqa_meter_smollm2.yaml")
    assert cfg.datasets.mmllm_vqa.soft_score == "meter"
    with pytest.raises(ConfigError, match="soft_score must be one of"):
        soft_scores(_answers({"red": 2}), {"red": 0}, "vqa")


def _tiny_options(source, **extra) -> VQAModelOptions:
    return VQAModelOptions.model_validate(
        {
            "vision": {"vit": {"image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "heads": 2}},
            "text": {
                "name": "minilm-l6",
                "random_init": True,
                "config_overrides": {
                    "num_hidden_layers": 1,
                    "hidden_size": 32,
                    "num_attention_heads": 2,
                    "intermediate_size": 64,
                },
            },
            "hidden_size": 32,
            "fusion_layers": 1,
            "num_heads": 2,
            "dropout": 0.0,
            "llm_block": {"kind": "llm_block", "source": str(source), "layers": "last", "dtype": "float32"},
            **extra,
        }
    )


def _meter_factor(name: str) -> float:
    """The expected multiple of the base LR, written out from METER's set_schedule (substring rules
    'vqa_classifier' -> x50, 'cross_modal' -> x5, the rest x1) and the paper's adapters at 10x."""
    if name.startswith("vqa_head."):
        return 50.0
    cross_modal = ("image_proj", "text_proj", "image_layers", "text_layers", "image_pooler", "text_pooler")
    if any(name.startswith(f"backbone.{m}.") for m in cross_modal):
        return 5.0
    if name.startswith(("backbone.llm_block.adapter_in.", "backbone.llm_block.adapter_out.")):
        return 10.0
    if name.startswith(("backbone.vision.", "backbone.text.", "backbone.modality_embed.")):
        return 1.0
    raise AssertionError(f"parameter {name} has no expected LR")


def test_main_job_config_runs_the_short_budget_recipe(tmp_path):
    """The main job (configs/vqa/easyvqa_meter_smollm2.yaml) trains at one LR, the pretrained text encoder at x0.1
    and the block's adapters at x2 (why not METER's ratios: docs/results.md), for one whole epoch in fp32."""
    save_tiny("llama", tmp_path / "llm")
    model = create_vqa_model(_tiny_options(tmp_path / "llm"), num_answers=5)
    run = load_config(ROOT / "configs/vqa/easyvqa_meter_smollm2.yaml").run
    base = float(run.init_lr)
    assert base == 3.0e-4 and run.precision == "fp32" and run.max_epoch == 1 and run.get("max_steps") is None
    groups = param_groups(model, base, float(run.weight_decay), dict(run.lr_multipliers))
    for g in groups:
        for name in g["names"]:
            expected = 0.1 if name.startswith("backbone.text.") else 2.0 if ".adapter_" in name else 1.0
            assert g["lr"] == pytest.approx(base * expected), name


@pytest.mark.parametrize("config", ["configs/lavis/vqa_easyvqa.yaml"])
def test_meter_config_param_groups_get_the_multiplied_lrs(tmp_path, config):
    save_tiny("llama", tmp_path / "llm")
    model = create_vqa_model(_tiny_options(tmp_path / "llm"), num_answers=5)
    run = load_config(ROOT / config).run
    base = float(run.init_lr)
    groups = param_groups(model, base, float(run.weight_decay), dict(run.lr_multipliers))
    lr_of = {name: g["lr"] for g in groups for name in g["names"]}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(lr_of) == trainable and not any(".layers." in n and "llm_block" in n for n in lr_of)  # frozen: none
    for name, lr in lr_of.items():
        assert lr == pytest.approx(base * _meter_factor(name)), name
    assert {round(lr / base, 6) for lr in lr_of.values()} == {1.0, 5.0, 10.0, 50.0}
    # the paper's rule, stated directly: adapters at 10x the image encoder's LR
    vision_lrs = {lr for name, lr in lr_of.items() if name.startswith("backbone.vision.")}
    assert len(vision_lrs) == 1 and lr_of["backbone.llm_block.adapter_in.weight"] == pytest.approx(
        10 * vision_lrs.pop()
    )
    # the schedule scales every group by the same factor: the ratios hold at every step
    for g in groups:
        g.pop("names")
    optimizer = torch.optim.AdamW(groups, lr=base)
    scheduler = build_scheduler(optimizer, "cosine", total_steps=10, warmup_steps=2)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
        assert [g["lr"] / g["lr_scale"] for g in optimizer.param_groups] == pytest.approx(
            [optimizer.param_groups[0]["lr"] / optimizer.param_groups[0]["lr_scale"]] * len(optimizer.param_groups)
        )


def test_block_before_or_after_fusion(tmp_path):
    """after_fusion: the fused image tokens pass through the block; before_fusion: the unimodal ones
    (so retrieval's contrastive features too), and the fused ones do not pass it again."""
    save_tiny("llama", tmp_path / "llm")
    images = torch.randn(2, 3, 32, 32)
    ids = torch.tensor([[101, 2054, 102, 0], [101, 2054, 2003, 102]])
    mask = (ids != 0).long()
    for at in ("after_fusion", "before_fusion"):
        torch.manual_seed(0)
        model = create_vqa_model(_tiny_options(tmp_path / "llm", llm_block_at=at), num_answers=5).eval()
        calls = []
        model.backbone.llm_block.register_forward_hook(lambda m, args, out, seen=calls: seen.append(args[0].shape))
        with torch.no_grad():
            unimodal = model.backbone.encode_image(images)
            n_unimodal = len(calls)
            model(images, ids, mask)
        assert model.backbone.llm_block_at == at
        assert n_unimodal == (1 if at == "before_fusion" else 0)  # only before_fusion touches unimodal tokens
        assert len(calls) == (2 if at == "before_fusion" else 1)  # the full forward: the block runs once
        assert unimodal.shape == (2, 5, 32)  # CLS + (32/16)^2 patches
    with pytest.raises(Exception, match="llm_block_at"):
        _tiny_options(tmp_path / "llm", llm_block_at="middle")
