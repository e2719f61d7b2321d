"""Shared point-cloud pieces: FPS order, kNN against brute force, grouping, the mesh catalogue."""

import math

import numpy as np
import pytest
import torch

from mmllm.data.pybullet_meshes import load_mesh, mesh_catalog, procedural_meshes, sample_surface
from mmllm.errors import DataError
from mmllm.models.point_groups import (
    FP32BatchNorm1d,
    PointGroupTokenizer,
    PointPositionEmbed,
    farthest_point_sample,
    gather_points,
    knn_indices,
    min_points_required,
)
from mmllm.precision import cast_parameters

# A hand-made cloud in the z=0 plane.
CLOUD = [(0, 0, 0), (1, 0, 0), (10, 0, 0), (0, 7, 0), (5, 5, 0), (10, 6, 0)]


def test_fps_exact_order_by_hand():
    # Row 0 starts at p0=(0,0). Squared distances to p0: p1 1, p2 100, p3 49, p4 50, p5 136 -> p5.
    # Min over {p0,p5}: p1 min(1, 81+36)=1, p2 min(100, 36)=36, p3 min(49, 100+1)=49, p4 min(50, 25+1)=26 -> p3.
    # Add p3=(0,7): p1 min(1, 1+49)=1, p2 min(36, 100+49)=36, p4 min(26, 25+4)=26 -> p2.
    # Add p2=(10,0): p1 min(1, 81)=1, p4 min(26, 25+25)=26 -> p4, then p1.  Order: 0, 5, 3, 2, 4, 1.
    # Row 1 is the same cloud reversed (q_i = p_{5-i}): starts at q0=p5; farthest from p5 is p0 (136) = q5,
    # then the same sequence p3, p2, p4, p1 = q2, q3, q1, q4.
    xyz = torch.tensor([CLOUD, CLOUD[::-1]], dtype=torch.float32)
    idx = farthest_point_sample(xyz, 6)
    assert idx.dtype == torch.long
    assert idx.tolist() == [[0, 5, 3, 2, 4, 1], [0, 5, 2, 3, 1, 4]]
    assert farthest_point_sample(xyz, 3).tolist() == [[0, 5, 3], [0, 5, 2]]


def test_fps_ties_go_to_lowest_index():
    # From (0,0,0) the points (2,0,0) and (0,2,0) are both at squared distance 4: index 1 is taken first.
    xyz = torch.tensor([[(0, 0, 0), (2, 0, 0), (0, 2, 0)]], dtype=torch.float32)
    assert farthest_point_sample(xyz, 2).tolist() == [[0, 1]]


def test_fps_rejects_too_many():
    with pytest.raises(DataError, match="cannot pick 7 points from a cloud of 6"):
        farthest_point_sample(torch.tensor([CLOUD], dtype=torch.float32), 7)


def _brute_knn(points, centre, k):
    dists = [(math.dist(p, centre), i) for i, p in enumerate(points)]
    return [i for _, i in sorted(dists)[:k]]


def test_knn_equals_brute_force_reference():
    gen = torch.Generator().manual_seed(0)
    xyz = torch.rand(2, 50, 3, generator=gen)
    centers = torch.rand(2, 7, 3, generator=gen)
    idx = knn_indices(xyz, centers, 5)
    assert idx.shape == (2, 7, 5)
    for b in range(2):
        pts = xyz[b].tolist()
        for g in range(7):
            assert idx[b, g].tolist() == _brute_knn(pts, centers[b, g].tolist(), 5)


def test_gather_points_by_hand():
    x = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2)  # row b, point n -> [8b+2n, 8b+2n+1]
    idx = torch.tensor([[[3, 0]], [[1, 1]]])  # [B=2, 1, 2]
    out = gather_points(x, idx)
    assert out.shape == (2, 1, 2, 2)
    assert out.tolist() == [[[[6, 7], [0, 1]]], [[[10, 11], [10, 11]]]]


def test_grouping_matches_reference_and_is_translation_invariant():
    gen = torch.Generator().manual_seed(1)
    xyz = torch.rand(2, 40, 3, generator=gen)
    feats = torch.rand(2, 40, 2, generator=gen)
    tok = PointGroupTokenizer(num_groups=6, group_size=4, in_channels=2, dim=16, hidden=8).eval()
    groups, centers = tok.group(xyz, feats)
    assert groups.shape == (2, 6, 4, 5) and centers.shape == (2, 6, 3)
    for b in range(2):
        pts = xyz[b].tolist()
        order = farthest_point_sample(xyz[b : b + 1], 6)[0].tolist()
        for g, c in enumerate(order):
            assert centers[b, g].tolist() == pts[c]
            nn_idx = _brute_knn(pts, pts[c], 4)
            want = [[pts[i][j] - pts[c][j] for j in range(3)] + feats[b, i].tolist() for i in nn_idx]
            assert torch.allclose(groups[b, g], torch.tensor(want), atol=1e-6)
    shift = torch.tensor([3.0, -2.0, 5.0])
    with torch.no_grad():
        t1, c1 = tok(xyz, feats)
        t2, c2 = tok(xyz + shift, feats)
    assert t1.shape == (2, 6, 16)
    assert torch.allclose(t1, t2, atol=1e-4) and torch.allclose(c2, c1 + shift, atol=1e-5)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_fp32_batchnorm_under_deepspeed_bf16_matches_fp32_batchnorm(momentum):
    """DeepSpeed's bf16 leaves bf16 weights beside fp32 running statistics (cast_parameters does the same);
    torch's own fp32 BatchNorm1d on the same bf16-representable values is the reference, in training
    (batch statistics, running-stat update, num_batches_tracked) and in eval (running statistics)."""
    torch.manual_seed(0)
    ours = cast_parameters(FP32BatchNorm1d(6, momentum=momentum), torch.bfloat16)
    ref = torch.nn.BatchNorm1d(6, momentum=momentum)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(6))
        ours.bias.copy_(torch.randn(6))
        ref.weight.copy_(ours.weight.float())
        ref.bias.copy_(ours.bias.float())
    assert ours.weight.dtype == torch.bfloat16 and ours.running_mean.dtype == torch.float32
    assert ours.state_dict().keys() == ref.state_dict().keys()
    for _ in range(2):
        x = (3 * torch.randn(5, 6, 4) + 2).to(torch.bfloat16)
        out = ours(x)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out, ref(x.float()).to(torch.bfloat16), rtol=0, atol=0)
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, key), getattr(ref, key), rtol=0, atol=0, msg=key)
    ours.eval(), ref.eval()
    x = torch.randn(3, 6, 4).to(torch.bfloat16)
    torch.testing.assert_close(ours(x), ref(x.float()).to(torch.bfloat16), rtol=0, atol=0)
    out = ours.train()(x.requires_grad_())
    out.float().sum().backward()
    assert ours.weight.grad.dtype == torch.bfloat16 and x.grad is not None


def test_fp32_batchnorm_keeps_statistics_fp32_when_the_module_is_cast():
    bn = FP32BatchNorm1d(4).to(torch.bfloat16)
    assert bn.weight.dtype == torch.bfloat16
    assert bn.running_mean.dtype == torch.float32 and bn.running_var.dtype == torch.float32
    assert bn.num_batches_tracked.dtype == torch.long
    assert bn(torch.randn(3, 4, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_tokenizer_bf16_keeps_centres_fp32_and_backprops():
    # parameters bf16, buffers (BatchNorm statistics) fp32: what DeepSpeed's bf16 does to a training model
    tok = cast_parameters(PointGroupTokenizer(num_groups=4, group_size=8, dim=12, hidden=8), torch.bfloat16)
    pos = cast_parameters(PointPositionEmbed(12, hidden=8), torch.bfloat16)
    xyz = torch.rand(3, 32, 3)
    tokens, centers = tok(xyz)
    assert tokens.dtype == torch.bfloat16 and centers.dtype == torch.float32
    (tokens.float().sum() + pos(centers).float().sum()).backward()
    assert tok.first[0].weight.grad is not None and pos.mlp[0].weight.grad is not None


def test_tokenizer_bad_inputs():
    tok = PointGroupTokenizer(num_groups=8, group_size=32, dim=8, hidden=8)
    assert min_points_required(8, 32) == 32 and min_points_required(64, 32) == 64
    with pytest.raises(DataError, match=r"31 points; 8 groups of 32.*= 32"):
        tok(torch.rand(1, 31, 3))
    bad = torch.rand(2, 40, 3)
    bad[1, 5, 2] = float("nan")
    with pytest.raises(DataError, match=r"NaN/inf \(batch rows \[1\]\)"):
        tok(bad)
    with pytest.raises(DataError, match="built for 0 feature channels, got 3"):
        tok(torch.rand(1, 40, 3), torch.rand(1, 40, 3))
    with pytest.raises(DataError, match=r"shape \[B, N, 3\]"):
        tok(torch.rand(1, 40, 2))


def test_mesh_catalogue_and_sampling():
    catalog = mesh_catalog()
    for name in ("duck", "teddy", "table", "mug", "bunny"):
        assert catalog[name].is_file()
    a = sample_surface(catalog["duck"], 500, seed=3)
    b = sample_surface(catalog["duck"], 500, seed=3)
    c = sample_surface(catalog["duck"], 500, seed=4)
    assert a.shape == (500, 3) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    radius = np.linalg.norm(a, axis=1)
    assert radius.max() <= 1 + 1e-5 and radius.max() > 0.9
    assert len(procedural_meshes()) == 1000


def test_table_urdf_is_assembled_from_its_visuals():
    # table.urdf: top = unit cube scaled (1.5, 1, 0.05) at z=0.6; legs scaled (0.1, 0.1, 0.58) at z=0.29, x=+-0.65,
    # y=+-0.4.  Bounds by hand: x +-0.75, y +-0.5, z from 0.29-0.29=0 to 0.6+0.025=0.625.
    bounds = load_mesh(mesh_catalog()["table"]).bounds
    assert np.allclose(bounds, [[-0.75, -0.5, 0.0], [0.75, 0.5, 0.625]], atol=1e-6)


def test_urdf_box_origin_rpy(tmp_path):
    # A 2x1x1 box yawed by 90 degrees then moved to x=1: extents become 1x2x1 around (1, 0, 0).
    (tmp_path / "b.urdf").write_text(
        '<robot name="b"><link name="l"><visual><origin rpy="0 0 1.5707963267948966" xyz="1 0 0"/>'
        '<geometry><box size="2 1 1"/></geometry></visual></link></robot>'
    )
    assert np.allclose(load_mesh(tmp_path / "b.urdf").bounds, [[0.5, -1, -0.5], [1.5, 1, 0.5]], atol=1e-6)
    (tmp_path / "two.urdf").write_text('<robot name="t"><link name="a"/><link name="b"/></robot>')
    with pytest.raises(DataError, match="2 links"):
        load_mesh(tmp_path / "two.urdf")
    with pytest.raises(DataError, match="not found"):
        sample_surface(tmp_path / "missing.obj", 10, 0)
