"""Point-cloud classification data: readers of the real formats and the embedded pybullet set.

Formats (a user brings them; the same readers read the embedded data):

* **ModelNet40, ``modelnet40_normal_resampled``** (``format: modelnet_txt``): ``<root>/modelnet40_shape_names.txt``
  (one class per line), split lists ``modelnet40_{train,test}.txt`` of ids such as ``airplane_0001`` or
  ``night_stand_0001`` (class = the id without its ``_NNNN`` suffix), one file per cloud at
  ``<root>/<class>/<id>.txt`` with lines ``x,y,z,nx,ny,nz``. The first ``num_points`` lines are used
  (as PointNet++'s loader does without FPS). ModelNet10 (``modelnet10_*``) is read the same way.
* **ModelNet40 ``.h5``** (``modelnet40_ply_hdf5_2048``): ``ply_data_train0.h5`` ... with ``data`` [N, 2048, 3]
  float32, ``label`` [N, 1] and, in some releases, ``normal``; the split is a list file
  (``train_files.txt``) of ``.h5`` paths, resolved next to the list file; classes in ``shape_names.txt``.
* **ScanObjectNN ``.h5``**: ``data`` [N, 2048, 3], ``label`` [N]; the variants are files:
  OBJ_BG ``main_split/{training,test}_objectdataset.h5``, OBJ_ONLY ``main_split_nobg/...``, PB_T50_RS
  ``main_split/{training,test}_objectdataset_augmentedrot_scale75.h5``; ``class_names: scanobjectnn``
  gives its 15 classes in label order.

Embedded default (:func:`prepare_pybullet`): clouds sampled with trimesh from the meshes shipped in the
``pybullet`` wheel, written in the ScanObjectNN ``.h5`` layout (``data`` [N, 1024, 3], ``label`` [N])
plus ``shape_names.txt``. See :data:`EMBEDDED_CLASSES` for the classes and why.
"""

from __future__ import annotations

import copy
import functools
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import Dataset

from mmllm.data.pybullet_meshes import mesh_catalog, procedural_meshes, sample_surface
from mmllm.errors import ConfigError, DataError
from mmllm.jsonio import atomic_write_text, read_json, write_json
from mmllm.models.point_groups import farthest_point_sample
from mmllm.schema import DataSection, Section

# ScanObjectNN's 15 classes in label order (its shape_names list).
SCANOBJECTNN_CLASSES = (
    "bag",
    "bin",
    "box",
    "cabinet",
    "chair",
    "desk",
    "display",
    "door",
    "shelf",
    "table",
    "bed",
    "pillow",
    "sink",
    "sofa",
    "toilet",
)
UP_AXES = {"x": 0, "y": 1, "z": 2}


# ----------------------------------------------------------------------------- options
class AugmentOptions(Section):
    """Training-time augmentation (evaluation clouds are never augmented)."""

    random_subset: bool = Field(True, description="take a random num_points subset (eval: the first num_points)")
    rotate_up: bool = Field(True, description="random rotation about the up axis")
    scale: tuple[float, float] = Field((0.8, 1.2), description="scale range (one factor, or one per axis)")
    scale_per_axis: bool = Field(
        False, description="draw the scale factor of each axis separately (Point-BERT's PointcloudScaleAndTranslate)"
    )
    translate: float = Field(0.1, ge=0, description="uniform shift in [-t, t] per axis")
    jitter_sigma: float = Field(0.01, ge=0, description="Gaussian per-point jitter")
    jitter_clip: float = Field(0.05, ge=0)


class PointCloudDataOptions(DataSection):
    """``datasets.mmllm_pointcloud_cls`` section; relative paths are resolved against ``root``."""

    format: Literal["h5", "modelnet_txt"] = "h5"
    splits: dict[str, str] = Field(
        description="split -> .h5 file, a .txt list of .h5 files, or (modelnet_txt) "
        "the split list such as modelnet40_train.txt; splits other than train/val/test "
        "(e.g. test_hard) are evaluated with test under their own name"
    )
    class_names: str | list[str] | None = Field(
        None,
        description="class-name file (one per line), a list, or 'scanobjectnn'; default: shape_names.txt "
        "(h5) or <prefix>_shape_names.txt (modelnet_txt)",
    )
    num_points: int = Field(1024, gt=0, description="points per cloud fed to the model")
    use_normals: bool = Field(False, description="normals as 3 feature channels (model.in_channels must be 3)")
    normalize: bool = Field(True, description="centre each cloud and scale it into the unit sphere")
    up_axis: Literal["x", "y", "z"] = Field("y", description="ModelNet/ScanObjectNN: y; pybullet: z")
    augment: AugmentOptions = Field(default_factory=AugmentOptions)
    sampling: Literal["subset", "fps"] = Field(
        "subset",
        description="subset (default, kept for existing runs): training takes a uniform random num_points subset "
        "(augment.random_subset), evaluation the first num_points; fps (Point-BERT's tools/runner_BERT_finetune.py): "
        "training shuffles the cloud, takes fps_pool points by farthest point sampling and a random num_points of "
        "them, evaluation takes num_points by FPS from the stored first point; normalize applies to the whole cloud",
    )
    fps_pool: int | None = Field(
        None,
        gt=0,
        description="sampling=fps, training: FPS pool size; default Point-BERT's 1024->1200, 2048->2400, "
        "4096->4800, 8192->8192, i.e. round(num_points * 75 / 64) below 8192 (capped at the cloud's size)",
    )
    source_points: int | None = Field(
        None,
        gt=0,
        description="modelnet_txt: lines read per cloud (default num_points; Point-BERT's loader keeps "
        "8192 of the 10,000 by FPS, here the first source_points lines are read)",
    )

    def fps_pool_size(self) -> int:
        """Training FPS pool of ``sampling: fps`` (Point-BERT: ``point_all`` in ``runner_BERT_finetune.py``)."""
        if self.fps_pool is not None:
            if self.fps_pool < self.num_points:
                raise ConfigError(f"fps_pool={self.fps_pool} is smaller than num_points={self.num_points}")
            return self.fps_pool
        return self.num_points if self.num_points >= 8192 else round(self.num_points * 75 / 64)


# ----------------------------------------------------------------------------- readers
def read_class_names(path: str | Path) -> list[str]:
    """Class names, one per line (blank lines skipped); duplicates are an error."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class-name file {path} does not exist")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"class-name file {path} is empty")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"class-name file {path} lists {dupes} more than once")
    return names


class CloudSource:
    """Clouds of one split: ids, integer labels, and ``points(i)`` -> [P, 3 (+3 normals)] float32."""

    def __init__(self, ids: list[str], labels: np.ndarray, classes: Sequence[str], where: str):
        self.ids, self.labels, self.classes, self.where = ids, labels.astype(np.int64), list(classes), where

    def __len__(self) -> int:
        return len(self.ids)

    def points(self, i: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class ArraySource(CloudSource):
    """Clouds held in memory (from ``.h5`` files)."""

    def __init__(self, data: np.ndarray, labels: np.ndarray, ids: list[str], classes: Sequence[str], where: str):
        super().__init__(ids, labels, classes, where)
        self.data = data

    def points(self, i: int) -> np.ndarray:
        return self.data[i]

    @staticmethod
    def concat(parts: list[ArraySource], where: str) -> ArraySource:
        sizes = {p.data.shape[1:] for p in parts}
        if len(sizes) != 1:
            raise DataError(f"{where}: the listed .h5 files hold clouds of different shapes {sorted(sizes)}")
        return ArraySource(
            np.concatenate([p.data for p in parts]),
            np.concatenate([p.labels for p in parts]),
            [i for p in parts for i in p.ids],
            parts[0].classes,
            where,
        )


def _check_labels(labels: np.ndarray, classes: Sequence[str], where: str, ids: Sequence[str]) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{where}: 'label' must have shape [N] or [N, 1], got {list(labels.shape)}")
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
            bad = int(np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)))[0])
            raise DataError(f"{where}: label of {ids[bad]} is {labels[bad]!r}, not an integer")
    elif labels.dtype.kind not in "iu":
        raise DataError(f"{where}: 'label' has dtype {labels.dtype}, expected integers")
    labels = labels.astype(np.int64)
    outside = np.flatnonzero((labels < 0) | (labels >= len(classes)))
    if outside.size:
        i = int(outside[0])
        raise DataError(
            f"{where}: label {labels[i]} of {ids[i]} is outside the class list (0..{len(classes) - 1}, "
            f"{len(classes)} classes); {outside.size} such sample(s)"
        )
    return labels


def read_h5(path: str | Path, classes: Sequence[str], use_normals: bool = False) -> ArraySource:
    """One ``.h5`` file with ``data`` [N, P, 3] and ``label`` [N] or [N, 1] (plus ``normal`` [N, P, 3] if asked)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(f"point-cloud file {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("data", "label") if k not in f]
            if missing:
                raise DataError(
                    f"{path}: no {' or '.join(repr(m) for m in missing)} dataset; a point-cloud .h5 needs "
                    f"'data' [N, P, 3] and 'label' [N] or [N, 1] (found {sorted(f.keys())})"
                )
            if use_normals and "normal" not in f:
                raise DataError(f"{path}: use_normals is set but the file has no 'normal' dataset")
            data = np.asarray(f["data"], dtype=np.float32)
            labels = np.asarray(f["label"])
            normals = np.asarray(f["normal"], dtype=np.float32) if use_normals else None
    except OSError as exc:
        raise DataError(f"cannot read {path} as HDF5: {exc}") from exc
    if data.ndim != 3 or data.shape[2] < 3:
        raise DataError(f"{path}: 'data' must have shape [N, P, 3], got {list(data.shape)}")
    data = data[..., :3]
    if normals is not None:
        if normals.shape != data.shape:
            raise DataError(f"{path}: 'normal' {list(normals.shape)} does not match 'data' {list(data.shape)}")
        data = np.concatenate([data, normals], axis=-1)
    ids = [f"{path.name}[{i}]" for i in range(len(data))]
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} clouds but {len(labels)} labels")
    if len(data) == 0:
        raise DataError(f"{path}: no clouds")
    finite = np.isfinite(data).all(axis=(1, 2))
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise DataError(f"{path}: NaN/inf coordinates in sample {ids[bad[0]]} ({bad.size} sample(s) affected)")
    return ArraySource(data, _check_labels(labels, classes, str(path), ids), ids, classes, str(path))


def read_h5_list(list_file: str | Path, classes: Sequence[str], use_normals: bool = False) -> ArraySource:
    """A ``train_files.txt``-style list of ``.h5`` files (each resolved as written, else next to the list)."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise DataError(f"h5 list file {list_file} does not exist")
    parts = []
    for line in list_file.read_text().splitlines():
        if not line.strip():
            continue
        given = Path(line.strip())
        candidates = [given if given.is_absolute() else list_file.parent / given, list_file.parent / given.name]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise DataError(
                f"{list_file}: listed file {line.strip()!r} not found (looked at "
                f"{', '.join(str(c) for c in candidates)})"
            )
        parts.append(read_h5(found, classes, use_normals))
    if not parts:
        raise DataError(f"h5 list file {list_file} lists no files")
    return ArraySource.concat(parts, str(list_file))


class ModelNetTxtSource(CloudSource):
    """``modelnet40_normal_resampled``: clouds read lazily from ``<root>/<class>/<id>.txt`` (10,000 lines each)."""

    def __init__(self, root: Path, split_list: Path, classes: Sequence[str], num_points: int, use_normals: bool):
        if not split_list.is_file():
            raise DataError(f"ModelNet split list {split_list} does not exist")
        ids = [line.strip() for line in split_list.read_text().splitlines() if line.strip()]
        if not ids:
            raise DataError(f"ModelNet split list {split_list} is empty")
        seen: set[str] = set()
        labels = []
        index = {c: i for i, c in enumerate(classes)}
        for sid in ids:
            if sid in seen:
                raise DataError(f"{split_list}: sample {sid!r} is listed twice")
            seen.add(sid)
            cls, _, number = sid.rpartition("_")
            if not cls or not number.isdigit():
                raise DataError(f"{split_list}: {sid!r} is not a ModelNet id like 'airplane_0001'")
            if cls not in index:
                raise DataError(
                    f"{split_list}: sample {sid!r} has class {cls!r}, which is not in the class list "
                    f"({len(classes)} classes)"
                )
            labels.append(index[cls])
        super().__init__(ids, np.asarray(labels), classes, str(split_list))
        self.root, self.num_points, self.columns = root, num_points, 6 if use_normals else 3
        # every listed cloud exists before the first step, not found missing by the evaluation after training
        missing = [self.path(i) for i in range(len(ids)) if not self.path(i).is_file()]
        if missing:
            raise DataError(
                f"ModelNet cloud {missing[0]} (sample {missing[0].stem!r} of {split_list}) does not exist"
                + (f"; {len(missing) - 1} more of the {len(ids)} listed are missing" if len(missing) > 1 else "")
            )

    def path(self, i: int) -> Path:
        sid = self.ids[i]
        return self.root / sid.rpartition("_")[0] / f"{sid}.txt"

    def points(self, i: int) -> np.ndarray:
        path = self.path(i)
        if not path.is_file():
            raise DataError(f"ModelNet cloud {path} (sample {self.ids[i]!r} of {self.where}) does not exist")
        try:
            arr = np.loadtxt(path, delimiter=",", max_rows=self.num_points, dtype=np.float32, ndmin=2)
        except ValueError as exc:
            raise DataError(f"{path}: not 'x,y,z,nx,ny,nz' lines: {exc}") from exc
        if arr.shape[1] < self.columns:
            raise DataError(
                f"{path}: {arr.shape[1]} columns, need {self.columns} (x,y,z{',nx,ny,nz' * (self.columns > 3)})"
            )
        if not np.isfinite(arr[:, : self.columns]).all():
            raise DataError(f"{path}: NaN/inf coordinates in sample {self.ids[i]!r}")
        return arr[:, : self.columns]


# ----------------------------------------------------------------------------- split loading
def resolve_path(root: str | None, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() or root is None else Path(root) / p


def load_class_names(options: PointCloudDataOptions) -> list[str]:
    spec = options.class_names
    if isinstance(spec, list):
        names = [str(n) for n in spec]
        if not names or len(set(names)) != len(names):
            raise ConfigError("class_names must be a non-empty list without duplicates")
        return names
    if spec == "scanobjectnn":
        return list(SCANOBJECTNN_CLASSES)
    if spec is None:
        if options.format == "modelnet_txt":
            train = options.splits.get("train") or next(iter(options.splits.values()))
            prefix = Path(train).name.split("_")[0]  # modelnet40_train.txt -> modelnet40
            spec = f"{prefix}_shape_names.txt"
        else:
            spec = "shape_names.txt"
        if not resolve_path(options.root, spec).is_file():
            raise DataError(
                f"no class list: {resolve_path(options.root, spec)} does not exist; set class_names "
                "(a file, a list, or 'scanobjectnn')"
            )
    return read_class_names(resolve_path(options.root, spec))


def load_source(options: PointCloudDataOptions, split: str, classes: Sequence[str]) -> CloudSource:
    if split not in options.splits:
        raise ConfigError(f"datasets: no split {split!r}; splits are {sorted(options.splits)}")
    path = resolve_path(options.root, options.splits[split])
    if options.format == "modelnet_txt":
        return ModelNetTxtSource(
            path.parent, path, classes, options.source_points or options.num_points, options.use_normals
        )
    if path.suffix.lower() == ".txt":
        return read_h5_list(path, classes, options.use_normals)
    return read_h5(path, classes, options.use_normals)


# ----------------------------------------------------------------------------- dataset
def rotation_about(axis: int, angle: float) -> np.ndarray:
    """3x3 rotation by ``angle`` about coordinate axis ``axis`` (right-handed)."""
    c, s = math.cos(angle), math.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    rot = np.eye(3, dtype=np.float32)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    if axis == 1:  # keep right-handedness for the (z, x) plane
        rot = rot.T
    return rot


class PointCloudDataset(Dataset):
    """Items ``{"points": [num_points, 3] fp32, ("features": [num_points, 3] normals,) "label", "index"}``."""

    def __init__(self, source: CloudSource, options: PointCloudDataOptions, train: bool, split: str):
        self.source, self.options, self.train, self.split = source, options, train, split
        self.up = UP_AXES[options.up_axis]
        if options.sampling == "fps":
            options.fps_pool_size()  # a pool smaller than num_points is an error before the first step
        data = getattr(source, "data", None)
        if data is not None and data.shape[1] < options.num_points:
            raise DataError(
                f"{source.where}: clouds have {data.shape[1]} points, fewer than num_points={options.num_points}"
            )

    _limit: int | None = None  # head(n): the first n clouds of the source

    def __len__(self) -> int:
        return len(self.source) if self._limit is None else min(self._limit, len(self.source))

    @property
    def ids(self) -> list[str]:
        return list(self.source.ids[: len(self)])

    def head(self, n: int) -> PointCloudDataset:
        """The first ``n`` clouds (item ``i`` is still the source's cloud ``i``)."""
        part = copy.copy(self)
        part._limit = n if self._limit is None else min(n, self._limit)
        return part

    @property
    def classes(self) -> list[str]:
        return self.source.classes

    def __getitem__(self, i: int) -> dict[str, Any]:
        arr = np.asarray(self.source.points(i), dtype=np.float32)
        n = self.options.num_points
        if len(arr) < n:
            raise DataError(
                f"{self.source.ids[i]} ({self.source.where}) has {len(arr)} points, fewer than num_points={n}"
            )
        aug = self.options.augment
        if self.options.sampling == "fps":
            if self.options.normalize:  # Point-BERT normalises the stored cloud, then samples
                arr = np.concatenate([self._normalized(arr[:, :3].astype(np.float64), i), arr[:, 3:]], axis=1)
            arr = arr[self._fps_indices(arr[:, :3])]
            xyz = arr[:, :3].astype(np.float64)
        else:
            if self.train and aug.random_subset and len(arr) > n:
                arr = arr[torch.randperm(len(arr))[:n].numpy()]
            else:
                arr = arr[:n]
            xyz = arr[:, :3].astype(np.float64)
            if self.options.normalize:
                xyz = self._normalized(xyz, i)
        normals = arr[:, 3:6].astype(np.float64) if self.options.use_normals else None
        if self.train:
            xyz, normals = self._augment(xyz, normals)
        item = {"points": torch.from_numpy(xyz.astype(np.float32)), "label": int(self.source.labels[i]), "index": i}
        if normals is not None:
            item["features"] = torch.from_numpy(normals.astype(np.float32))
        return item

    def _normalized(self, xyz: np.ndarray, i: int) -> np.ndarray:
        xyz = xyz - xyz.mean(0)
        radius = float(np.linalg.norm(xyz, axis=1).max())
        if radius <= 0:
            raise DataError(f"{self.source.ids[i]} ({self.source.where}): all points coincide")
        return xyz / radius

    def _fps_indices(self, xyz: np.ndarray) -> np.ndarray:
        """``sampling: fps`` (Point-BERT ``runner_BERT_finetune.py``): training shuffles the cloud (its datasets
        shuffle training clouds), FPS to the pool, then a random ``num_points`` of the pool; evaluation is FPS
        of ``num_points`` starting at the stored first point."""
        n = self.options.num_points
        if not self.train:
            return farthest_point_sample(torch.from_numpy(xyz[None].astype(np.float32)), n)[0].numpy()
        order = torch.randperm(len(xyz))
        pool = min(self.options.fps_pool_size(), len(xyz))
        picked = farthest_point_sample(torch.from_numpy(xyz[order.numpy()][None].astype(np.float32)), pool)[0]
        return order[picked[torch.randperm(pool)[:n]]].numpy()

    def _augment(self, xyz: np.ndarray, normals: np.ndarray | None):
        aug = self.options.augment
        if aug.rotate_up:
            rot = rotation_about(self.up, float(torch.rand(()) * 2 * math.pi)).astype(np.float64)
            xyz = xyz @ rot.T
            normals = None if normals is None else normals @ rot.T
        lo, hi = aug.scale
        if aug.scale_per_axis:
            xyz = xyz * (lo + torch.rand(3).numpy().astype(np.float64) * (hi - lo))
        else:
            xyz = xyz * (lo + float(torch.rand(())) * (hi - lo))
        if aug.translate:
            xyz = xyz + (torch.rand(3).numpy() * 2 - 1) * aug.translate
        if aug.jitter_sigma:
            noise = torch.randn(xyz.shape).numpy() * aug.jitter_sigma
            xyz = xyz + np.clip(noise, -aug.jitter_clip, aug.jitter_clip)
        return xyz, normals


def collate_clouds(samples: list[dict[str, Any]]) -> dict[str, Any]:
    batch = {
        "points": torch.stack([s["points"] for s in samples]),
        "labels": torch.tensor([s["label"] for s in samples], dtype=torch.long),
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
    }
    if "features" in samples[0]:
        batch["features"] = torch.stack([s["features"] for s in samples])
    return batch


# ----------------------------------------------------------------------------- embedded data
# Ten named pybullet objects (one mesh each: a class is that object under per-axis shape variation,
# rotation and sampling noise) chosen to be different shapes (boxes such as cube/jenga/domino/stone
# would be one class under per-axis scaling, and the soccer ball is a sphere), plus two classes from the
# 1000 procedural objects, grouped by their most visible property, flatness: the ratio of the smallest to
# the largest bounding-box side is bimodal (0.2-0.4: 586 objects; 0.7-1.0: 400; only 14 in 0.4-0.6).
# Procedural train and test objects are disjoint (object number % 4 == 3 is test).
NAMED_CLASSES = ("duck", "teddy", "table", "mug", "bunny", "torus", "cone", "wheel", "tray", "lego")
PROCEDURAL_CLASSES = ("procedural_flat", "procedural_bulky")
EMBEDDED_CLASSES = NAMED_CLASSES + PROCEDURAL_CLASSES
EMBEDDED_VERSION = 1
EMBEDDED_POINTS = 1024
EMBEDDED_SPLITS = {"train": ("clean", 60), "test": ("clean", 30), "train_hard": ("hard", 60), "test_hard": ("hard", 30)}


@functools.lru_cache(maxsize=1)
def procedural_classes() -> dict[str, dict[str, list[Path]]]:
    """``{"procedural_flat": {"train": [...], "test": [...]}, "procedural_bulky": {...}}``.

    Objects with an ambiguous side ratio (0.45-0.6) are left out."""
    out: dict[str, dict[str, list[Path]]] = {c: {"train": [], "test": []} for c in PROCEDURAL_CLASSES}
    for path in procedural_meshes():
        ext = _vertex_extents(path)
        ratio = ext.min() / ext.max()
        cls = "procedural_flat" if ratio < 0.45 else "procedural_bulky" if ratio >= 0.6 else None
        if cls is not None:
            out[cls]["test" if int(path.stem) % 4 == 3 else "train"].append(path)
    return out


def _vertex_extents(path: Path) -> np.ndarray:
    """Bounding-box sides of an OBJ's vertices (read directly: faster than building the mesh)."""
    verts = [line.split()[1:4] for line in path.read_text().splitlines() if line.startswith("v ")]
    v = np.asarray(verts, dtype=np.float64)
    return v.max(0) - v.min(0)


def _normalize(points: np.ndarray) -> np.ndarray:
    points = points - (points.min(0) + points.max(0)) / 2
    return points / np.linalg.norm(points, axis=1).max()


def visible_points(points: np.ndarray, view: np.ndarray, cell: float = 0.05, depth_tol: float = 0.05) -> np.ndarray:
    """Boolean mask of the points seen from direction ``view`` (orthographic z-buffer on a ``cell`` grid).

    A point is kept when it lies within ``depth_tol`` of the nearest point of its grid cell, as a
    depth sensor sees only the front surface: the partial views of ScanObjectNN's real scans.
    """
    view = view / np.linalg.norm(view)
    a = np.cross(view, [0.0, 0.0, 1.0] if abs(view[2]) < 0.9 else [1.0, 0.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(view, a)
    u = np.floor(points @ a / cell).astype(np.int64)
    w = np.floor(points @ b / cell).astype(np.int64)
    u, w = u - u.min(), w - w.min()
    _, cell_id = np.unique(u * (w.max() + 1) + w, return_inverse=True)
    depth = -(points @ view)  # the camera looks along -view: larger projection = nearer
    nearest = np.full(cell_id.max() + 1, np.inf)
    np.minimum.at(nearest, cell_id, depth)
    return depth <= nearest[cell_id] + depth_tol


def _shape_variant(points: np.ndarray, rng: np.random.Generator, anisotropic: bool) -> np.ndarray:
    if anisotropic:
        points = points * rng.uniform(0.8, 1.25, size=3)
    angle = rng.uniform(0, 2 * math.pi)
    return _normalize(points @ rotation_about(2, angle).T.astype(np.float64))


def make_clean(mesh: Path, rng: np.random.Generator, anisotropic: bool, n: int = EMBEDDED_POINTS) -> np.ndarray:
    """A whole-surface sample: per-axis shape variation (named objects), rotation about z, unit sphere."""
    points = sample_surface(mesh, n, seed=int(rng.integers(2**31))).astype(np.float64)
    return _shape_variant(points, rng, anisotropic).astype(np.float32)


def make_hard(
    mesh: Path, clutter: Path, rng: np.random.Generator, anisotropic: bool, n: int = EMBEDDED_POINTS
) -> np.ndarray:
    """ScanObjectNN-PB_T50_RS-like sample: one partial view of the object standing on a floor beside a
    clutter object, cropped by its bounding box enlarged and shifted by up to 25% of its size, jittered."""
    obj = _shape_variant(
        sample_surface(mesh, 4 * n, seed=int(rng.integers(2**31))).astype(np.float64), rng, anisotropic
    )
    floor_z = obj[:, 2].min()
    other = sample_surface(clutter, 2 * n, seed=int(rng.integers(2**31))).astype(np.float64)
    other = _normalize(other) * rng.uniform(0.4, 0.8)
    angle = rng.uniform(0, 2 * math.pi)
    offset = rng.uniform(1.0, 1.6) * np.array([math.cos(angle), math.sin(angle), 0.0])
    other = other + offset - [0.0, 0.0, other[:, 2].min() - floor_z]
    radius = np.sqrt(rng.uniform(0, 1, 2 * n)) * 2.0
    theta = rng.uniform(0, 2 * math.pi, 2 * n)
    floor = np.stack([radius * np.cos(theta), radius * np.sin(theta), np.full(2 * n, floor_z - 0.01)], 1)
    lo, hi = obj.min(0), obj.max(0)
    size = hi - lo
    for _ in range(20):
        azimuth, elevation = rng.uniform(0, 2 * math.pi), rng.uniform(math.radians(10), math.radians(60))
        view = np.array(
            [math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth), math.sin(elevation)]
        )
        scene = np.concatenate([obj, other, floor])
        seen = visible_points(scene, view)
        centre = (lo + hi) / 2 + rng.uniform(-0.25, 0.25, 3) * size * [1, 1, 0]
        half = size / 2 * rng.uniform(1.0, 1.3, 3) + [0.0, 0.0, 0.05]
        inside = (np.abs(scene - centre) <= half).all(1)
        keep = seen & inside
        if keep[: len(obj)].sum() >= n // 3:
            break
    else:  # a degenerate mesh: fall back to the whole visible object
        keep = np.zeros(len(scene), bool)
        keep[: len(obj)] = True
    chosen = np.flatnonzero(keep)
    chosen = rng.choice(chosen, n, replace=len(chosen) < n)
    points = scene[chosen] - centre
    points = points / np.linalg.norm(points, axis=1).max()
    points = points + np.clip(rng.normal(0, 0.01, points.shape), -0.03, 0.03)
    return rng.permutation(points).astype(np.float32)


def _write_h5(path: Path, data: np.ndarray, labels: np.ndarray) -> None:
    """ScanObjectNN layout (``data`` [N, P, 3] float32, ``label`` [N]), written atomically."""
    import h5py

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("data", data=data.astype(np.float32))
            f.create_dataset("label", data=labels.astype(np.int64))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def prepare_pybullet(root: str | Path, seed: int = 0) -> Path:
    """Write the embedded point-cloud set under ``root`` (idempotent; deterministic from ``seed``).

    Files: ``{train,test,train_hard,test_hard}.h5`` in ScanObjectNN's layout, ``train_all.txt`` (a
    ModelNet-h5-style list of the clean and hard training files: as ScanObjectNN's PB_T50 training set,
    training sees perturbed scans too), ``shape_names.txt`` and ``prepared.json`` (written last: its
    presence with the same version and seed means done).
    """
    root = Path(root)
    manifest = root / "prepared.json"
    want = {
        "version": EMBEDDED_VERSION,
        "seed": seed,
        "classes": list(EMBEDDED_CLASSES),
        "points": EMBEDDED_POINTS,
        "splits": {k: list(v) for k, v in EMBEDDED_SPLITS.items()},
        "lists": {"train_all.txt": [f"{s}.h5" for s in EMBEDDED_SPLITS if s.startswith("train")]},
    }
    if manifest.is_file():
        try:
            done = read_json(manifest, "embedded point-cloud manifest")
        except DataError:
            done = None
        if done == want and all((root / f).is_file() for f in [*want["lists"], *(f"{s}.h5" for s in EMBEDDED_SPLITS)]):
            return root
    root.mkdir(parents=True, exist_ok=True)
    catalog = mesh_catalog()
    missing = [c for c in NAMED_CLASSES if c not in catalog]
    if missing:
        raise DataError(f"pybullet_data lacks the meshes {missing} needed by the embedded point-cloud set")
    procedural = procedural_classes()
    clutter_pool = [p for parts in procedural.values() for p in parts["train"]]
    for index, (split, (kind, per_class)) in enumerate(EMBEDDED_SPLITS.items()):
        rng = np.random.default_rng([seed, index])
        part = "test" if split.startswith("test") else "train"
        clouds, labels = [], []
        for label, cls in enumerate(EMBEDDED_CLASSES):
            for _ in range(per_class):
                if cls in procedural:
                    pool = procedural[cls][part]
                    mesh, anisotropic = pool[int(rng.integers(len(pool)))], False
                else:
                    mesh, anisotropic = catalog[cls], True
                if kind == "clean":
                    clouds.append(make_clean(mesh, rng, anisotropic))
                else:
                    clutter = clutter_pool[int(rng.integers(len(clutter_pool)))]
                    clouds.append(make_hard(mesh, clutter, rng, anisotropic))
                labels.append(label)
        order = rng.permutation(len(clouds))
        _write_h5(root / f"{split}.h5", np.stack(clouds)[order], np.asarray(labels)[order])
    for name, files in want["lists"].items():
        atomic_write_text(root / name, "".join(f"{f}\n" for f in files))
    atomic_write_text(root / "shape_names.txt", "\n".join(EMBEDDED_CLASSES) + "\n")
    write_json(manifest, want)
    return root
