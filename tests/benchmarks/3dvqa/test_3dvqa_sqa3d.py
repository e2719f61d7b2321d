"""SQA3D's baseline on the 3D VQA task: LEO's ``clean_answer`` rules (cases written by hand from its rule
list), the MCAN fusion's shapes and parameter counts (counted by hand from the official module definitions:
MCAN's MHAtt = 4 biased h x h linears, FFN = h->ff->h, post-norm LayerNorms, AttFlat = MLP(h->mlp->glimpses) +
merge), its attention pattern, the situation loss against a hand computation, and a two-step run."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT
from test_3dvqa_train import DIST_VARS, setup, tiny_model_section  # noqa: F401  (module fixture)

from mmllm_3dvqa import eval3d
from mmllm_3dvqa.model import situation_loss
from mmllm_3dvqa.sqa3d import SA, SGA, AttFlat, MHAtt, SQA3DFusion

# ------------------------------------------------------------------ clean_answer (LEO's rules, by hand)
CLEAN = [
    ("  Two  Chairs ", "two chairs"),  # lower-case, trim, collapse spaces
    ("2", "two"),
    ("10", "ten"),
    ("0", "zero"),
    ("none", "zero"),
    ("23", "twenty-three"),
    ("21", "21"),
    ("12 chairs", "twelve chairs"),
    ("the chair", "chair"),
    ("a lamp", "lamp"),
    ("an apple", "apple"),
    ("on the table", "on table"),
    ("the", "the"),  # an article not followed by a word stays
    ("letf", "left"),
    ("let", "left"),
    ("rigth", "right"),
    ("rght", "right"),
    ("behine", "behind"),
    ("tv", "TV"),  # upper case, as LEO has it
    ("chai", "chair"),
    ("oclock", "o'clock"),
    ("o' clock", "o'clock"),
    ("backwards", "backward"),
    ("mat2", "mat"),
    ("no1", "no"),  # a digit glued to a word is dropped
    ("yes.", "yes"),
    ("left?!", "left"),
    ("it's", "it's"),
    ("left-side: 3", "left-side: three"),
    ("café", "caf"),  # non-ASCII letters are dropped before LEO's "ç" rule could fire
]


@pytest.mark.parametrize("raw,clean", CLEAN)
def test_clean_answer(raw, clean):
    assert eval3d.clean_answer(raw) == clean


def test_refined_match_uses_clean_answer_and_plain_em_does_not():
    assert eval3d.refined_match("2", ["two"]) and not eval3d.exact_match("2", ["two"])
    assert eval3d.refined_match("The chair", ["chair"])
    assert eval3d.refined_match("behine", ["behind"])
    assert not eval3d.refined_match("?", ["yes"])  # empty after cleaning: never a hit
    assert not eval3d.refined_match("3", ["two"])


# ------------------------------------------------------------------ MCAN fusion against hand counts
H, HEADS, FF, MLP, G = 32, 2, 64, 16, 2


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_parameter_counts_by_hand():
    mhatt = 4 * (H * H + H)  # linear_v, linear_k, linear_q, linear_merge
    ffn = (H * FF + FF) + (FF * H + H)
    ln = 2 * H
    assert n_params(MHAtt(H, HEADS, 0.0)) == mhatt == 4224
    assert n_params(SA(H, HEADS, FF, 0.0)) == mhatt + ffn + 2 * ln == 8544
    assert n_params(SGA(H, HEADS, FF, 0.0)) == 2 * mhatt + ffn + 3 * ln == 12832
    out = 2 * H  # AttFlat merges to 2h (MCAN's flat_out_size = 2 * hidden)
    assert n_params(AttFlat(H, MLP, G, out, 0.0)) == (H * MLP + MLP) + (MLP * G + G) + (H * G * out + out) == 4722
    for layers in (1, 3):  # SA x L on situation and on question, SGA x L guided by each
        assert n_params(SQA3DFusion(H, HEADS, layers, FF, 0.0)) == layers * (2 * 8544 + 2 * 12832)


def _inputs(b=2, ts=5, tq=7, no=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    s, q, o = (torch.randn(b, n, H, generator=g) for n in (ts, tq, no))
    s_pad = torch.zeros(b, ts, dtype=torch.bool)
    s_pad[1, 3:] = True
    q_pad = torch.zeros(b, tq, dtype=torch.bool)
    q_pad[0, 5:] = True
    return s, s_pad, q, q_pad, o


def test_fusion_shapes_and_who_attends_to_whom():
    torch.manual_seed(0)
    fusion = SQA3DFusion(H, HEADS, 2, FF, 0.0).eval()
    s, s_pad, q, q_pad, o = _inputs()
    s1, q1, o1 = fusion(s, s_pad, q, q_pad, o)
    assert s1.shape == s.shape and q1.shape == q.shape and o1.shape == o.shape
    # situation and question only self-attend: changing the question leaves the situation as it was
    q_other = q + 1.0
    s2, q2, o2 = fusion(s, s_pad, q_other, q_pad, o)
    assert torch.allclose(s1, s2) and not torch.allclose(q1, q2) and not torch.allclose(o1, o2)
    # the scene tokens attend to the situation
    s3, _, o3 = fusion(s + 1.0, s_pad, q, q_pad, o)
    assert not torch.allclose(o1, o3)
    # padded situation / question tokens are invisible to the other (unpadded) positions
    s_noise, q_noise = s.clone(), q.clone()
    s_noise[1, 3:] += 5.0
    q_noise[0, 5:] += 5.0
    s4, q4, o4 = fusion(s_noise, s_pad, q_noise, q_pad, o)
    assert torch.allclose(o1, o4, atol=1e-5)
    assert torch.allclose(s1[1, :3], s4[1, :3], atol=1e-5) and torch.allclose(q1[0, :5], q4[0, :5], atol=1e-5)


def test_attflat_is_a_masked_softmax_weighted_sum():
    torch.manual_seed(0)
    flat = AttFlat(H, MLP, 1, H, 0.0).eval()
    x = torch.randn(1, 4, H)
    mask = torch.tensor([[False, False, True, True]])
    scores = flat.score(torch.nn.functional.gelu(flat.fc(x)))[0, :2, 0]
    w = torch.exp(scores) / torch.exp(scores).sum()
    expected = flat.linear_merge((w[:, None] * x[0, :2]).sum(0))
    assert torch.allclose(flat(x, mask)[0], expected, atol=1e-5)


def test_heads_of_the_built_model_by_hand(tmp_path):
    """SQA3D's ``answer_cls`` (on [s, q, o], 3 * flat_out -> h -> answers) and ``aux_reg`` (on [s, o],
    2 * flat_out -> h -> 7), the three AttFlats, and the scene tokens' route through the fused stream."""
    from tiny_llms import save_tiny

    from mmllm_3dvqa.model import SceneQAModelOptions, create_3dvqa_model

    save_tiny("llama", tmp_path / "llm")
    section = tiny_model_section(tmp_path / "llm")
    section.update(
        arch_variant="sqa3d", sqa3d={"layers": 1, "ff_size": FF, "flat_mlp": MLP, "flat_glimpses": G, "flat_out": 48}
    )
    model = create_3dvqa_model(SceneQAModelOptions.model_validate(section), num_answers=5).eval()
    flat = 48
    assert n_params(model.answer_head) == (3 * flat * H + H) + (H * 5 + 5)
    assert n_params(model.situation_head) == (2 * flat * H + H) + (H * 7 + 7)
    for name in ("flat_s", "flat_q", "flat_o"):
        assert n_params(getattr(model, name)) == (H * MLP + MLP) + (MLP * G + G) + (H * G * flat + flat)
    assert n_params(model.fusion) == 2 * 8544 + 2 * 12832
    points = torch.rand(2, 96, 6)
    ids = torch.tensor([[101, 2000, 2001, 102], [101, 2002, 102, 0]])
    mask = (ids != 0).long()
    logits, pose = model(points, ids, mask, ids[:, :3], mask[:, :3])
    assert logits.shape == (2, 5) and pose.shape == (2, 7)
    seen = {}
    model.llm_block.register_forward_hook(lambda m, i, o: seen.update(shape=tuple(o.shape)))  # returns None
    model(points, ids, mask, ids, mask)
    assert seen["shape"] == (2, 1 + 8, H)  # [CLS] + 8 scene groups, at the fusion width


# ------------------------------------------------------------------ situation loss by hand
def test_situation_loss_by_hand():
    pred = torch.tensor(
        [[1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0]]
    )
    pose = torch.tensor(
        [[0.0, 2.0, 5.0, 0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]
    )
    mask = torch.tensor([True, True, False])  # the third has no known pose
    # position squared errors: row 0: 1 + 0 + 4, row 1: 1 + 1 + 1 -> 8 / 6
    # rotation squared errors: row 0: 0, row 1: 1 + 0 + 0 + 1 -> 2 / 8
    loss, logs = situation_loss(pred, pose, mask, position_weight=2.0, rotation_weight=0.5)
    assert logs["loss_pos"] == pytest.approx(8 / 6) and logs["loss_rot"] == pytest.approx(2 / 8)
    assert loss.item() == pytest.approx(2.0 * 8 / 6 + 0.5 * 2 / 8)


# ------------------------------------------------------------------ the model through the engine
def test_two_step_training_of_the_sqa3d_variant(setup):  # noqa: F811
    root, config = setup
    cfg = yaml.safe_load(config.read_text())
    model = tiny_model_section(root / "llm")
    model.update({"arch_variant": "sqa3d", "sqa3d": {"layers": 1, "ff_size": 64, "flat_mlp": 16, "flat_glimpses": 1}})
    cfg["model"] = model
    cfg["run"]["output_dir"] = str(root / "run_sqa3d")
    path = root / "sqa3d.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env["DS_ACCELERATOR"] = "cpu"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "projects/3dvqa/train.py"), "--config", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = root / "run_sqa3d"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and 0.0 <= summary["test_em1"] <= summary["test_em10"] <= 100.0
    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in logs if m.get("split") == "train"]
    assert len(train) == 2 and "loss_pos" in train[0] and "loss_rot" in train[0] and "loss_answer" in train[0]
    state = torch.load(out / "model_final.pt", map_location="cpu", weights_only=False)
    keys = " ".join(state["state_dict"])
    assert "situation_encoder" in keys and "question_encoder" in keys and "fusion.scene_by_question" in keys


def test_the_shipped_sqa3d_config_parses():
    from mmllm_3dvqa.model import SceneQAModelOptions

    cfg = yaml.safe_load((ROOT / "configs/3dvqa/scenes_sqa3d_smollm2.yaml").read_text())
    options = SceneQAModelOptions.model_validate(cfg["model"])
    assert options.arch_variant == "sqa3d" and options.situation_loss
    meter = yaml.safe_load((ROOT / "configs/3dvqa/scenes_meter_smollm2.yaml").read_text())
    assert SceneQAModelOptions.model_validate(meter["model"]).arch_variant == "meter"
