"""Embedded 3D VQA data: scenes of real meshes from ``pybullet_data`` with situated questions in SQA3D's format.

Each scene is a 3 m x 3 m floor with 4-6 objects (duck, teddy bear, table, mug, bunny, ball, cone,
ring: meshes shipped in the pybullet wheel, surface-sampled with trimesh through
:mod:`mmllm.data.pybullet_meshes`), each with a colour, a size and a random position and
heading. The scene graph (category, colour, position, size) answers the questions:

* counting ("How many ducks are there?"), existence ("Is there a mug in the room?"),
  colour ("What color is the cone?"), object/shape ("What is the blue object?"),
  size ("Which is bigger, the duck or the table?");
* situated questions, whose answers depend on where the agent stands and faces:
  "Is the mug on my left or right?", "Is the ball in front of me or behind me?",
  "Can I see the bunny without turning around?", "Which direction should I go to reach the cone?",
  "How many objects are on my left?". The situation text ("I am standing by the duck facing the
  table.") is the only way to know that pose, so the situation matters: the same question in the
  same scene has different answers under different situations.

The agent's pose is written as SQA3D does: ``position {x, y, z}`` (metres, z = 0) and
``rotation {_x, _y, _z, _w}``: the quaternion of a rotation by the heading about +z that turns
the agent's forward axis +x onto its facing direction (left is +y in the agent's frame).

Written files (exactly what a user of SQA3D brings, plus a scene-graph file for inspection)::

    <root>/sqa_task/balanced/v1_balanced_questions_{train,val,test}_scannetv2.json
    <root>/sqa_task/balanced/v1_balanced_sqa_annotations_{train,val,test}_scannetv2.json
    <root>/scenes/<scene_id>.npy         float32 [P, 6]: x y z (metres, floor at z = 0) r g b (0-255)
    <root>/scene_graphs.json             {scene_id: {objects: [...], split}}
    <root>/GENERATED.json                the generator's settings (written last: the data is complete)

Deterministic from the seed; splits are scene-disjoint (80/10/10 by scene index), as SQA3D's.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmllm.errors import DataError
from mmllm.jsonio import read_json, write_json

from .eval3d import exact_match

GENERATOR_VERSION = 2
SPLITS = ("train", "val", "test")
QUESTIONS_FILE = "sqa_task/balanced/v1_balanced_questions_{split}_scannetv2.json"
ANNOTATIONS_FILE = "sqa_task/balanced/v1_balanced_sqa_annotations_{split}_scannetv2.json"
SCENE_FILE = "scenes/{scene_id}.npy"
MARKER = "GENERATED.json"

# catalogue mesh -> (name in text, plural, radius in metres before the per-object size factor)
CATEGORIES: dict[str, tuple[str, str, float]] = {
    "duck": ("duck", "ducks", 0.30),
    "teddy": ("teddy bear", "teddy bears", 0.38),
    "table": ("table", "tables", 0.55),
    "mug": ("mug", "mugs", 0.25),
    "bunny": ("bunny", "bunnies", 0.30),
    "soccerball": ("ball", "balls", 0.25),
    "cone": ("cone", "cones", 0.30),
    "torus": ("ring", "rings", 0.30),
}
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 175, 60),
    "blue": (45, 75, 215),
    "yellow": (230, 205, 35),
    "purple": (145, 55, 185),
    "orange": (240, 135, 25),
}
FLOOR_COLOR = (128, 128, 128)
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
ROOM_HALF = 1.5  # the floor spans [-1.5, 1.5] x [-1.5, 1.5] metres
MARGIN = 0.3  # a situated question's target must be this far (metres) off the axis it asks about
SITUATION_TEMPLATES = {  # "facing": the agent faces y; "back": y is behind the agent
    "facing": (
        "I am standing by the {x} facing the {y}.",
        "I am next to the {x} and I am facing the {y}.",
        "Standing beside the {x}, I am looking at the {y}.",
        "The {x} is right next to me and the {y} is in front of me.",
    ),
    "back": (
        "I am standing by the {x} with the {y} behind me.",
        "I am next to the {x} and the {y} is behind me.",
        "Standing beside the {x}, I have my back to the {y}.",
        "The {x} is right next to me and the {y} is at my back.",
    ),
}


@dataclass(frozen=True)
class GeneratorSettings:
    """Everything the generated files depend on (recorded in ``GENERATED.json``)."""

    seed: int = 0
    num_scenes: int = 300
    situations_per_scene: int = 3
    situated_per_situation: int = 3
    general_per_situation: int = 2
    points_per_object: int = 384
    floor_points: int = 256
    version: int = GENERATOR_VERSION


@dataclass
class SceneObject:
    object_id: int
    mesh: str
    category: str
    color: str
    position: list[float]  # bounding-box centre, metres
    size: list[float]  # bounding-box extents, metres
    yaw: float  # heading of the object about +z, radians

    @property
    def xy(self) -> np.ndarray:
        return np.asarray(self.position[:2])

    @property
    def volume(self) -> float:
        return float(np.prod(self.size))


# ---------------------------------------------------------------------- egocentric geometry
def egocentric(agent_xy: np.ndarray, yaw: float, target_xy: np.ndarray) -> tuple[float, float]:
    """(forward, left) coordinates of ``target_xy`` in the frame of an agent at ``agent_xy`` facing ``yaw``."""
    d = np.asarray(target_xy, dtype=float) - np.asarray(agent_xy, dtype=float)
    return float(d[0] * math.cos(yaw) + d[1] * math.sin(yaw)), float(-d[0] * math.sin(yaw) + d[1] * math.cos(yaw))


def side(agent_xy, yaw, target_xy) -> str:
    """``left`` or ``right`` of the agent."""
    return "left" if egocentric(agent_xy, yaw, target_xy)[1] > 0 else "right"


def front_or_behind(agent_xy, yaw, target_xy) -> str:
    return "in front" if egocentric(agent_xy, yaw, target_xy)[0] > 0 else "behind"


def direction(agent_xy, yaw, target_xy) -> str:
    """Which way to go: ``forward`` / ``left`` / ``right`` / ``backward`` by 90-degree sectors."""
    fwd, left = egocentric(agent_xy, yaw, target_xy)
    angle = math.degrees(math.atan2(left, fwd))
    if abs(angle) <= 45:
        return "forward"
    if abs(angle) >= 135:
        return "backward"
    return "left" if angle > 0 else "right"


def yaw_quaternion(yaw: float) -> dict[str, float]:
    """SQA3D's ``rotation`` of a heading about +z: {_x, _y, _z, _w}."""
    return {"_x": 0.0, "_y": 0.0, "_z": math.sin(yaw / 2), "_w": math.cos(yaw / 2)}


# ---------------------------------------------------------------------- scene assembly
def _canonical_points(seed: int) -> dict[str, np.ndarray]:
    """4096 unit-sphere surface points per category (sampled once; instances subsample them)."""
    from mmllm.data.pybullet_meshes import mesh_catalog, sample_surface

    catalog = mesh_catalog()
    missing = [m for m in CATEGORIES if m not in catalog]
    if missing:
        raise DataError(f"pybullet_data lacks the meshes {missing} needed by the 3D VQA scenes (pybullet==3.2.7)")
    return {m: sample_surface(catalog[m], 4096, seed=seed * 1000 + i) for i, m in enumerate(CATEGORIES)}


def _place_objects(
    rng: np.random.Generator, canonical: dict[str, np.ndarray], settings: GeneratorSettings
) -> tuple[list[SceneObject], np.ndarray]:
    meshes = list(CATEGORIES)
    colors = list(COLORS)
    for _ in range(100):
        count = int(rng.integers(4, 7))
        objects: list[SceneObject] = []
        clouds = []
        used: set[tuple[str, str]] = set()
        for oid in range(count):
            mesh = meshes[int(rng.integers(len(meshes)))]
            color = colors[int(rng.integers(len(colors)))]
            while (mesh, color) in used:  # "the red duck" must name one object
                color = colors[int(rng.integers(len(colors)))]
            used.add((mesh, color))
            radius = CATEGORIES[mesh][2] * float(rng.uniform(0.8, 1.25))
            yaw = float(rng.uniform(-math.pi, math.pi))
            for _ in range(200):
                xy = rng.uniform(-ROOM_HALF + 0.4, ROOM_HALF - 0.4, size=2)
                if all(np.linalg.norm(xy - o.xy) > radius + max(o.size[:2]) / 2 + 0.25 for o in objects):
                    break
            else:
                break  # no room left: draw the scene again
            full = canonical[mesh] * radius
            c, s = math.cos(yaw), math.sin(yaw)
            full = full @ np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
            full[:, :2] += xy
            full[:, 2] -= full[:, 2].min()  # resting on the floor
            lo, hi = full.min(0), full.max(0)
            objects.append(
                SceneObject(
                    oid,
                    mesh,
                    CATEGORIES[mesh][0],
                    color,
                    ((lo + hi) / 2).round(4).tolist(),
                    (hi - lo).round(4).tolist(),
                    round(yaw, 4),
                )
            )
            pick = rng.choice(len(full), settings.points_per_object, replace=False)
            rgb = np.clip(np.asarray(COLORS[color]) + rng.normal(0, 12, (settings.points_per_object, 3)), 0, 255)
            clouds.append(np.concatenate([full[pick], rgb], axis=1))
        if len(objects) == count:
            floor = np.concatenate(
                [rng.uniform(-ROOM_HALF, ROOM_HALF, (settings.floor_points, 2)), np.zeros((settings.floor_points, 1))],
                axis=1,
            )
            floor_rgb = np.clip(np.asarray(FLOOR_COLOR) + rng.normal(0, 8, (settings.floor_points, 3)), 0, 255)
            clouds.append(np.concatenate([floor, floor_rgb], axis=1))
            return objects, np.concatenate(clouds).astype(np.float32)
    raise DataError("could not place the objects of a scene in 100 attempts")  # pragma: no cover


def _phrase(obj: SceneObject, objects: list[SceneObject]) -> str:
    """``duck`` when the category is unique in the scene, else ``red duck``."""
    same = sum(o.category == obj.category for o in objects)
    return obj.category if same == 1 else f"{obj.color} {obj.category}"


def _situation(rng: np.random.Generator, objects: list[SceneObject]) -> dict[str, Any] | None:
    """An agent standing by one object and facing another (or with it at its back), clear of every object.

    Half the situations put the second object behind the agent: facing an object alone would leave
    80% of the other objects in front (an agent tends to face the middle of the room)."""
    for _ in range(50):
        anchor, facing = rng.choice(len(objects), 2, replace=False)
        x, y = objects[int(anchor)], objects[int(facing)]
        reach = max(x.size[:2]) / 2 + 0.3
        angle = float(rng.uniform(-math.pi, math.pi))
        pos = x.xy + reach * np.array([math.cos(angle), math.sin(angle)])
        if np.abs(pos).max() > ROOM_HALF - 0.1:
            continue
        if any(np.linalg.norm(pos - o.xy) < max(o.size[:2]) / 2 + 0.15 for o in objects):
            continue
        d = y.xy - pos
        if np.linalg.norm(d) < 0.5:
            continue
        kind = "facing" if rng.random() < 0.5 else "back"
        yaw = math.atan2(d[1], d[0]) + (0.0 if kind == "facing" else math.pi)
        yaw = math.atan2(math.sin(yaw), math.cos(yaw))
        texts = [t.format(x=_phrase(x, objects), y=_phrase(y, objects)) for t in SITUATION_TEMPLATES[kind]]
        order = rng.permutation(len(texts))
        return {
            "anchor": int(anchor),
            "facing": int(facing),
            "xy": pos,
            "yaw": yaw,
            "situation": texts[order[0]],
            "alternative_situation": [texts[order[1]], texts[order[2]]],
        }
    return None


def _situated_questions(rng, objects: list[SceneObject], sit: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(family, question, answer) candidates whose answers depend on the agent's pose."""
    pos, yaw = sit["xy"], sit["yaw"]
    others = [o for i, o in enumerate(objects) if i not in (sit["anchor"], sit["facing"])]
    out = []
    for o in others:
        fwd, left = egocentric(pos, yaw, o.xy)
        name = _phrase(o, objects)
        if abs(left) >= MARGIN:
            out.append(("side", f"Is the {name} on my left or right?", side(pos, yaw, o.xy)))
        if abs(fwd) >= MARGIN:
            if rng.random() < 0.5:
                out.append(("front", f"Is the {name} in front of me or behind me?", front_or_behind(pos, yaw, o.xy)))
            else:
                out.append(("see", f"Can I see the {name} without turning around?", "yes" if fwd > 0 else "no"))
        angle = abs(math.degrees(math.atan2(left, fwd)))
        if min(abs(angle - 45), abs(angle - 135)) >= 12:
            out.append(("direction", f"Which direction should I go to reach the {name}?", direction(pos, yaw, o.xy)))
    lateral = [egocentric(pos, yaw, o.xy)[1] for i, o in enumerate(objects) if i != sit["anchor"]]
    if all(abs(v) >= MARGIN for v in lateral):
        word = "left" if rng.random() < 0.5 else "right"
        n = sum((v > 0) == (word == "left") for v in lateral)
        out.append(("count_side", f"How many objects are on my {word}?", NUMBERS[n]))
    return out


def _general_questions(rng, objects: list[SceneObject]) -> list[tuple[str, str, str]]:
    """(family, question, answer) candidates that do not depend on the situation."""
    counts = Counter(o.category for o in objects)
    out = []
    for name, plural, _ in CATEGORIES.values():
        if counts[name]:
            out.append(("count", f"How many {plural} are there?", NUMBERS[counts[name]]))
    present = [CATEGORIES[m] for m in CATEGORIES if counts[CATEGORIES[m][0]]]
    absent = [CATEGORIES[m] for m in CATEGORIES if not counts[CATEGORIES[m][0]]]
    if present:
        name = present[int(rng.integers(len(present)))][0]
        out.append(("exist", f"Is there a {name} in the room?", "yes"))
    if absent:
        name = absent[int(rng.integers(len(absent)))][0]
        out.append(("exist", f"Is there a {name} in the room?", "no"))
    for o in objects:
        if counts[o.category] == 1:
            out.append(("color", f"What color is the {o.category}?", o.color))
    color_counts = Counter(o.color for o in objects)
    for o in objects:
        if color_counts[o.color] == 1:
            out.append(("object", f"What is the {o.color} object?", o.category))
    for _ in range(3):
        a, b = (objects[int(i)] for i in rng.choice(len(objects), 2, replace=False))
        if a.category != b.category and max(a.volume, b.volume) >= 1.3 * min(a.volume, b.volume):
            bigger = a if a.volume > b.volume else b
            out.append(
                ("size", f"Which is bigger, the {_phrase(a, objects)} or the {_phrase(b, objects)}?", bigger.category)
            )
            break
    return out


def _pick(rng, candidates: list[tuple[str, str, str]], k: int, taken: set[str]) -> list[tuple[str, str]]:
    """Up to ``k`` (question, answer) pairs, balanced: a family uniformly, then an answer of that family
    uniformly, then a question with that answer (so "in front" does not outnumber "behind" 4:1)."""
    pool: dict[str, dict[str, list[str]]] = {}
    for family, question, answer in candidates:
        if question not in taken:
            pool.setdefault(family, {}).setdefault(answer, []).append(question)
    out = []
    while pool and len(out) < k:
        family = sorted(pool)[int(rng.integers(len(pool)))]
        answer = sorted(pool[family])[int(rng.integers(len(pool[family])))]
        questions = pool[family][answer]
        question = questions.pop(int(rng.integers(len(questions))))
        out.append((question, answer))
        for fam in list(pool):  # a question text is asked once per situation
            for ans in list(pool[fam]):
                pool[fam][ans] = [q for q in pool[fam][ans] if q != question]
                if not pool[fam][ans]:
                    del pool[fam][ans]
            if not pool[fam]:
                del pool[fam]
    return out


def generate_scene(
    index: int, settings: GeneratorSettings, canonical: dict[str, np.ndarray]
) -> tuple[list[SceneObject], np.ndarray, list[dict[str, Any]]]:
    """(scene graph, points [P, 6], question records) of scene ``index`` (deterministic)."""
    rng = np.random.default_rng([settings.seed, index])
    objects, points = _place_objects(rng, canonical, settings)
    records = []
    general_taken: set[str] = set()
    for _ in range(settings.situations_per_scene):
        sit = _situation(rng, objects)
        if sit is None:
            continue
        situated = _situated_questions(rng, objects, sit)
        chosen = _pick(rng, situated, settings.situated_per_situation, set())
        candidates = _general_questions(rng, objects)
        general = _pick(rng, candidates, settings.general_per_situation, general_taken)
        general_taken.update(q for q, _ in general)
        family_of = {q: f for f, q, _ in situated + candidates}
        for question, answer in chosen + general:
            records.append(
                {
                    "situation": sit["situation"],
                    "alternative_situation": sit["alternative_situation"],
                    "question": question,
                    "answer": answer,
                    "xy": sit["xy"],
                    "yaw": sit["yaw"],
                    "family": family_of[question],
                }
            )
    return objects, points, records


# ---------------------------------------------------------------------- question families
# The generator's templates, recognised from the question text alone (the files a user brings carry no
# family), so a run on the embedded scenes can report whether the situation text is used at all.
_FAMILY_PATTERNS: tuple[tuple[str, re.Pattern], ...] = tuple(
    (family, re.compile(pattern))
    for family, pattern in (
        ("side", r"^Is the .+ on my left or right\?$"),
        ("front", r"^Is the .+ in front of me or behind me\?$"),
        ("see", r"^Can I see the .+ without turning around\?$"),
        ("direction", r"^Which direction should I go to reach the .+\?$"),
        ("count_side", r"^How many objects are on my (left|right)\?$"),
        ("count", r"^How many .+ are there\?$"),
        ("exist", r"^Is there a .+ in the room\?$"),
        ("color", r"^What color is the .+\?$"),
        ("object", r"^What is the .+ object\?$"),
        ("size", r"^Which is bigger, the .+ or the .+\?$"),
    )
)
SITUATED_FAMILIES = frozenset({"side", "front", "see", "direction", "count_side"})


def question_family(question: str) -> str | None:
    """The generator template a question was made from, or None for a question it cannot have made."""
    return next((family for family, pattern in _FAMILY_PATTERNS if pattern.match(question.strip())), None)


def situated_breakdown(
    references: dict[str, dict[str, Any]], predictions: dict[str, list[str]]
) -> dict[str, float] | None:
    """EM@1 on the questions whose answer depends on the agent's pose vs on the others (percent).

    None unless every question comes from the generator's templates (real SQA3D/ScanQA files)."""
    families = {qid: question_family(ref.get("question", "")) for qid, ref in references.items()}
    if not families or any(f is None for f in families.values()):
        return None
    out: dict[str, float] = {}
    for name, wanted in (("situated", True), ("general", False)):
        ids = [q for q, f in families.items() if (f in SITUATED_FAMILIES) == wanted]
        if ids:
            hits = sum(exact_match(predictions[q][0], references[q]["answers"]) for q in ids)
            out[f"em1_{name}"] = round(100.0 * hits / len(ids), 2)
            out[f"num_{name}"] = len(ids)
    return out


# ---------------------------------------------------------------------- writing the files
def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            np.save(handle, array)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _lock(root: Path):
    """One generator per folder at a time (several ranks may prepare the same root)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".generate.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_generated(root: str | Path, settings: GeneratorSettings | None = None) -> bool:
    marker = Path(root) / MARKER
    if not marker.is_file():
        return False
    try:
        return read_json(marker) == asdict(settings or GeneratorSettings())
    except DataError:
        return False


def generate(root: str | Path, settings: GeneratorSettings | None = None) -> dict[str, int]:
    """Write the scenes and the SQA3D files under ``root``; returns question counts per split.

    Every file is written atomically and ``GENERATED.json`` last, so an interrupted run leaves no
    marker and is redone. Question ids are SQA3D-like ints: ``scene_index * 1000 + n``.
    """
    settings = settings or GeneratorSettings()
    if settings.num_scenes < 3:
        raise DataError(f"the 3D VQA generator needs at least 3 scenes (one per split), got {settings.num_scenes}")
    root = Path(root)
    canonical = _canonical_points(settings.seed)
    n_val = max(1, int(round(0.1 * settings.num_scenes)))
    n_train = min(int(round(0.8 * settings.num_scenes)), settings.num_scenes - n_val - 1)  # test keeps >= 1 scene
    questions: dict[str, list] = {s: [] for s in SPLITS}
    annotations: dict[str, list] = {s: [] for s in SPLITS}
    graphs: dict[str, Any] = {}
    for index in range(settings.num_scenes):
        split = "train" if index < n_train else "val" if index < n_train + n_val else "test"
        scene_id = f"pbscene{index:04d}_00"
        objects, points, records = generate_scene(index, settings, canonical)
        _atomic_save_npy(root / SCENE_FILE.format(scene_id=scene_id), points)
        graphs[scene_id] = {"split": split, "objects": [asdict(o) for o in objects]}
        for n, r in enumerate(records):
            qid = index * 1000 + n
            questions[split].append(
                {
                    "scene_id": scene_id,
                    "situation": r["situation"],
                    "alternative_situation": r["alternative_situation"],
                    "question": r["question"],
                    "question_id": qid,
                }
            )
            annotations[split].append(
                {
                    "scene_id": scene_id,
                    "question_type": "N/A",
                    "answer_type": "other",
                    "question_id": qid,
                    "answers": [{"answer": r["answer"], "answer_confidence": "yes", "answer_id": 1}],
                    "rotation": yaw_quaternion(r["yaw"]),
                    "position": {"x": float(r["xy"][0]), "y": float(r["xy"][1]), "z": 0.0},
                }
            )
    info = {
        "description": "mmllm embedded 3D VQA scenes (pybullet_data meshes) in SQA3D v1 format",
        "version": "1.0",
        "contributor": "mmllm generator",
        "seed": settings.seed,
    }
    for split in SPLITS:
        write_json(
            root / QUESTIONS_FILE.format(split=split),
            {
                "info": info,
                "data_type": "pbscenes",
                "task_type": "Situated question answering",
                "questions": questions[split],
            },
        )
        write_json(
            root / ANNOTATIONS_FILE.format(split=split),
            {"info": info, "data_type": "pbscenes", "annotations": annotations[split]},
        )
    write_json(root / "scene_graphs.json", graphs)
    write_json(root / MARKER, asdict(settings))
    return {s: len(questions[s]) for s in SPLITS}


def ensure_generated(root: str | Path) -> Path:
    """The registry preparer ``pb_scenes``: generate the default scenes under ``root`` unless already there."""
    root = Path(root)
    if is_generated(root):
        return root
    with _lock(root):
        if not is_generated(root):
            generate(root)
    return root
