"""Point-cloud loaders on small hand-written files of each real format, bad inputs, the embedded preparer."""

import math

import h5py
import numpy as np
import pytest
import torch

from mmllm.errors import ConfigError, DataError
from vision.pointcloud import data as pcdata
from vision.pointcloud.data import (
    PointCloudDataOptions,
    PointCloudDataset,
    load_class_names,
    load_source,
    prepare_pybullet,
    rotation_about,
    visible_points,
)


def options(root, **kw):
    base = {
        "root": str(root),
        "splits": {"train": "train.h5"},
        "num_points": 4,
        "normalize": False,
        "augment": {"random_subset": False, "rotate_up": False, "scale": [1, 1], "translate": 0, "jitter_sigma": 0},
    }
    return PointCloudDataOptions.parse({**base, **kw}, "datasets.t")


def write_h5(path, data=None, label=None, **extra):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        if data is not None:
            f.create_dataset("data", data=np.asarray(data, dtype=np.float32))
        if label is not None:
            f.create_dataset("label", data=np.asarray(label))
        for k, v in extra.items():
            f.create_dataset(k, data=v)


def items(ds):
    return [ds[i] for i in range(len(ds))]


# ---------------------------------------------------------------- ModelNet40 normal_resampled .txt
def write_modelnet_txt(root, rows=6):
    (root / "modelnet40_shape_names.txt").write_text("airplane\nnight_stand\n")
    (root / "modelnet40_train.txt").write_text("night_stand_0002\nairplane_0001\n")
    for sid, cls, base in (("airplane_0001", "airplane", 0.0), ("night_stand_0002", "night_stand", 10.0)):
        (root / cls).mkdir(exist_ok=True)
        lines = [f"{base + r:.6f},{r * 0.5:.6f},{-r:.6f},0.000000,0.000000,1.000000" for r in range(rows)]
        (root / cls / f"{sid}.txt").write_text("\n".join(lines) + "\n")


def test_modelnet_txt_reads_first_points_normals_and_classes(tmp_path):
    write_modelnet_txt(tmp_path)
    opts = options(tmp_path, format="modelnet_txt", splits={"train": "modelnet40_train.txt"}, use_normals=True)
    classes = load_class_names(opts)  # default file name from the split list's prefix
    assert classes == ["airplane", "night_stand"]
    ds = PointCloudDataset(load_source(opts, "train", classes), opts, train=False, split="train")
    first, second = items(ds)
    # listed order kept; the class of "night_stand_0002" is everything before the last "_"
    assert (first["label"], second["label"]) == (1, 0)
    assert first["points"].tolist() == [[10.0, 0.0, 0.0], [11.0, 0.5, -1.0], [12.0, 1.0, -2.0], [13.0, 1.5, -3.0]]
    assert first["points"].dtype == torch.float32
    assert first["features"].tolist() == [[0.0, 0.0, 1.0]] * 4


def test_modelnet_txt_bad_inputs(tmp_path):
    write_modelnet_txt(tmp_path, rows=3)
    opts = options(tmp_path, format="modelnet_txt", splits={"train": "modelnet40_train.txt"})
    classes = load_class_names(opts)
    ds = PointCloudDataset(load_source(opts, "train", classes), opts, train=False, split="train")
    with pytest.raises(DataError, match=r"night_stand_0002 .* has 3 points, fewer than num_points=4"):
        ds[0]
    write_modelnet_txt(tmp_path, rows=6)
    path = tmp_path / "airplane" / "airplane_0001.txt"
    path.write_text(path.read_text().replace("1.000000,0.500000", "nan,0.500000", 1))
    with pytest.raises(DataError, match=r"airplane_0001.txt: NaN/inf coordinates in sample 'airplane_0001'"):
        ds[1]
    (tmp_path / "modelnet40_train.txt").write_text("airplane_0001\nsofa_0003\n")
    with pytest.raises(DataError, match=r"'sofa_0003' has class 'sofa', which is not in the class list"):
        load_source(opts, "train", classes)
    (tmp_path / "modelnet40_train.txt").write_text("airplane_0001\nairplane_0001\n")
    with pytest.raises(DataError, match="listed twice"):
        load_source(opts, "train", classes)


# ---------------------------------------------------------------- ModelNet40 .h5 release
def test_modelnet_h5_list_concatenates_listed_files(tmp_path):
    folder = tmp_path / "modelnet40_ply_hdf5_2048"
    cloud = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    write_h5(folder / "ply_data_train0.h5", cloud, [[1], [0]])
    write_h5(folder / "ply_data_train1.h5", cloud + 100, [[2]] * 2)
    # the official list names the files by the path they had when packed: resolved by base name
    (folder / "train_files.txt").write_text(
        "data/modelnet40_ply_hdf5_2048/ply_data_train0.h5\ndata/modelnet40_ply_hdf5_2048/ply_data_train1.h5\n"
    )
    (folder / "shape_names.txt").write_text("airplane\nbathtub\nbed\n")
    opts = options(folder, splits={"train": "train_files.txt"})
    classes = load_class_names(opts)
    ds = PointCloudDataset(load_source(opts, "train", classes), opts, train=False, split="train")
    got = items(ds)
    assert [g["label"] for g in got] == [1, 0, 2, 2]
    assert got[0]["points"].tolist() == cloud[0, :4].tolist()
    assert got[3]["points"].tolist() == (cloud[1, :4] + 100).tolist()
    assert ds.source.ids[2] == "ply_data_train1.h5[0]"


# ---------------------------------------------------------------- ScanObjectNN .h5
def test_scanobjectnn_h5_variant_file_and_class_list(tmp_path):
    clouds = np.random.default_rng(0).normal(size=(3, 8, 3)).astype(np.float32)
    write_h5(
        tmp_path / "main_split" / "training_objectdataset_augmentedrot_scale75.h5",
        clouds,
        np.array([14, 0, 9], dtype=np.int64),
        mask=np.zeros((3, 8)),
    )
    opts = options(
        tmp_path,
        splits={"train": "main_split/training_objectdataset_augmentedrot_scale75.h5"},
        class_names="scanobjectnn",
        num_points=8,
        normalize=True,
    )
    classes = load_class_names(opts)
    assert len(classes) == 15 and classes[14] == "toilet" and classes[9] == "table"
    ds = PointCloudDataset(load_source(opts, "train", classes), opts, train=False, split="train")
    item = ds[0]
    assert item["label"] == 14
    # normalisation by hand: centred on the mean, farthest point at radius 1
    want = clouds[0] - clouds[0].mean(0)
    want = want / np.linalg.norm(want, axis=1).max()
    assert np.allclose(item["points"].numpy(), want, atol=1e-6)


def test_h5_bad_inputs(tmp_path):
    classes = ["a", "b"]
    write_h5(tmp_path / "nolabel.h5", np.zeros((2, 4, 3)))
    with pytest.raises(DataError, match=r"nolabel.h5: no 'label' dataset.*found \['data'\]"):
        pcdata.read_h5(tmp_path / "nolabel.h5", classes)
    write_h5(tmp_path / "nodata.h5", None, [0, 1])
    with pytest.raises(DataError, match="no 'data' dataset"):
        pcdata.read_h5(tmp_path / "nodata.h5", classes)
    bad = np.zeros((3, 4, 3))
    bad[1, 2, 0] = np.nan
    write_h5(tmp_path / "nan.h5", bad, [0, 1, 1])
    with pytest.raises(DataError, match=r"NaN/inf coordinates in sample nan.h5\[1\]"):
        pcdata.read_h5(tmp_path / "nan.h5", classes)
    write_h5(tmp_path / "label.h5", np.zeros((2, 4, 3)), [[1], [2]])
    with pytest.raises(DataError, match=r"label 2 of label.h5\[1\] is outside the class list \(0..1, 2 classes\)"):
        pcdata.read_h5(tmp_path / "label.h5", classes)
    write_h5(tmp_path / "neg.h5", np.zeros((1, 4, 3)), [-1])
    with pytest.raises(DataError, match="label -1"):
        pcdata.read_h5(tmp_path / "neg.h5", classes)
    write_h5(tmp_path / "few.h5", np.ones((2, 3, 3)), [0, 1])
    opts = options(tmp_path, splits={"train": "few.h5"}, class_names=classes)
    with pytest.raises(DataError, match=r"few.h5: clouds have 3 points, fewer than num_points=4"):
        PointCloudDataset(load_source(opts, "train", classes), opts, train=False, split="train")
    (tmp_path / "x.h5").write_text("not hdf5")
    with pytest.raises(DataError, match="cannot read .*x.h5 as HDF5"):
        pcdata.read_h5(tmp_path / "x.h5", classes)
    with pytest.raises(DataError, match="shape_names.txt does not exist"):
        load_class_names(options(tmp_path / "nowhere"))


def test_too_few_points_for_the_groups_is_a_config_error(tmp_path):
    from omegaconf import OmegaConf

    from mmllm.engine.registry import get_task

    cfg = OmegaConf.create(
        {
            "model": {"num_groups": 64, "group_size": 32, "llm_block": {"kind": "none"}},
            "datasets": {
                "mmllm_pointcloud_cls": {"root": str(tmp_path), "splits": {"train": "t.h5"}, "num_points": 48}
            },
            "run": {"task": "mmllm_pointcloud_cls", "output_dir": str(tmp_path / "run")},
        }
    )
    with pytest.raises(
        ConfigError,
        match=r"num_points=48 .*num_groups=64 groups .*group_size=32 points.*max\(num_groups, group_size\) = 64",
    ):
        get_task("mmllm_pointcloud_cls").build(cfg)


# ---------------------------------------------------------------- augmentation and embedded data
def test_rotation_about_up_axes_by_hand():
    # a quarter turn about z takes x to y; about y takes z to x; about x takes y to z (right-handed)
    assert np.allclose(rotation_about(2, math.pi / 2) @ [1, 0, 0], [0, 1, 0], atol=1e-6)
    assert np.allclose(rotation_about(1, math.pi / 2) @ [0, 0, 1], [1, 0, 0], atol=1e-6)
    assert np.allclose(rotation_about(0, math.pi / 2) @ [0, 1, 0], [0, 0, 1], atol=1e-6)


def test_train_augmentation_keeps_height_and_shape(tmp_path):
    pts = np.array([[[1, 0, 0.5], [0, 1, -0.5], [-1, 0, 0.2], [0, -1, 0.0], [0.5, 0.5, 0.3]]], dtype=np.float32)
    write_h5(tmp_path / "t.h5", pts, [0])
    opts = options(
        tmp_path,
        splits={"train": "t.h5"},
        class_names=["a"],
        up_axis="z",
        num_points=5,
        augment={"random_subset": False, "rotate_up": True, "scale": [1, 1], "translate": 0, "jitter_sigma": 0},
    )
    torch.manual_seed(0)
    out = PointCloudDataset(load_source(opts, "train", ["a"]), opts, train=True, split="train")[0]["points"].numpy()
    assert np.allclose(out[:, 2], pts[0, :, 2], atol=1e-6)  # rotation about z leaves heights alone
    assert np.allclose(np.linalg.norm(out[:, :2], axis=1), np.linalg.norm(pts[0, :, :2], axis=1), atol=1e-6)
    assert not np.allclose(out, pts[0], atol=1e-3)


def test_visible_points_zbuffer_by_hand():
    # seen from +z: (0,0,1) hides (0,0,-1) in the same cell; (1,1,-1) is alone in its cell and stays visible
    pts = np.array([[0.01, 0.01, 1.0], [0.01, 0.01, -1.0], [1.01, 1.01, -1.0], [0.02, 0.02, 0.98]])
    assert visible_points(pts, np.array([0.0, 0.0, 1.0]), cell=0.1, depth_tol=0.05).tolist() == [
        True,
        False,
        True,
        True,
    ]


def test_prepare_pybullet_small_is_deterministic_and_idempotent(tmp_path, monkeypatch):
    monkeypatch.setattr(pcdata, "EMBEDDED_SPLITS", {"train": ("clean", 1), "test_hard": ("hard", 1)})
    a = prepare_pybullet(tmp_path / "a", seed=3)
    b = prepare_pybullet(tmp_path / "b", seed=3)
    stamp = (a / "train.h5").stat().st_mtime_ns
    assert prepare_pybullet(a, seed=3) == a and (a / "train.h5").stat().st_mtime_ns == stamp  # idempotent
    names = (a / "shape_names.txt").read_text().split()
    assert names == list(pcdata.EMBEDDED_CLASSES) and 8 <= len(names) <= 15
    for split in ("train", "test_hard"):
        src_a = pcdata.read_h5(a / f"{split}.h5", names)
        src_b = pcdata.read_h5(b / f"{split}.h5", names)
        assert src_a.data.shape == (len(names), pcdata.EMBEDDED_POINTS, 3)
        assert sorted(src_a.labels.tolist()) == list(range(len(names)))
        assert np.array_equal(src_a.data, src_b.data) and np.array_equal(src_a.labels, src_b.labels)
        assert np.linalg.norm(src_a.data, axis=2).max() <= 1.0 + 0.06  # unit sphere (+ the hard split's jitter)
    assert (a / "train_all.txt").read_text() == "train.h5\n"  # the training list (ModelNet-h5 list format)
    assert len(pcdata.read_h5_list(a / "train_all.txt", names)) == len(names)
    assert not list(a.glob(".*tmp*"))  # no temporary file left behind
