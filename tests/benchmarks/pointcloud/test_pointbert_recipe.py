"""The official Point-BERT recipe (``model.recipe: point_bert``, ``sampling: fps``) and the Point-BERT.pth loader.

References (read, not copied; line numbers at the commits fetched on 2026-12-05):

* Point-BERT (github lulutang0608/Point-BERT @ 26e0581): ``models/Point_BERT.py`` ``PointTransformer``
  (lines 103-148: ``Encoder(encoder_dims)``, ``reduce_dim``, ``cls_token``/``cls_pos``, ``pos_embed``
  Linear(3,128)-GELU-Linear(128,dim), ``blocks`` = ``TransformerEncoder``, ``norm``, ``cls_head_finetune``),
  ``load_model_from_ckpt`` (lines 177-188: ``base_model``, ``module.`` stripped, ``transformer_q.`` kept but
  its ``cls_head``), ``MaskTransformer`` (pre-training: adds ``mask_token``, ``lm_head``, ``cls_head``),
  ``Point_BERT`` (lines 417-460: ``transformer_q``, ``transformer_k``, ``dvae``, ``queue``, ``queue_ptr``);
  ``models/dvae.py`` ``Encoder`` (lines 180-195: Conv1d(3,128)-BN-ReLU-Conv1d(128,256), then
  Conv1d(512,512)-BN-ReLU-Conv1d(512, encoder_channel)); ``cfgs/ModelNet_models/PointTransformer.yaml``
  (trans_dim 384, depth 12, num_heads 6, group_size 32, num_group 64, encoder_dims 256, npoints 1024).
* LM4VisualEncoding (github ziqipang/LM4VisualEncoding), ``pointcloud_classification/``:
  ``tools/runner_BERT_finetune.py`` lines 117-133 (training: FPS to ``point_all`` = 1200 for 1024 points,
  2400/4800/8192 for 2048/4096/8192, then ``np.random.choice(point_all, npoints, False)``) and line 228
  (test: ``misc.fps(points, npoints)``); ``tools/builder.py`` lines 40-59 (``add_weight_decay``: trainable
  ``'llama' in name`` -> lr 0.5x, no weight decay; ``ndim == 1``, ``.bias``, ``'token' in name`` -> lr 0.1x,
  no weight decay; the rest decayed at 1x); ``models/Point_BERT.py`` lines 226-251 (the LLaMA block between
  the transformer blocks and the final norm).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from tiny_llms import random_llama_block

from mmllm.config import load_config
from mmllm.engine.launch import task_for
from mmllm.errors import CheckpointError, ConfigError
from mmllm.params import param_groups
from vision.pointcloud.data import ArraySource, PointCloudDataOptions, PointCloudDataset
from vision.pointcloud.model import PointBERTOptions, create_pointbert_model, point_bert_lr_multipliers
from vision.pointcloud.pointbert_checkpoint import load_point_bert_checkpoint, map_point_bert_state

ROOT = Path(__file__).resolve().parents[3]
OFF = {"random_subset": False, "rotate_up": False, "scale": [1, 1], "translate": 0, "jitter_sigma": 0}
TINY_LLM = random_llama_block()


def data_options(**kw):
    base = {"splits": {"train": "x.h5"}, "normalize": False, "augment": OFF, "sampling": "fps"}
    return PointCloudDataOptions.parse({**base, **kw}, "datasets.t")


def dataset(points, train, **kw):
    data = np.asarray(points, dtype=np.float32)[None]
    source = ArraySource(data, np.zeros(1, dtype=np.int64), ["c0"], ["a"], "mem")
    return PointCloudDataset(source, data_options(**kw), train=train, split="train" if train else "test")


# ----------------------------------------------------------------------------- sampling
def test_fps_pool_sizes_are_the_official_table():
    # runner_BERT_finetune.py lines 117-126: 1024 -> 1200, 2048 -> 2400, 4096 -> 4800, 8192 -> 8192
    for n, pool in [(1024, 1200), (2048, 2400), (4096, 4800), (8192, 8192)]:
        assert data_options(num_points=n).fps_pool_size() == pool
    assert data_options(num_points=512, fps_pool=600).fps_pool_size() == 600
    with pytest.raises(ConfigError, match="fps_pool=500 is smaller than num_points=512"):
        dataset(np.zeros((600, 3)), train=True, num_points=512, fps_pool=500)


def test_test_points_by_fps_on_a_line():
    # 17 points on the x axis, x = 0..16, stored as x=0 first, then 16, 15, ..., 1 (x=k at index 17-k).
    # FPS from the stored first point: x=0; farthest x=16; then x=8 (8 from both); then x=4 and x=12 are both
    # 4 from the chosen set: the lower stored index wins, x=12 (index 5) before x=4 (index 13).
    xs = [0] + list(range(16, 0, -1))
    cloud = [(x, 0.0, 0.0) for x in xs]
    item = dataset(cloud, train=False, num_points=5)[0]
    assert item["points"][:, 0].tolist() == [0, 16, 8, 12, 4]
    assert item["points"][:, 1:].abs().sum() == 0


def clusters():
    """1,200 grid points 1 apart plus 848 near copies (1e-3 away) of the first 848: 2,048 points."""
    grid = np.stack(np.meshgrid(np.arange(10), np.arange(10), np.arange(12), indexing="ij"), -1).reshape(-1, 3)
    return np.concatenate([grid, grid[:848] + 1e-3]).astype(np.float32)


def min_pair_distance(points):
    return torch.pdist(points.double()).min().item()


def test_training_points_by_fps_to_1200_then_random_1024():
    # FPS of 1,200 from 1,200 clusters takes one point of each cluster (an unpicked cluster is >= 1 away from the
    # chosen set, a picked cluster's twin ~1.7e-3), so the 1,024 drawn from the pool are >= 1 apart; a uniform
    # random 1,024 of the 2,048 points holds near-twins (the control below), so this test can fail.
    cloud = clusters()
    torch.manual_seed(0)
    ds = dataset(cloud, train=True, num_points=1024)
    for _ in range(2):
        pts = ds[0]["points"]
        assert pts.shape == (1024, 3)
        assert min_pair_distance(pts) > 0.99
        # every point is a point of the stored cloud
        assert torch.cdist(pts.double(), torch.from_numpy(cloud).double()).min(1).values.max() < 1e-6
    control = dataset(cloud, train=True, num_points=1024, sampling="subset", augment={**OFF, "random_subset": True})
    assert min_pair_distance(control[0]["points"]) < 0.01


def test_defaults_keep_todays_recipe_and_configs_say_which():
    assert PointCloudDataOptions.parse({"splits": {"train": "x"}}, "d").sampling == "subset"
    assert PointBERTOptions().recipe == "point_mae"
    for name in ("pointcloud_modelnet40", "pointcloud_scanobjectnn", "pointcloud_pybullet"):
        task = task_for(load_config(f"configs/vision/{name}.yaml"))
        assert (task.model_cfg.recipe, task.data_cfg.sampling) == ("point_mae", "subset")
    for name in ("pointcloud_modelnet40_pointbert", "pointcloud_scanobjectnn_pointbert"):
        task = task_for(load_config(f"configs/vision/{name}.yaml"))
        m, d, run = task.model_cfg, task.data_cfg, task.run
        # cfgs/ModelNet_models/PointTransformer.yaml, LM4VisualEncoding PointLLaMa_hardest.yaml
        official = ("point_bert", 64, 32, 256, 384, 12, 6, 256, 0.5)
        assert (m.recipe, m.num_groups, m.group_size, m.encoder_dims, m.dim, m.depth, m.num_heads) + (
            m.head_hidden,
            m.head_dropout,
        ) == official
        assert (d.sampling, d.num_points, d.fps_pool_size()) == ("fps", 1024, 1200)
        assert (d.augment.scale, d.augment.scale_per_axis, d.augment.translate) == ((0.667, 1.5), True, 0.2)
        assert (run.lr_multipliers, run.init_lr, run.weight_decay, run.grad_clip) == ({}, 5e-4, 0.05, 10.0)


def test_per_axis_scale_and_translate():
    # data_transforms.py PointcloudScaleAndTranslate: x, y, z scaled by separate factors in [lo, hi], then shifted
    cloud = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0, 0, 0)]
    aug = {**OFF, "scale": [0.5, 2.0], "scale_per_axis": True}
    torch.manual_seed(0)
    factors = []
    for _ in range(5):
        pts = dataset(cloud, train=True, num_points=4, sampling="subset", augment=aug)[0]["points"].double()
        scale = torch.diagonal(pts[:3] - pts[3])  # unit axis points minus the origin: the per-axis factors
        assert ((scale >= 0.5) & (scale <= 2.0)).all()
        assert torch.allclose(pts[:3] - pts[3], torch.diag(scale))  # no mixing of axes
        factors.append(scale)
    assert max(len(set(np.round(f.numpy(), 6))) for f in factors) == 3  # the axes get different factors
    iso = dataset(cloud, train=True, num_points=4, sampling="subset", augment={**aug, "scale_per_axis": False})
    scale = torch.diagonal(iso[0]["points"][:3] - iso[0]["points"][3])
    assert torch.allclose(scale, scale[0].expand(3))


def test_run_lr_multipliers_with_the_point_bert_recipe_is_an_error():
    cfg = load_config("configs/vision/pointcloud_modelnet40_pointbert.yaml")
    cfg.run.lr_multipliers = {"llm_block.adapter": 0.5}
    with pytest.raises(ConfigError, match="run.lr_multipliers.*model.recipe=point_bert"):
        task_for(cfg)


# ----------------------------------------------------------------------------- model
def official_model(depth=12, block=None, num_classes=40):
    opts = PointBERTOptions(recipe="point_bert", depth=depth, llm_block=block or {"kind": "none"})
    torch.manual_seed(0)
    return create_pointbert_model(opts, num_classes)


def conv(i, o):
    """Parameters of Conv1d(i, o, 1) or Linear(i, o), with bias."""
    return i * o + o


def bn(c):
    """Parameters of an affine BatchNorm1d(c)."""
    return 2 * c


def count(model, prefix):
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))


def test_parameter_counts_match_the_official_layer_shapes():
    model = official_model()
    # dvae.py Encoder(256): Conv1d(3,128) BN(128) Conv1d(128,256) | Conv1d(512,512) BN(512) Conv1d(512,256)
    assert (
        count(model, "tokenizer.")
        == conv(3, 128) + bn(128) + conv(128, 256) + conv(512, 512) + bn(512) + conv(512, 256)
        == 428_800
    )
    assert count(model, "reduce_dim.") == conv(256, 384) == 98_688  # Linear(encoder_dims, trans_dim)
    assert count(model, "pos_embed.") == conv(3, 128) + conv(128, 384) == 50_048
    # Block: norm1, qkv Linear(384, 1152, bias=False), proj, norm2, Mlp fc1 384->1536, fc2 1536->384
    block = 2 * 384 + 384 * 1152 + conv(384, 384) + 2 * 384 + conv(384, 1536) + conv(1536, 384)
    assert block == 1_773_312
    assert count(model, "blocks.") == 12 * block
    assert count(model, "norm.") == 2 * 384
    assert count(model, "cls_token") + count(model, "cls_pos") == 2 * 384
    # cls_head_finetune: Linear(768, 256) ReLU Dropout(0.5) Linear(256, cls_dim)
    assert count(model, "head.") == conv(768, 256) + conv(256, 40) == 207_144
    assert [type(m).__name__ for m in model.head] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert model.head[2].p == 0.5
    assert sum(p.numel() for p in model.parameters()) == 22_065_960  # Point-BERT's 22.1M
    # the other recipe: no reduce_dim, Point-MAE's head Linear-BN-ReLU-Dropout-Linear-BN-ReLU-Dropout-Linear
    mae = create_pointbert_model(PointBERTOptions(llm_block={"kind": "none"}), 40)
    assert count(mae, "reduce_dim.") == 0
    assert count(mae, "head.") == conv(768, 256) + bn(256) + conv(256, 256) + bn(256) + conv(256, 40) == 273_960


def test_group_and_token_counts():
    model = official_model(depth=1).eval()
    points = torch.rand(2, 1024, 3)
    groups, centers = model.tokenizer.group(points)
    assert groups.shape == (2, 64, 32, 3) and centers.shape == (2, 64, 3)
    with torch.no_grad():
        assert model.forward_features(points).shape == (2, 65, 384)
        assert model(points).shape == (2, 40)


def test_lr_groups_follow_builder_py():
    model = official_model(depth=1, block=TINY_LLM)
    scales = point_bert_lr_multipliers(model.named_parameters())
    groups = param_groups(model, 1.0, 0.05, scales)
    lr = {name: g["lr"] for g in groups for name in g["names"]}
    expected = {  # by hand from builder.py's rule
        "cls_token": 0.1,  # 'token' in name
        "cls_pos": 1.0,  # [1, 1, 384], no 'token': decayed at the base LR in the official code
        "tokenizer.first.0.weight": 1.0,
        "tokenizer.first.0.bias": 0.1,
        "tokenizer.first.1.weight": 0.1,  # BatchNorm weight, 1-d
        "reduce_dim.weight": 1.0,
        "pos_embed.mlp.2.bias": 0.1,
        "blocks.0.norm1.weight": 0.1,
        "blocks.0.attn.qkv.weight": 1.0,
        "norm.bias": 0.1,
        "head.3.weight": 1.0,
        "llm_block.adapter_in.weight": 0.5,  # 'llama' in name (llama_dim_mapper1/2)
        "llm_block.adapter_out.weight": 0.5,
    }
    assert {k: lr[k] for k in expected} == expected
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and not frozen & set(lr)
    assert all(lr[n] == 0.5 for n in lr if n.startswith("llm_block."))


def test_weight_decay_groups_follow_builder_py():
    """builder.py: weight decay 0 for the LLM block's trainable parameters, 1-d tensors, biases and names with
    ``token``; 0.05 for every other weight (the engine's groups, as the trainer builds them)."""
    model = official_model(depth=1, block=TINY_LLM)
    groups = param_groups(model, 1.0, 0.05, point_bert_lr_multipliers(model.named_parameters()))
    wd = {name: g["weight_decay"] for g in groups for name in g["names"]}
    assert wd["llm_block.adapter_in.weight"] == 0.0 and wd["cls_token"] == 0.0
    assert wd["cls_pos"] == 0.05  # 3-d and no "token" in its name: decayed, as builder.py
    assert wd["blocks.0.attn.qkv.weight"] == 0.05 and wd["reduce_dim.weight"] == 0.05
    assert wd["blocks.0.attn.proj.bias"] == 0.0 and wd["tokenizer.first.0.weight"] == 0.05  # no qkv bias (Point-BERT)
    # today's recipe keeps the engine's own rule: the adapters' 2-d weights decay
    opts = PointBERTOptions(recipe="point_mae", depth=1, llm_block=TINY_LLM)
    mae = {n: g["weight_decay"] for g in param_groups(create_pointbert_model(opts, 40), 1.0, 0.05) for n in g["names"]}
    assert mae["llm_block.adapter_in.weight"] == 0.05


# ----------------------------------------------------------------------------- Point-BERT.pth
def point_transformer_shapes(depth, dim=384, enc=256, classes=None, hidden=256, pos=128):
    """Parameter and buffer shapes of the official ``PointTransformer`` (Point_BERT.py 103-148, dvae.py 180-195);
    ``hidden``/``pos`` are the official 256/128 unless a tiny model is wanted."""
    s = {}
    for conv, (cin, cmid, cout) in {
        "first_conv": (3, hidden // 2, hidden),
        "second_conv": (2 * hidden, 2 * hidden, enc),
    }.items():
        p = f"encoder.{conv}."
        s |= {
            p + "0.weight": (cmid, cin, 1),
            p + "0.bias": (cmid,),
            p + "3.weight": (cout, cmid, 1),
            p + "3.bias": (cout,),
        }
        s |= {p + f"1.{k}": (cmid,) for k in ("weight", "bias", "running_mean", "running_var")}
        s[p + "1.num_batches_tracked"] = ()
    s |= {"reduce_dim.weight": (dim, enc), "reduce_dim.bias": (dim,), "cls_token": (1, 1, dim), "cls_pos": (1, 1, dim)}
    s |= {
        "pos_embed.0.weight": (pos, 3),
        "pos_embed.0.bias": (pos,),
        "pos_embed.2.weight": (dim, pos),
        "pos_embed.2.bias": (dim,),
    }
    for i in range(depth):
        p = f"blocks.blocks.{i}."
        s |= {
            p + "norm1.weight": (dim,),
            p + "norm1.bias": (dim,),
            p + "attn.qkv.weight": (3 * dim, dim),
            p + "attn.proj.weight": (dim, dim),
            p + "attn.proj.bias": (dim,),
            p + "norm2.weight": (dim,),
            p + "norm2.bias": (dim,),
            p + "mlp.fc1.weight": (4 * dim, dim),
            p + "mlp.fc1.bias": (4 * dim,),
            p + "mlp.fc2.weight": (dim, 4 * dim),
            p + "mlp.fc2.bias": (dim,),
        }
    s |= {"norm.weight": (dim,), "norm.bias": (dim,)}
    if classes:
        s |= {
            "cls_head_finetune.0.weight": (256, 2 * dim),
            "cls_head_finetune.0.bias": (256,),
            "cls_head_finetune.3.weight": (classes, 256),
            "cls_head_finetune.3.bias": (classes,),
        }
    return s


def random_state(shapes, gen):
    out = {}
    for name, shape in shapes.items():
        if name.endswith("num_batches_tracked"):
            out[name] = torch.tensor(7)
        elif name.endswith("running_var"):
            out[name] = torch.rand(shape, generator=gen) + 0.5
        else:
            out[name] = torch.randn(shape, generator=gen) * 0.1
    return out


def pretraining_checkpoint(depth, gen):
    """``Point-BERT.pth``'s layout: ``Point_BERT`` (q, k encoders, dVAE, queue) saved under DataParallel."""
    q = point_transformer_shapes(depth) | {
        "mask_token": (1, 1, 384),
        "lm_head.weight": (8192, 384),
        "lm_head.bias": (8192,),
        "cls_head.0.weight": (256, 384),
        "cls_head.0.bias": (256,),
        "cls_head.2.weight": (256, 256),
        "cls_head.2.bias": (256,),
    }
    tq = random_state(q, gen)
    base = {f"module.transformer_q.{k}": v for k, v in tq.items()}
    base |= {f"module.transformer_k.{k}": v + 1 for k, v in tq.items()}
    base |= {
        "module.dvae.encoder.first_conv.0.weight": torch.randn(128, 3, 1, generator=gen),
        "module.queue": torch.randn(256, 64, generator=gen),
        "module.queue_ptr": torch.zeros(1, dtype=torch.long),
    }
    return {
        "base_model": base,
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": 300,
        "metrics": {"acc": 0.0},
    }, tq


def test_pretrained_checkpoint_lands_tensor_by_tensor(tmp_path):
    gen = torch.Generator().manual_seed(1)
    ckpt, tq = pretraining_checkpoint(depth=2, gen=gen)
    path = tmp_path / "Point-BERT.pth"
    torch.save(ckpt, path)
    model = official_model(depth=2)
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    loaded = load_point_bert_checkpoint(model, path)
    state = model.state_dict()
    by_hand = {  # our name <- official name, written out
        "tokenizer.first.0.weight": "encoder.first_conv.0.weight",
        "tokenizer.first.1.running_var": "encoder.first_conv.1.running_var",
        "tokenizer.first.1.num_batches_tracked": "encoder.first_conv.1.num_batches_tracked",
        "tokenizer.second.3.weight": "encoder.second_conv.3.weight",
        "reduce_dim.weight": "reduce_dim.weight",
        "cls_token": "cls_token",
        "cls_pos": "cls_pos",
        "pos_embed.mlp.0.weight": "pos_embed.0.weight",
        "pos_embed.mlp.2.bias": "pos_embed.2.bias",
        "blocks.1.attn.qkv.weight": "blocks.blocks.1.attn.qkv.weight",
        "blocks.0.mlp.fc2.bias": "blocks.blocks.0.mlp.fc2.bias",
        "norm.weight": "norm.weight",
    }
    for ours, official in by_hand.items():
        assert loaded[ours] == f"transformer_q.{official}"
        assert torch.equal(state[ours], tq[official]), ours
    # every transformer_q tensor but the pre-training heads and mask token landed, each where it was mapped
    ignored = {k for k in tq if k == "mask_token" or k.startswith(("lm_head.", "cls_head."))}
    assert sorted(v.removeprefix("transformer_q.") for v in loaded.values()) == sorted(set(tq) - ignored)
    for ours, key in loaded.items():
        assert torch.equal(state[ours], tq[key.removeprefix("transformer_q.")])
    # the head is not in Point-BERT.pth (fine-tuning trains it); transformer_k (= q + 1) was not used
    assert all(torch.equal(model.head.state_dict()[k], v) for k, v in head_before.items())


def test_init_checkpoint_option_loads_it(tmp_path):
    ckpt, tq = pretraining_checkpoint(depth=1, gen=torch.Generator().manual_seed(2))
    torch.save(ckpt, tmp_path / "pb.pth")
    opts = PointBERTOptions(
        recipe="point_bert", depth=1, llm_block={"kind": "none"}, init_checkpoint=str(tmp_path / "pb.pth")
    )
    model = create_pointbert_model(opts, 40)
    assert torch.equal(model.blocks[0].attn.proj.weight, tq["blocks.blocks.0.attn.proj.weight"])
    with pytest.raises(ConfigError, match="needs model.recipe=point_bert"):
        create_pointbert_model(PointBERTOptions(llm_block={"kind": "none"}, init_checkpoint="x.pth"), 40)


def reference_forward(sd, neighborhood, center, depth, heads=6):
    """PointTransformer.forward (Point_BERT.py; Encoder dvae.py 196-210; Block, Attention, Mlp) by hand from the
    checkpoint's tensors, in eval mode. The grouping is ours (checked against brute force in tests/core)."""
    b, g, k, _ = neighborhood.shape

    def bn(x, p):
        mean, var, w, bias = (sd[p + n] for n in ("running_mean", "running_var", "weight", "bias"))
        return F.batch_norm(x, mean, var, w, bias, training=False, eps=1e-5)

    def conv(x, p):
        return F.conv1d(x, sd[p + "weight"], sd[p + "bias"])

    def lin(x, p):
        return x @ sd[p + "weight"].T + (sd[p + "bias"] if p + "bias" in sd else 0)

    def ln(x, p):
        return F.layer_norm(x, x.shape[-1:], sd[p + "weight"], sd[p + "bias"], eps=1e-5)

    f = neighborhood.reshape(b * g, k, 3).transpose(2, 1)
    f = conv(F.relu(bn(conv(f, "encoder.first_conv.0."), "encoder.first_conv.1.")), "encoder.first_conv.3.")
    f = torch.cat([f.max(2, keepdim=True).values.expand(-1, -1, k), f], 1)
    f = conv(F.relu(bn(conv(f, "encoder.second_conv.0."), "encoder.second_conv.1.")), "encoder.second_conv.3.")
    tokens = lin(f.max(2).values.reshape(b, g, -1), "reduce_dim.")
    pos = lin(F.gelu(lin(center, "pos_embed.0.")), "pos_embed.2.")
    x = torch.cat([sd["cls_token"].expand(b, -1, -1), tokens], 1)
    pos = torch.cat([sd["cls_pos"].expand(b, -1, -1), pos], 1)
    n, c = x.shape[1], x.shape[2]
    for i in range(depth):
        p = f"blocks.blocks.{i}."
        x = x + pos
        qkv = lin(ln(x, p + "norm1."), p + "attn.qkv.").reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        attn = (qkv[0] @ qkv[1].transpose(-2, -1) * (c // heads) ** -0.5).softmax(-1)
        x = x + lin((attn @ qkv[2]).transpose(1, 2).reshape(b, n, c), p + "attn.proj.")
        x = x + lin(F.gelu(lin(ln(x, p + "norm2."), p + "mlp.fc1.")), p + "mlp.fc2.")
    x = ln(x, "norm.")
    feat = torch.cat([x[:, 0], x[:, 1:].max(1).values], -1)
    return lin(F.relu(lin(feat, "cls_head_finetune.0.")), "cls_head_finetune.3.")


def test_fine_tuned_checkpoint_gives_the_official_logits():
    depth, classes = 2, 15
    sd = random_state(point_transformer_shapes(depth, classes=classes), torch.Generator().manual_seed(3))
    model = official_model(depth=depth, num_classes=classes).eval()
    loaded = map_point_bert_state(model, {f"module.{k}": v for k, v in sd.items()})
    assert loaded["head.3.weight"] == "cls_head_finetune.3.weight" and len(loaded) == len(sd)
    points = torch.rand(2, 1024, 3, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        neighborhood, center = model.tokenizer.group(points)
        expected = reference_forward(sd, neighborhood, center, depth)
        got = model(points)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (got - expected).abs().max()


def test_a_key_that_does_not_fit_is_named(tmp_path):
    gen = torch.Generator().manual_seed(5)
    ckpt, _ = pretraining_checkpoint(depth=2, gen=gen)
    base = ckpt["base_model"]
    model = official_model(depth=2)
    wrong = dict(base, **{"module.transformer_q.reduce_dim.weight": torch.zeros(384, 512)})
    with pytest.raises(CheckpointError, match=r"transformer_q\.reduce_dim\.weight has shape \[384, 512\]"):
        map_point_bert_state(model, wrong)
    missing = {k: v for k, v in base.items() if k != "module.transformer_q.blocks.blocks.1.norm2.bias"}
    with pytest.raises(CheckpointError, match=r"no tensor for blocks\.1\.norm2\.bias .*blocks\.blocks\.1\.norm2\.bias"):
        map_point_bert_state(model, missing)
    with pytest.raises(CheckpointError, match=r"transformer_q\.blocks\.blocks\.1\.norm1\.weight has no place"):
        map_point_bert_state(official_model(depth=1), base)
    before = model.state_dict()["cls_token"].clone()
    with pytest.raises(CheckpointError):
        map_point_bert_state(model, wrong)
    assert torch.equal(model.state_dict()["cls_token"], before)  # nothing copied before every key was checked
    with pytest.raises(CheckpointError, match="recipe=point_bert"):
        map_point_bert_state(create_pointbert_model(PointBERTOptions(llm_block={"kind": "none"}, depth=2), 40), base)


def test_a_nan_tensor_is_named_and_nothing_copied():
    ckpt, _ = pretraining_checkpoint(depth=1, gen=torch.Generator().manual_seed(6))
    base = dict(ckpt["base_model"])
    base["module.transformer_q.blocks.blocks.0.attn.proj.bias"] = torch.full((384,), float("nan"))
    model = official_model(depth=1)
    before = model.state_dict()["cls_token"].clone()
    with pytest.raises(
        CheckpointError, match=r"tensor\(s\) \['transformer_q\.blocks\.blocks\.0\.attn\.proj\.bias'\] hold NaN"
    ):
        map_point_bert_state(model, base)
    assert torch.equal(model.state_dict()["cls_token"], before)


class Planted:
    def __reduce__(self):
        return (math.floor, (1.5,))


def test_loaded_weights_only(tmp_path):
    path = tmp_path / "planted.pth"
    torch.save({"base_model": {}, "x": Planted()}, path)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_point_bert_checkpoint(official_model(depth=1), path)
    torch.save({"epoch": 3}, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="expected a dict with 'base_model'"):
        load_point_bert_checkpoint(official_model(depth=1), tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_point_bert_checkpoint(official_model(depth=1), tmp_path / "none.pth")


def test_two_steps_of_the_point_bert_recipe_through_mmllm_train(tmp_path):
    """The recipe end to end on a tiny model: fps sampling, reduce_dim, the official head and LR groups, and
    model.init_checkpoint from a fine-tuning-layout file of the tiny model's official shapes."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        with h5py.File(tmp_path / f"{split}.h5", "w") as f:
            f.create_dataset("data", data=rng.normal(size=(n, 48, 3)).astype(np.float32))
            f.create_dataset("label", data=np.arange(n) % 3)
    (tmp_path / "shape_names.txt").write_text("a\nb\nc\n")
    shapes = point_transformer_shapes(1, dim=16, enc=12, hidden=8, pos=8)
    torch.save({"base_model": random_state(shapes, torch.Generator().manual_seed(6))}, tmp_path / "pb.pth")
    cfg = {
        "model": {
            "recipe": "point_bert",
            "num_groups": 8,
            "group_size": 8,
            "encoder_dims": 12,
            "dim": 16,
            "depth": 1,
            "num_heads": 2,
            "tokenizer_hidden": 8,
            "pos_hidden": 8,
            "head_hidden": 8,
            "init_checkpoint": str(tmp_path / "pb.pth"),
            "llm_block": TINY_LLM,
        },
        "datasets": {
            "mmllm_pointcloud_cls": {
                "root": str(tmp_path),
                "num_points": 32,
                "sampling": "fps",
                "splits": {"train": "train.h5", "test": "test.h5"},
            }
        },
        "run": {
            "task": "mmllm_pointcloud_cls",
            "output_dir": str(tmp_path / "run"),
            "max_steps": 2,
            "batch_size_train": 4,
            "batch_size_eval": 4,
            "precision": "fp32",
            "log_every": 1,
        },
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mmllm.cli", "train", "--config", str(tmp_path / "cfg.yaml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and math.isfinite(summary["test_oa"])
