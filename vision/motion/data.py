"""Argoverse 1 forecasting data: CSV sequences + a lane file -> agent-centric VectorNet vectors.

**Sequences** are the Argoverse 1 motion-forecasting CSVs (one scene per file, e.g.
``forecasting_train_v1.1/train/data/1.csv``), read with pandas::

    TIMESTAMP,TRACK_ID,OBJECT_TYPE,X,Y,CITY_NAME
    315969629.02,00000000-0000-0000-0000-000000000000,AV,2133.02,575.39,PIT

``OBJECT_TYPE`` is ``AGENT`` (the one focal track to forecast), ``AV`` or ``OTHERS``. The
AGENT is seen at every 10 Hz frame: 20 observed + 30 future frames (train/val), or only the
20 observed ones (a test split without ground truth). Its timestamps are the scene's clock:
a gap in them, a duplicated frame, NaN coordinates or a missing column is a
:class:`~mmllm.errors.DataError` naming the file (and the track and time). Other tracks may
start late, end early or miss frames (tracking drop-outs are normal in Argoverse): only their
consecutive observed frames become vectors.

**Lane file.** Argoverse's own map API is not on PyPI, so the lane graph comes as one JSON
file of lane centre-lines per city (the simulator writes the same format)::

    {"format": "mmllm-lanes", "version": 1,
     "cities": {"PIT": [{"id": 9604,                              # int or str, unique per city
                         "centerline": [[x, y], [x, y], ...],     # >= 2 points, city frame, metres
                         "is_intersection": false,                # optional, default false
                         "turn_direction": "NONE",                # optional: NONE | LEFT | RIGHT
                         "has_traffic_control": false,            # optional, default false
                         "successors": [9605], "predecessors": []},   # optional, not used by the model
                        ...]}}

With the Argoverse API installed from its repository, ``ArgoverseMap().city_lane_centerlines_dict``
holds exactly these fields (``centerline``, ``is_intersection``, ``turn_direction``,
``has_traffic_control``, ``successors``, ``predecessors``) per city and lane id.

**Vectors** (VectorNet, Gao et al., CVPR 2020, Sec. 3.1), in the agent-centric frame: origin
at the AGENT's last observed position, +x along its heading (the direction from the latest
earlier observed position at least ``heading_min_displacement`` away; no rotation for an agent
that never moved). Agent vector = ``[x_start, y_start, x_end, y_end, t_end (s, 0 = now),
is_agent, is_av, is_others]``; lane vector = ``[x_start, y_start, x_end, y_end,
is_intersection, turn_left, turn_right, has_traffic_control]``. Lanes with a point within
``lane_radius`` m are cut into polylines of at most ``lane_max_vectors`` vectors, nearest first.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.spatial import cKDTree
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mmllm.errors import DataError
from mmllm.jsonio import read_json

REQUIRED_COLUMNS = ("TIMESTAMP", "TRACK_ID", "OBJECT_TYPE", "X", "Y", "CITY_NAME")
OBJECT_TYPES = ("AGENT", "AV", "OTHERS")
TURN_DIRECTIONS = ("NONE", "LEFT", "RIGHT")
AGENT_FEATURES = 8
LANE_FEATURES = 8


@dataclass(frozen=True)
class SceneOptions:
    """How a sequence becomes vectors (``datasets.mmllm_motion`` keys of the same names)."""

    obs_len: int = 20
    pred_len: int = 30
    frame_interval: float = 0.1
    lane_radius: float = 50.0
    max_lanes: int = 32
    lane_max_vectors: int = 9
    max_agents: int = 16
    heading_min_displacement: float = 0.2


# ---------------------------------------------------------------------------------- lanes
@dataclass
class Lane:
    lane_id: Any
    centerline: np.ndarray  # [P, 2] float64
    is_intersection: bool = False
    turn_direction: str = "NONE"
    has_traffic_control: bool = False


def read_lane_file(path: str | Path) -> dict[str, list[Lane]]:
    """The lane file (format above) as ``{city: [Lane, ...]}``; any malformed lane is a DataError naming it."""
    path = Path(path)
    data = read_json(path, "lane file")
    cities = data.get("cities") if isinstance(data, dict) else None
    if not isinstance(cities, dict) or not cities:
        raise DataError(f"{path}: a lane file needs a non-empty 'cities' object mapping city names to lane lists")
    out: dict[str, list[Lane]] = {}
    for city, lanes in cities.items():
        if not isinstance(lanes, list):
            raise DataError(f"{path}: cities.{city} must be a list of lanes")
        seen: set = set()
        out[city] = []
        for n, lane in enumerate(lanes):
            where = f"{path}: cities.{city}[{n}]"
            if not isinstance(lane, dict) or "id" not in lane or "centerline" not in lane:
                raise DataError(f"{where}: a lane needs 'id' and 'centerline'")
            lane_id = lane["id"]
            if lane_id in seen:
                raise DataError(f"{where}: lane id {lane_id!r} appears twice in city {city}")
            seen.add(lane_id)
            try:
                pts = np.asarray(lane["centerline"], dtype=np.float64)
            except (TypeError, ValueError):
                raise DataError(f"{where} (lane {lane_id!r}): centerline must be a list of [x, y] numbers") from None
            if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 2:
                raise DataError(
                    f"{where} (lane {lane_id!r}): centerline must hold >= 2 [x, y] points, got shape {pts.shape}"
                )
            if not np.isfinite(pts).all():
                raise DataError(f"{where} (lane {lane_id!r}): centerline has NaN or infinite coordinates")
            turn = lane.get("turn_direction", "NONE") or "NONE"
            if turn not in TURN_DIRECTIONS:
                raise DataError(
                    f"{where} (lane {lane_id!r}): turn_direction must be one of {TURN_DIRECTIONS}, got {turn!r}"
                )
            out[city].append(
                Lane(
                    lane_id,
                    pts,
                    bool(lane.get("is_intersection", False)),
                    turn,
                    bool(lane.get("has_traffic_control", False)),
                )
            )
    return out


class LaneMap:
    """Lanes cut into polylines of <= ``max_vectors`` vectors, with a k-d tree per city for radius queries."""

    def __init__(self, lanes: dict[str, list[Lane]], max_vectors: int, source: str | Path = "lane file"):
        self.source = str(source)
        self.cities: dict[str, tuple[list[np.ndarray], np.ndarray, cKDTree, np.ndarray]] = {}
        for city, records in lanes.items():
            pieces, attrs, owners = [], [], []
            for lane in records:
                pts = lane.centerline
                flags = [
                    float(lane.is_intersection),
                    float(lane.turn_direction == "LEFT"),
                    float(lane.turn_direction == "RIGHT"),
                    float(lane.has_traffic_control),
                ]
                for start in range(0, len(pts) - 1, max_vectors):
                    piece = pts[start : start + max_vectors + 1]
                    owners.append(np.full(len(piece), len(pieces)))
                    pieces.append(piece)
                    attrs.append(flags)
            if pieces:
                all_pts = np.concatenate(pieces)
                self.cities[city] = (pieces, np.asarray(attrs, np.float32), cKDTree(all_pts), np.concatenate(owners))

    def near(self, city: str, center: np.ndarray, radius: float, limit: int) -> tuple[list[np.ndarray], np.ndarray]:
        """Polylines with a point within ``radius`` of ``center`` (nearest first, at most ``limit``) and their flags."""
        if city not in self.cities:
            raise DataError(f"city {city!r} is not in the lane file {self.source} (cities: {sorted(self.cities)})")
        pieces, attrs, tree, owners = self.cities[city]
        hits = tree.query_ball_point(center, radius)
        if not hits:
            return [], np.zeros((0, 4), np.float32)
        hits = np.asarray(hits)
        dist = np.linalg.norm(tree.data[hits] - center, axis=1)
        best: dict[int, float] = {}
        for owner, d in zip(owners[hits].tolist(), dist.tolist()):
            if d < best.get(owner, math.inf):
                best[owner] = d
        chosen = sorted(best, key=lambda k: (best[k], k))[:limit]
        return [pieces[k] for k in chosen], attrs[chosen]


# ---------------------------------------------------------------------------------- sequences
@dataclass
class Track:
    track_id: str
    object_type: str
    steps: np.ndarray  # [n] int frame indices (0 = first frame of the scene)
    xy: np.ndarray  # [n, 2] float64, city frame


@dataclass
class Sequence:
    path: Path
    seq_id: str
    city: str
    timestamps: np.ndarray  # the AGENT's (= the scene's) frame times
    agent: Track
    others: list[Track]


def _where(track: np.ndarray, stamp: np.ndarray, bad: np.ndarray) -> str:
    row = int(np.flatnonzero(bad)[0])
    return f"line {row + 2} (TRACK_ID {str(track[row])!r}, TIMESTAMP {stamp[row]})"


def read_sequence(path: str | Path, options: SceneOptions = SceneOptions()) -> tuple[Sequence, bool]:
    """One Argoverse 1 forecasting CSV, checked; returns ``(sequence, has_future)``.

    pandas reads the file; the checks and the grouping run on numpy columns (a few ms a file).
    """
    path = Path(path)
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; an Argoverse 1 forecasting CSV has "
            f"{', '.join(REQUIRED_COLUMNS)} (found {list(df.columns)})"
        )
    if df.empty:
        raise DataError(f"{path}: no rows")
    raw = {c: df[c].to_numpy(dtype=object) for c in ("TRACK_ID", "OBJECT_TYPE", "CITY_NAME", "TIMESTAMP")}
    for col in ("TRACK_ID", "OBJECT_TYPE", "CITY_NAME"):
        bad = df[col].isna().to_numpy()
        if bad.any():
            raise DataError(f"{path}: empty {col} at {_where(raw['TRACK_ID'], raw['TIMESTAMP'], bad)}")
        raw[col] = raw[col].astype(str)
    track, kind, city = raw["TRACK_ID"], raw["OBJECT_TYPE"], raw["CITY_NAME"]
    num = {}
    for col in ("TIMESTAMP", "X", "Y"):
        column = df[col]
        if not pd.api.types.is_float_dtype(column) and not pd.api.types.is_integer_dtype(column):
            column = pd.to_numeric(column, errors="coerce")  # text in a number column -> NaN -> error below
        values = column.to_numpy(np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            raise DataError(f"{path}: {col} is NaN, infinite or not a number at {_where(track, raw['TIMESTAMP'], bad)}")
        num[col] = values
    t = num["TIMESTAMP"]
    unknown = sorted(set(kind) - set(OBJECT_TYPES))
    if unknown:
        raise DataError(f"{path}: OBJECT_TYPE must be one of {OBJECT_TYPES}, found {unknown}")
    cities = sorted(set(city))
    if len(cities) != 1:
        raise DataError(f"{path}: one CITY_NAME per sequence, found {cities}")
    ids, inverse = np.unique(track, return_inverse=True)
    first_kind = np.empty(len(ids), dtype=object)
    first_kind[inverse[::-1]] = kind[::-1]  # the first row's type of each track
    if (first_kind[inverse] != kind).any():
        bad = first_kind[inverse] != kind
        raise DataError(f"{path}: track {str(track[bad][0])!r} has more than one OBJECT_TYPE")
    agent_ids = ids[first_kind == "AGENT"]
    if len(agent_ids) != 1:
        raise DataError(f"{path}: exactly one AGENT track is needed, found {len(agent_ids)} ({list(agent_ids)[:5]})")
    order = np.lexsort((t, inverse))  # by track, then time
    same = (inverse[order][1:] == inverse[order][:-1]) & (t[order][1:] == t[order][:-1])
    if same.any():
        bad = np.zeros(len(t), bool)
        bad[order[1:][same][0]] = True
        raise DataError(f"{path}: duplicated frame at {_where(track, raw['TIMESTAMP'], bad)}")

    agent_id = str(agent_ids[0])
    agent_code = int(np.flatnonzero(ids == agent_id)[0])
    times = np.sort(t[inverse == agent_code])
    dt = options.frame_interval
    steps = np.diff(times)
    if (steps > 1.5 * dt).any():
        k = int(np.argmax(steps > 1.5 * dt))
        raise DataError(
            f"{path}: AGENT track {agent_id!r} has a gap of {steps[k]:.3f} s after TIMESTAMP "
            f"{times[k]:.3f} (its step {k}); the focal agent must be seen every {dt} s"
        )
    if (steps < 0.5 * dt).any():
        k = int(np.argmax(steps < 0.5 * dt))
        raise DataError(
            f"{path}: AGENT track {agent_id!r} has frames {steps[k]:.3f} s apart after TIMESTAMP "
            f"{times[k]:.3f} (its step {k}); expected {dt} s"
        )
    full, obs = options.obs_len + options.pred_len, options.obs_len
    if len(times) not in (full, obs):
        raise DataError(
            f"{path}: AGENT track {agent_id!r} has {len(times)} frames; expected {full} "
            f"({obs} observed + {options.pred_len} future) or {obs} (a test file without the future)"
        )
    # every row onto the AGENT's clock
    idx = np.clip(np.searchsorted(times, t), 1, len(times) - 1)
    idx = np.where(np.abs(t - times[idx - 1]) <= np.abs(t - times[idx]), idx - 1, idx)
    bad = np.abs(t - times[idx]) > 0.25 * dt
    if bad.any():
        raise DataError(
            f"{path}: {_where(track, raw['TIMESTAMP'], bad)} is not at one of the AGENT's frame times "
            f"({times[0]:.3f} .. {times[-1]:.3f} every {dt} s)"
        )
    xy = np.stack([num["X"], num["Y"]], axis=1)
    tracks = []
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    for rows in np.split(order, bounds):  # rows of one track in time order
        code = inverse[rows[0]]
        tracks.append(Track(str(ids[code]), str(first_kind[code]), idx[rows], xy[rows]))
    agent = next(tr for tr in tracks if tr.track_id == agent_id)
    others = [tr for tr in tracks if tr.track_id != agent_id]
    return Sequence(path, path.stem, str(cities[0]), times, agent, others), len(times) == full


# ---------------------------------------------------------------------------------- normalisation
def agent_frame(history: np.ndarray, min_displacement: float = 0.2) -> tuple[np.ndarray, float]:
    """``(origin, heading)`` of the agent-centric frame: the last observed position, and the direction
    to it from the latest earlier position at least ``min_displacement`` m away (0 if it never moved)."""
    origin = history[-1].astype(np.float64)
    for k in range(len(history) - 2, -1, -1):
        d = origin - history[k]
        if math.hypot(d[0], d[1]) >= min_displacement:
            return origin, math.atan2(d[1], d[0])
    return origin, 0.0


def to_agent_frame(points: np.ndarray, origin: np.ndarray, heading: float) -> np.ndarray:
    """City-frame points -> agent frame (translate to ``origin``, rotate ``heading`` onto +x)."""
    c, s = math.cos(heading), math.sin(heading)
    d = np.asarray(points, np.float64) - origin
    return np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], axis=-1)


def to_city_frame(points: np.ndarray, origin: np.ndarray, heading: float) -> np.ndarray:
    """Inverse of :func:`to_agent_frame`."""
    c, s = math.cos(heading), math.sin(heading)
    p = np.asarray(points, np.float64)
    return np.stack([c * p[..., 0] - s * p[..., 1], s * p[..., 0] + c * p[..., 1]], axis=-1) + origin


def vectorize(seq: Sequence, lanes: LaneMap, options: SceneOptions = SceneOptions()) -> dict[str, Any]:
    """VectorNet vectors of one sequence in the AGENT's frame (module docstring), plus what scoring needs."""
    obs = options.obs_len
    agent_hist = seq.agent.xy[:obs]
    origin, heading = agent_frame(agent_hist, options.heading_min_displacement)
    n_vec = obs - 1

    def last_seen(track: Track) -> float:
        seen = track.steps < obs
        return float(np.linalg.norm(track.xy[seen][-1] - origin)) if seen.any() else math.inf

    rank = {"AV": 0, "OTHERS": 1}
    others = sorted(
        (t for t in seq.others if (t.steps < obs).sum() >= 2),
        key=lambda t: (rank.get(t.object_type, 1), last_seen(t), t.track_id),
    )
    tracks = [seq.agent, *others][: options.max_agents]
    agent_vectors = np.zeros((len(tracks), n_vec, AGENT_FEATURES), np.float32)
    agent_mask = np.zeros((len(tracks), n_vec), bool)
    for a, track in enumerate(tracks):
        keep = track.steps < obs
        steps, xy = track.steps[keep], to_agent_frame(track.xy[keep], origin, heading)
        pair = np.flatnonzero(np.diff(steps) == 1)  # consecutive frames only
        slot = steps[pair]  # vector k goes from frame k to k + 1
        agent_vectors[a, slot, 0:2] = xy[pair]
        agent_vectors[a, slot, 2:4] = xy[pair + 1]
        agent_vectors[a, slot, 4] = (steps[pair + 1] - (obs - 1)) * options.frame_interval
        agent_vectors[a, slot, 5 + OBJECT_TYPES.index(track.object_type)] = 1.0
        agent_mask[a, slot] = True
    pieces, flags = lanes.near(seq.city, origin, options.lane_radius, options.max_lanes)
    lane_vectors = np.zeros((len(pieces), options.lane_max_vectors, LANE_FEATURES), np.float32)
    lane_mask = np.zeros((len(pieces), options.lane_max_vectors), bool)
    for k, piece in enumerate(pieces):
        local = to_agent_frame(piece, origin, heading)
        n = len(local) - 1
        lane_vectors[k, :n, 0:2] = local[:-1]
        lane_vectors[k, :n, 2:4] = local[1:]
        lane_vectors[k, :n, 4:8] = flags[k]
        lane_mask[k, :n] = True
    sample = {
        "agent_vectors": agent_vectors,
        "agent_vector_mask": agent_mask,
        "lane_vectors": lane_vectors,
        "lane_vector_mask": lane_mask,
        "origin": origin,
        "heading": heading,
        "seq_id": seq.seq_id,
        "city": seq.city,
    }
    if len(seq.agent.steps) > obs:
        future = seq.agent.xy[obs : obs + options.pred_len]
        sample["gt_city"] = future
        sample["target"] = to_agent_frame(future, origin, heading).astype(np.float32)
    return sample


# ---------------------------------------------------------------------------------- datasets
def _natural_key(path: Path):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", path.name)]


class MotionDataset(Dataset):
    """Vectorised scenes of one split (all read and checked up front: a bad file fails at once)."""

    def __init__(self, samples: list[dict[str, Any]], name: str, has_future: bool):
        self.samples = samples
        self.name = name
        self.has_future = has_future

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def ids(self) -> list:
        """Each scene's sequence id (its file name's stem)."""
        return [s["seq_id"] for s in self.samples]

    def head(self, n: int) -> MotionDataset:
        """The first ``n`` scenes in file order."""
        return MotionDataset(self.samples[:n], self.name, self.has_future)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.samples[i], "index": i}


def load_split(
    folder: str | Path,
    lanes: LaneMap,
    options: SceneOptions = SceneOptions(),
    name: str = "split",
    limit: int | None = None,
    progress: bool = True,
) -> MotionDataset:
    """Every ``*.csv`` in ``folder`` (natural order: 2.csv before 10.csv), vectorised."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{name}: sequence folder {folder} does not exist")
    files = sorted(folder.glob("*.csv"), key=_natural_key)
    if limit is not None:
        files = files[:limit]
    if not files:
        raise DataError(f"{name}: no .csv sequence files in {folder}")
    samples, futures = [], []
    for path in tqdm(files, desc=f"read {name}", disable=not progress or len(files) < 200, mininterval=2.0):
        seq, has_future = read_sequence(path, options)
        try:
            samples.append(vectorize(seq, lanes, options))
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None
        futures.append(has_future)
    if any(futures) and not all(futures):
        without = files[futures.index(False)]
        raise DataError(
            f"{name}: {folder} mixes sequences with and without the future "
            f"({without.name} has only {options.obs_len} AGENT frames)"
        )
    return MotionDataset(samples, name, all(futures))


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Pad agents and lanes to the batch's largest scene. Masks: True = a real vector / polyline."""
    B = len(samples)
    A = max(len(s["agent_vectors"]) for s in samples)
    L = max(1, max(len(s["lane_vectors"]) for s in samples))
    n_av, n_lv = samples[0]["agent_vectors"].shape[1], samples[0]["lane_vectors"].shape[1]
    agent_vectors = torch.zeros(B, A, n_av, AGENT_FEATURES)
    agent_vector_mask = torch.zeros(B, A, n_av, dtype=torch.bool)
    lane_vectors = torch.zeros(B, L, n_lv, LANE_FEATURES)
    lane_vector_mask = torch.zeros(B, L, n_lv, dtype=torch.bool)
    for b, s in enumerate(samples):
        a, n = len(s["agent_vectors"]), len(s["lane_vectors"])
        agent_vectors[b, :a] = torch.from_numpy(s["agent_vectors"])
        agent_vector_mask[b, :a] = torch.from_numpy(s["agent_vector_mask"])
        if n:
            lane_vectors[b, :n] = torch.from_numpy(s["lane_vectors"])
            lane_vector_mask[b, :n] = torch.from_numpy(s["lane_vector_mask"])
    batch = {
        "agent_vectors": agent_vectors,
        "agent_vector_mask": agent_vector_mask,
        "lane_vectors": lane_vectors,
        "lane_vector_mask": lane_vector_mask,
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
    }
    if all("target" in s for s in samples):
        batch["target"] = torch.from_numpy(np.stack([s["target"] for s in samples]))
    return batch
