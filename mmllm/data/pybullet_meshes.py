"""Real 3D meshes shipped in the ``pybullet`` wheel (``pybullet_data``), sampled into point clouds.

Two sources, both offline and pip-installed with ``pybullet``:

* :func:`mesh_catalog`: named single objects (duck, teddy, table, mug, ...). Where pybullet_data
  ships a one-link URDF for the object, the catalogue points at the URDF and :func:`load_mesh`
  assembles its ``<visual>`` geometry (mesh scale, boxes/cylinders/spheres, each origin's
  xyz/rpy), so e.g. the table is its top and four legs and a Jenga block has its real
  proportions, as pybullet shows them; the up axis is ``+z`` as in pybullet.
* :func:`procedural_meshes`: pybullet's 1000 procedurally generated objects
  (``random_urdfs/NNN/NNN.obj``), each a union of 1–127 convex pieces.

:func:`sample_surface` draws area-uniform surface points with ``trimesh`` (deterministic from a
seed), by default normalised to the unit sphere (centre of the bounding box at the origin, the
farthest vertex at radius 1, as ModelNet's point clouds are).
"""

from __future__ import annotations

import functools
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..errors import AssetMissingError, DataError

__all__ = ["data_root", "mesh_catalog", "procedural_meshes", "load_mesh", "sample_surface", "normalize_points"]

# name -> path inside pybullet_data (a one-link URDF where one exists, else the mesh file)
_NAMED: dict[str, str] = {
    "duck": "duck_vhacd.urdf",
    "teddy": "teddy_vhacd.urdf",
    "table": "table/table.urdf",
    "mug": "objects/mug.urdf",
    "bunny": "bunny.obj",
    "soccerball": "soccerball.urdf",
    "sphere": "sphere_smooth.obj",
    "cube": "cube.obj",
    "torus": "torus/torus_textured.obj",
    "lego": "lego/lego.urdf",
    "jenga": "jenga/jenga.urdf",
    "domino": "domino/domino.urdf",
    "tray": "tray/traybox.urdf",
    "cone": "racecar/meshes/cone.obj",
    "stone": "stone.obj",
    "cylinder": "toys/cylinder.obj",
    "prism": "toys/prism.obj",
    "concave_box": "toys/concave_box.urdf",
    "shape_sorter": "toys/shape_sorter.obj",
    "wheel": "racecar/meshes/left_front_wheel.obj",
    "shelf_pod": "kiva_shelf/meshes/pod_lowres.stl",
}


def data_root() -> Path:
    """The ``pybullet_data`` folder (found without importing pybullet itself)."""
    try:
        import pybullet_data
    except ImportError as exc:  # pragma: no cover - pybullet is a declared dependency
        raise AssetMissingError("pybullet_data is not installed: `pip install pybullet==3.2.7`") from exc
    return Path(pybullet_data.getDataPath())


def mesh_catalog() -> dict[str, Path]:
    """Named meshes shipped in pybullet_data: name -> absolute path (``.urdf``, ``.obj`` or ``.stl``)."""
    root = data_root()
    found = {name: root / rel for name, rel in _NAMED.items() if (root / rel).is_file()}
    if not found:
        raise AssetMissingError(f"no catalogue mesh found under {root}: is the pybullet wheel complete?")
    return found


def procedural_meshes() -> list[Path]:
    """pybullet's procedurally generated objects ``random_urdfs/NNN/NNN.obj``, sorted by number."""
    paths = sorted((data_root() / "random_urdfs").glob("[0-9][0-9][0-9]/[0-9][0-9][0-9].obj"))
    if not paths:
        raise AssetMissingError(f"no procedural meshes under {data_root() / 'random_urdfs'}")
    return paths


def _floats(text: str | None, count: int, default: float, where: str) -> list[float]:
    if text is None:
        return [default] * count
    values = [float(v) for v in text.split()]
    if len(values) != count:
        raise DataError(f"{where}: expected {count} numbers, got {text!r}")
    return values


def _required_float(text: str | None, where: str) -> float:
    if text is None:
        raise DataError(f"{where}: missing")
    return _floats(text, 1, 0.0, where)[0]


def _load_file(path: Path):
    import trimesh

    try:
        mesh = trimesh.load(str(path), force="mesh", process=False)
    except Exception as exc:  # trimesh raises many types for unreadable files
        raise DataError(f"cannot read mesh {path}: {exc}") from exc
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise DataError(f"mesh {path} has no triangles")
    return mesh


def _load_urdf(path: Path):
    """Union of the ``<visual>`` geometries of a one-link URDF, each placed by its origin."""
    import trimesh

    try:
        robot = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DataError(f"cannot parse URDF {path}: {exc}") from exc
    links = robot.findall("link")
    if len(links) != 1:
        raise DataError(f"URDF {path} has {len(links)} links; only one-link objects are supported")
    parts = []
    for visual in links[0].findall("visual"):
        geometry = visual.find("geometry")
        origin = visual.find("origin")
        xyz = _floats(None if origin is None else origin.get("xyz"), 3, 0.0, f"{path} <origin xyz>")
        rpy = _floats(None if origin is None else origin.get("rpy"), 3, 0.0, f"{path} <origin rpy>")
        if geometry is None or len(geometry) == 0:
            raise DataError(f"URDF {path}: a <visual> has no geometry")
        shape = geometry[0]
        if shape.tag == "mesh":
            part = _load_file(path.parent / shape.get("filename", ""))
            part.apply_scale(_floats(shape.get("scale"), 3, 1.0, f"{path} <mesh scale>"))
        elif shape.tag == "box":
            part = trimesh.creation.box(extents=_floats(shape.get("size"), 3, 1.0, f"{path} <box size>"))
        elif shape.tag == "cylinder":
            part = trimesh.creation.cylinder(radius=_required_float(shape.get("radius"), f"{path} <cylinder radius>"),
                                             height=_required_float(shape.get("length"), f"{path} <cylinder length>"))
        elif shape.tag == "sphere":
            part = trimesh.creation.icosphere(subdivisions=3, radius=_required_float(shape.get("radius"), f"{path} <sphere radius>"))
        else:
            raise DataError(f"URDF {path}: unsupported geometry <{shape.tag}>")
        # URDF rpy: fixed-axis roll (x), pitch (y), yaw (z): R = Rz(yaw) Ry(pitch) Rx(roll)
        roll, pitch, yaw = rpy
        transform = trimesh.transformations.euler_matrix(roll, pitch, yaw, axes="sxyz")
        transform[:3, 3] = xyz
        part.apply_transform(transform)
        parts.append(part)
    if not parts:
        raise DataError(f"URDF {path} has no <visual> geometry")
    return trimesh.util.concatenate(parts)


@functools.lru_cache(maxsize=2048)  # pybullet_data holds ~1100 small meshes
def _cached_mesh(path: str):
    p = Path(path)
    if not p.is_file():
        raise DataError(f"mesh file not found: {p}")
    return _load_urdf(p) if p.suffix.lower() == ".urdf" else _load_file(p)


def load_mesh(path: str | Path):
    """A ``trimesh.Trimesh`` from an ``.obj``/``.stl``/``.ply``/... file or a one-link ``.urdf`` (a copy)."""
    return _cached_mesh(str(Path(path).resolve())).copy()


def normalize_points(points: np.ndarray, center: np.ndarray, radius: float) -> np.ndarray:
    """``(points - center) / radius``; a zero radius (a degenerate mesh) is an error."""
    if not math.isfinite(radius) or radius <= 0:
        raise DataError(f"cannot normalise a mesh of radius {radius}")
    return (points - center) / radius


def sample_surface(path: str | Path, n: int, seed: int, normalize: bool = True) -> np.ndarray:
    """``n`` area-uniform surface points ``[n, 3]`` float32 of a mesh, deterministic from ``seed``.

    With ``normalize`` the mesh's bounding-box centre moves to the origin and its farthest used
    vertex to radius 1, so every point lies in the unit sphere.
    """
    import trimesh

    if not isinstance(n, (int, np.integer)) or n < 1:
        raise DataError(f"sample_surface: n must be a positive int, got {n!r}")
    mesh = _cached_mesh(str(Path(path).resolve()))
    points, _ = trimesh.sample.sample_surface(mesh, int(n), seed=int(seed))
    points = np.asarray(points, dtype=np.float64)
    if normalize:
        used = np.asarray(mesh.vertices)[np.unique(np.asarray(mesh.faces))]
        center = (used.min(0) + used.max(0)) / 2
        points = normalize_points(points, center, float(np.linalg.norm(used - center, axis=1).max()))
    if not np.isfinite(points).all():
        raise DataError(f"mesh {path} produced non-finite sample points")
    return points.astype(np.float32)
