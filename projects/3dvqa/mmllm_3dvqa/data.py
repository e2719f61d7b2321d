"""3D VQA data: SQA3D's and ScanQA's released question files, and per-scene point clouds.

* SQA3D (Ma et al., ICLR 2023): ``v1_balanced_questions_<split>_scannetv2.json``
  (``{"questions": [{scene_id, situation, alternative_situation, question, question_id}]}``) and
  ``v1_balanced_sqa_annotations_<split>_scannetv2.json`` (``{"annotations": [{scene_id, question_id,
  answers: [{answer, answer_confidence, answer_id}], position: {x, y, z}, rotation: {_x, _y, _z, _w},
  question_type, answer_type}]}``).
* ScanQA (Azuma et al., CVPR 2022): ``ScanQA_v1.0_<split>.json``, a list of ``{question_id, question,
  answers: [str], scene_id, object_ids, object_names}`` (the test files have no answers); no situation.
* Point clouds: one file per scene, ``[P, 3 + C]`` ``.npy`` (x y z, then r g b in 0-255 as ScanNet's
  exports) or ``.ply`` (read with trimesh: vertices and vertex colours).

Joined records are held in a ``datasets.Dataset`` (Arrow); point clouds are read once per split,
checked (shape, NaN/inf) and kept in memory, capped at ``cache_points`` points per scene.
"""

from __future__ import annotations

import copy
import json
import logging
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mmllm.errors import DataError
from mmllm.jsonio import read_json

from .eval3d import normalize_answer

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- question files
def _records(path: str | Path, field: str | None, what: str) -> list[dict[str, Any]]:
    data = read_json(path, what)
    if field is None:
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of question records (ScanQA layout)")
        records = data
    else:
        if not isinstance(data, dict) or not isinstance(data.get(field), list):
            raise DataError(f"{path}: expected a JSON object with a list under {field!r} (SQA3D format)")
        records = data[field]
    for n, r in enumerate(records):
        if not isinstance(r, dict):
            raise DataError(f"{path}: record {n} is a {type(r).__name__}, expected an object")
    return records


def _require(record: dict, keys: Sequence[str], path: str | Path, n: int) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise DataError(f"{path}: record {n} (question_id {record.get('question_id', '?')!r}) lacks {missing}")


def _check_id(qid: Any, path: str | Path, n: int) -> str:
    if isinstance(qid, bool) or not isinstance(qid, (int, str)) or str(qid) == "":
        raise DataError(f"{path}: record {n} has question_id {qid!r}, expected an int or a non-empty string")
    return str(qid)


def _no_duplicates(ids: list[str], path: str | Path) -> None:
    dup = sorted(q for q, c in Counter(ids).items() if c > 1)
    if dup:
        raise DataError(f"{path}: {len(dup)} question id(s) appear more than once, e.g. {dup[:5]}")


def _answer_texts(raw: Any, path: str | Path, qid: str) -> list[str]:
    if not isinstance(raw, list):
        raise DataError(f"{path}: question {qid} has answers {raw!r}, expected a list")
    out = []
    for a in raw:
        text = a.get("answer") if isinstance(a, dict) else a
        if not isinstance(text, str) or not normalize_answer(text):
            raise DataError(f"{path}: question {qid} has an answer {a!r} that is not a non-empty string")
        out.append(text)
    return out


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise DataError(f"{where}: {value!r} is not a finite number")
    return float(value)


def _pose(record: dict, path: str | Path, qid: str) -> list[float] | None:
    """SQA3D's agent pose as [x, y, z, qx, qy, qz, qw] (None when the record has none)."""
    position, rotation = record.get("position"), record.get("rotation")
    if position is None and rotation is None:
        return None
    where = f"{path}: question {qid}"
    if not isinstance(position, dict) or not isinstance(rotation, dict):
        raise DataError(f"{where}: position and rotation must both be objects ({{x, y, z}}, {{_x, _y, _z, _w}})")
    try:
        return [_number(position[k], f"{where} position.{k}") for k in ("x", "y", "z")] + [
            _number(rotation[k], f"{where} rotation.{k}") for k in ("_x", "_y", "_z", "_w")
        ]
    except KeyError as exc:
        raise DataError(f"{where}: pose lacks {exc}") from None


def load_sqa3d(questions: str | Path, annotations: str | Path | None) -> list[dict[str, Any]]:
    """Joined SQA3D records: question_id (str), qid_json, scene_id, situation, question, answers, pose."""
    qs = _records(questions, "questions", "SQA3D questions file")
    ids = []
    for n, q in enumerate(qs):
        _require(q, ("question_id", "scene_id", "situation", "question"), questions, n)
        ids.append(_check_id(q["question_id"], questions, n))
        for key in ("scene_id", "situation", "question"):
            if not isinstance(q[key], str):
                raise DataError(f"{questions}: record {n} has {key} {q[key]!r}, expected a string")
    _no_duplicates(ids, questions)
    anns: dict[str, dict] = {}
    if annotations is not None:
        records = _records(annotations, "annotations", "SQA3D annotations file")
        a_ids = []
        for n, a in enumerate(records):
            _require(a, ("question_id", "answers"), annotations, n)
            a_ids.append(_check_id(a["question_id"], annotations, n))
        _no_duplicates(a_ids, annotations)
        anns = dict(zip(a_ids, records))
        unannotated = [q for q in ids if q not in anns]
        if unannotated:
            raise DataError(
                f"{len(unannotated)} question(s) of {questions} have no annotation in {annotations}, "
                f"e.g. {unannotated[:5]}"
            )
        orphans = sorted(set(anns) - set(ids))
        if orphans:
            raise DataError(
                f"{annotations} annotates {len(orphans)} question(s) not in {questions}, e.g. {orphans[:5]}"
            )
    out = []
    for qid, q in zip(ids, qs):
        a = anns.get(qid)
        if a is not None and "scene_id" in a and a["scene_id"] != q["scene_id"]:
            raise DataError(
                f"question {qid}: scene {q['scene_id']!r} in {questions} but {a['scene_id']!r} in {annotations}"
            )
        out.append(
            {
                "question_id": qid,
                "qid_json": json.dumps(q["question_id"]),
                "scene_id": q["scene_id"],
                "situation": q["situation"],
                "question": q["question"],
                "answers": _answer_texts(a["answers"], annotations, qid) if a is not None else [],
                "pose": _pose(a, annotations, qid) if a is not None else None,
            }
        )
    return out


def load_scanqa(path: str | Path) -> list[dict[str, Any]]:
    """ScanQA records (no situation: empty string; no pose). Test files without answers give ``answers: []``."""
    records = _records(path, None, "ScanQA file")
    ids = []
    out = []
    for n, r in enumerate(records):
        _require(r, ("question_id", "scene_id", "question"), path, n)
        qid = _check_id(r["question_id"], path, n)
        ids.append(qid)
        if not isinstance(r["question"], str) or not isinstance(r["scene_id"], str):
            raise DataError(f"{path}: record {n} needs string 'question' and 'scene_id'")
        out.append(
            {
                "question_id": qid,
                "qid_json": json.dumps(r["question_id"]),
                "scene_id": r["scene_id"],
                "situation": "",
                "question": r["question"],
                "answers": _answer_texts(r.get("answers", []), path, qid),
                "pose": None,
            }
        )
    _no_duplicates(ids, path)
    return out


# ---------------------------------------------------------------------- point clouds
PLY_FORMATS = ("ascii", "binary_little_endian", "binary_big_endian")


def ply_header(path: Path) -> tuple[str, int, list[str]]:
    """(format, vertex count, vertex property names) from a ``.ply`` header, checked before the data are read
    (the PLY format: http://paulbourke.net/dataformats/ply/): DataError naming the file and what is wrong."""
    lines: list[str] = []
    with open(path, "rb") as handle:
        for raw in handle:
            line = raw.decode("ascii", errors="replace").strip()
            if not lines and line != "ply":
                raise DataError(f"{path}: not a PLY file (it does not start with the line 'ply')")
            lines.append(line)
            if line == "end_header" or len(lines) > 10_000:
                break
    if not lines:
        raise DataError(f"{path}: not a PLY file (it is empty)")
    if lines[-1] != "end_header":
        raise DataError(f"{path}: PLY header without an 'end_header' line (truncated, or not a PLY file)")
    fmt = next((line.split()[1:2] for line in lines if line.startswith("format ")), None)
    if not fmt or fmt[0] not in PLY_FORMATS:
        raise DataError(f"{path}: PLY header without a 'format {' | '.join(PLY_FORMATS)} 1.0' line")
    count, properties, element = None, [], None
    for line in lines:
        words = line.split()
        if words[:1] == ["element"]:
            element = words[1] if len(words) > 1 else None
            if element == "vertex":
                if len(words) != 3 or not words[2].isdigit():
                    raise DataError(f"{path}: malformed PLY line {line!r} (expected 'element vertex <count>')")
                count = int(words[2])
        elif words[:1] == ["property"] and element == "vertex" and len(words) >= 3:
            properties.append(words[-1])
    if count is None:
        raise DataError(f"{path}: PLY file without a 'vertex' element (no points)")
    for axis in ("x", "y", "z"):
        if axis not in properties:
            raise DataError(
                f"{path}: PLY file has no {axis!r} vertex property (its vertex properties: "
                f"{', '.join(properties) or 'none'})"
            )
    return fmt[0], count, properties


def read_point_cloud(path: str | Path, use_color: bool) -> np.ndarray:
    """``[P, 3]`` or ``[P, 6]`` float32 (x y z [r g b in 0-255]) from ``.npy`` or ``.ply``, checked."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"scene point cloud {path} does not exist")
    if path.suffix.lower() == ".ply":
        import trimesh

        fmt, count, _ = ply_header(path)
        try:
            geometry = trimesh.load(str(path), process=False)
        except Exception as exc:  # trimesh raises many types for unreadable files
            raise DataError(
                f"cannot read point cloud {path}: its {fmt} data do not match its header, the file is "
                f"truncated or corrupt ({type(exc).__name__}: {exc})"
            ) from exc
        vertices = np.asarray(getattr(geometry, "vertices", np.zeros((0, 3))), dtype=np.float64)
        if len(vertices) != count:
            raise DataError(
                f"{path}: its PLY header declares {count} vertices, but {len(vertices)} were read (a truncated file?)"
            )
        colors = getattr(geometry, "colors", None)
        if colors is None or len(colors) == 0:
            visual = getattr(geometry, "visual", None)
            colors = getattr(visual, "vertex_colors", None)
        if use_color:
            if colors is None or len(colors) != len(vertices):
                raise DataError(f"{path}: no per-vertex colours, but datasets.mmllm_3dvqa.use_color is true")
            array = np.concatenate([vertices, np.asarray(colors, dtype=np.float64)[:, :3]], axis=1)
        else:
            array = vertices
    else:
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"cannot read point cloud {path}: {exc}") from exc
    if array.dtype.kind not in "fiu":
        raise DataError(f"{path}: point cloud of dtype {array.dtype}, expected numbers")
    need = 6 if use_color else 3
    if array.ndim != 2 or array.shape[1] < need or array.shape[0] == 0:
        raise DataError(
            f"{path}: point cloud of shape {list(array.shape)}, expected [P, 3 + C] with P >= 1 and "
            f"at least {need} columns (x y z{' r g b' if use_color else ''})"
        )
    array = np.asarray(array[:, :need], dtype=np.float32)
    if not np.isfinite(array).all():
        rows = np.flatnonzero(~np.isfinite(array).all(1))
        raise DataError(
            f"{path}: point cloud has NaN/inf values in {len(rows)} point(s), e.g. rows {rows[:5].tolist()}"
        )
    return array


class SceneStore:
    """Point clouds by scene id, read once from ``scene_dir / scene_pattern`` and checked."""

    def __init__(
        self, scene_dir: str | Path, pattern: str = "{scene_id}.npy", use_color: bool = True, cache_points: int = 40000
    ):
        self.scene_dir = Path(scene_dir)
        self.pattern = pattern
        self.use_color = use_color
        self.cache_points = cache_points
        self._scenes: dict[str, np.ndarray] = {}

    def path(self, scene_id: str) -> Path:
        return self.scene_dir / self.pattern.format(scene_id=scene_id)

    def load_all(self, scene_ids: Sequence[str], split: str) -> None:
        """Read every scene a split needs; a missing scene file is an error naming the scene and the file."""
        wanted = sorted(set(scene_ids) - set(self._scenes))
        missing = [s for s in wanted if not self.path(s).is_file()]
        if missing:
            raise DataError(
                f"split {split!r}: {len(missing)} scene(s) have no point cloud, e.g. {missing[:3]} "
                f"(looked for {self.path(missing[0])})"
            )
        for scene_id in wanted:
            points = read_point_cloud(self.path(scene_id), self.use_color)
            if len(points) > self.cache_points:  # ScanQA/SQA3D models use 40k points per ScanNet scene
                rng = np.random.default_rng(zlib.crc32(scene_id.encode()))
                points = points[np.sort(rng.choice(len(points), self.cache_points, replace=False))]
            self._scenes[scene_id] = points

    def __getitem__(self, scene_id: str) -> np.ndarray:
        return self._scenes[scene_id]


# ---------------------------------------------------------------------- vocabulary, dataset, batches
def build_answer_vocab(records: Sequence[dict[str, Any]], max_answers: int | None = None) -> list[str]:
    """The normalised training answers, most frequent first (ties alphabetical), at most ``max_answers``."""
    counts = Counter(normalize_answer(a) for r in records for a in r["answers"])
    ranked = sorted(counts, key=lambda a: (-counts[a], a))
    return ranked[:max_answers] if max_answers else ranked


class SceneQADataset(Dataset):
    """One split: a question, its situation, its scene's points (``num_points`` sampled) and its answers.

    Training draws a fresh random subset of the scene's points each time; evaluation a fixed one
    (seeded by the question id), so every evaluation sees the same points.
    """

    def __init__(
        self,
        name: str,
        records: list[dict[str, Any]],
        store: SceneStore,
        vocab: Sequence[str],
        num_points: int,
        train: bool,
        blank_situation: bool = False,
        color_scale: float = 255.0,
    ):
        import datasets

        self.name = name
        self.store = store
        self.train = train
        self.num_points = num_points
        self.color_scale = color_scale
        self.answer_index = {a: i for i, a in enumerate(vocab)}
        if blank_situation:  # the no-situation ablation: the question alone
            records = [{**r, "situation": ""} for r in records]
        if train:
            kept = [r for r in records if any(normalize_answer(a) in self.answer_index for a in r["answers"])]
            if len(kept) < len(records):
                log.warning(
                    "split %s: %d question(s) without an in-vocabulary answer are not trained on",
                    name,
                    len(records) - len(kept),
                )
            records = kept
        if not records:
            raise DataError(f"split {name!r} has no questions")
        store.load_all([r["scene_id"] for r in records], name)
        try:
            self.table = datasets.Dataset.from_list(records)
        except Exception as exc:  # Arrow type errors: records of inconsistent types
            raise DataError(f"split {name!r}: inconsistent question records: {exc}") from exc

    def __len__(self) -> int:
        return len(self.table)

    @property
    def ids(self) -> list[str]:
        return list(self.table["question_id"])

    def head(self, n: int) -> SceneQADataset:
        """The first ``n`` questions (their scenes stay loaded in the shared store)."""
        part = copy.copy(self)
        part.table = self.table.select(range(min(n, len(self.table))))
        return part

    def references(self) -> dict[str, dict[str, Any]]:
        """Question id -> {question, answers} for :func:`mmllm_3dvqa.eval3d.score` (annotated questions only)."""
        return {
            r["question_id"]: {"question": r["question"], "answers": r["answers"]} for r in self.table if r["answers"]
        }

    def _sample(self, points: np.ndarray, qid: str) -> np.ndarray:
        n = len(points)
        if self.train:
            idx = (
                torch.randperm(n)[: self.num_points].numpy()
                if n >= self.num_points
                else torch.randint(n, (self.num_points,)).numpy()
            )
        else:
            rng = np.random.default_rng(zlib.crc32(qid.encode()))
            idx = rng.choice(n, self.num_points, replace=n < self.num_points)
        out = points[idx].copy()
        if out.shape[1] > 3:
            out[:, 3:] /= self.color_scale
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.table[i]
        targets = [self.answer_index[a] for a in map(normalize_answer, r["answers"]) if a in self.answer_index]
        return {
            "points": torch.from_numpy(self._sample(self.store[r["scene_id"]], r["question_id"])),
            "situation": r["situation"],
            "question": r["question"],
            "question_id": r["question_id"],
            "answer_ids": targets,
            "pose": r["pose"],
        }


def make_collate(tokenizer, num_answers: int, max_text_len: int, separate_text: bool = False):
    """Batches: points [B, N, 3+C] fp32, situation+question as one pair-encoded sequence
    (``[CLS] situation [SEP] question [SEP]``), multi-hot answer counts, the agent pose if known.
    ``separate_text`` (SQA3D's baseline): also situation and question encoded on their own
    (``situation_ids``/``situation_mask``, ``question_ids``/``question_mask``, each up to ``max_text_len``)."""

    def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
        text = tokenizer(
            [s["situation"] for s in samples],
            [s["question"] for s in samples],
            padding=True,
            truncation="longest_first",
            max_length=max_text_len,
            return_tensors="pt",
        )
        extra: dict[str, Any] = {}
        for key in ("situation", "question") if separate_text else ():
            one = tokenizer(
                [s[key] for s in samples], padding=True, truncation=True, max_length=max_text_len, return_tensors="pt"
            )
            extra[f"{key}_ids"], extra[f"{key}_mask"] = one["input_ids"], one["attention_mask"]
        targets = torch.zeros(len(samples), num_answers)
        for row, s in enumerate(samples):
            for a in s["answer_ids"]:
                targets[row, a] += 1.0
        poses = [s["pose"] for s in samples]
        return {
            "points": torch.stack([s["points"] for s in samples]).float(),
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "targets": targets,
            "pose": torch.tensor([p if p is not None else [0.0] * 7 for p in poses], dtype=torch.float32),
            "pose_mask": torch.tensor([p is not None for p in poses]),
            "question_id": [s["question_id"] for s in samples],
            **extra,
        }

    return collate
