"""The embedded scene simulator: deterministic files, physically plausible tracks (an independent ODE
solver reproduces every frame of the kinematic bicycle), atomic and idempotent writing, readable by the loader."""

import hashlib
import math

import numpy as np
import pandas as pd
import pytest
from scipy.integrate import solve_ivp

from mmllm.errors import DataError
from vision.motion import simulate
from vision.motion.data import LaneMap, SceneOptions, load_split, read_lane_file

SIZES = {"train": 6, "val": 2, "test": 2}


def digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def maps():
    return simulate.build_maps(seed=3)


@pytest.fixture(scope="module")
def scenes(maps):
    return simulate.simulate_scenes(maps, 24, np.random.default_rng(5))


def test_same_seed_same_bytes_and_the_loader_reads_them(tmp_path):
    a = simulate.write_dataset(tmp_path / "a", SIZES, seed=1)
    b = simulate.write_dataset(tmp_path / "b", SIZES, seed=1)
    c = simulate.write_dataset(tmp_path / "c", SIZES, seed=2)
    assert digest(a) == digest(b) != digest(c)
    assert sorted(p.name for p in (a / "train" / "data").iterdir()) == [f"{i}.csv" for i in range(1, 7)]
    lane_file = a / "lanes.json"
    lanes = LaneMap(read_lane_file(lane_file), 9, lane_file)
    ds = load_split(a / "train" / "data", lanes, SceneOptions(), "train")
    assert ds.has_future and len(ds) == 6
    assert all(len(s["lane_vectors"]) > 0 for s in ds.samples)  # every scene is on the map
    df = pd.read_csv(a / "val" / "data" / "1.csv")
    assert list(df.columns) == ["TIMESTAMP", "TRACK_ID", "OBJECT_TYPE", "X", "Y", "CITY_NAME"]
    assert (df.OBJECT_TYPE == "AGENT").sum() == 50 and (df.OBJECT_TYPE == "AV").sum() == 50
    assert df.TIMESTAMP.is_monotonic_increasing


def test_idempotent_and_never_overwrites(tmp_path):
    root = simulate.write_dataset(tmp_path / "d", {"train": 2}, seed=0)
    stamp = (root / "train" / "data" / "1.csv").stat().st_mtime_ns
    assert simulate.write_dataset(root, {"train": 2}, seed=0) == root
    assert (root / "train" / "data" / "1.csv").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="other settings"):
        simulate.write_dataset(root, {"train": 3}, seed=0)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's file")
    with pytest.raises(DataError, match="not an embedded motion dataset"):
        simulate.write_dataset(mine, {"train": 2}, seed=0)
    assert (mine / "notes.txt").read_text() == "a user's file"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def _bicycle(t, state, accel, steer, wheelbase):
    x, y, psi, v = state
    return [v * math.cos(psi), v * math.sin(psi), v * math.tan(steer) / wheelbase, accel]


def test_tracks_follow_the_kinematic_bicycle(scenes):
    alive = np.argwhere(scenes.alive)
    rng = np.random.default_rng(0)
    for i, a in alive[rng.choice(len(alive), 25, replace=False)]:
        for k in rng.choice(simulate.SEQ_LEN, 4, replace=False):
            accel, steer = scenes.inputs[i, a, k]
            sol = solve_ivp(
                _bicycle,
                (0.0, simulate.DT),
                scenes.states[i, a, k],
                rtol=1e-10,
                atol=1e-10,
                args=(accel, steer, scenes.wheelbase[i, a]),
            )
            assert sol.y[:, -1] == pytest.approx(scenes.states[i, a, k + 1], abs=1e-4)


def test_speeds_steering_and_accelerations_are_bounded(scenes):
    live = scenes.alive
    v = scenes.states[..., 3][live]
    accel, steer = scenes.inputs[..., 0][live], scenes.inputs[..., 1][live]
    assert v.min() >= 0.0 and v.max() < 16.0  # desired speeds are 7-14 m/s
    assert np.abs(steer).max() <= simulate.MAX_STEER + 1e-12
    assert accel.min() >= -simulate.MAX_BRAKE - 1e-12 and accel.max() <= 2.5
    # positions alone: speed from finite differences, and no slip sideways (heading = direction of motion)
    xy = scenes.states[..., :2][live]
    step = np.diff(xy, axis=1)
    speed = np.linalg.norm(step, axis=-1) / simulate.DT
    assert speed.max() < 16.0
    psi = scenes.states[..., 2][live]
    moving = np.linalg.norm(step, axis=-1) > 0.2
    direction = np.arctan2(step[..., 1], step[..., 0])
    mid_heading = np.angle(np.exp(1j * psi[:, :-1]) + np.exp(1j * psi[:, 1:]))
    assert np.abs(np.angle(np.exp(1j * (direction - mid_heading))))[moving].max() < 0.02
    # lateral acceleration v^2 * kappa stays moderate (curvature-limited speeds)
    lat = v[:, :-1] ** 2 * np.abs(np.tan(scenes.inputs[..., 1][live])) / scenes.wheelbase[live][:, None]
    assert np.percentile(lat, 99) < 4.0


def test_focal_agent_and_multimodal_routes(scenes, maps):
    assert scenes.alive[:, :3].all()  # AGENT, AV and at least one OTHERS per scene
    turns = [t for scene in scenes.turn for t in scene]
    assert {"LEFT", "RIGHT", "NONE"} <= set(turns)
    lanes = {m.name: m.lanes for m in maps}
    assert all(lane["turn_direction"] in ("NONE", "LEFT", "RIGHT") for m in lanes.values() for lane in m)
    assert any(lane["is_intersection"] for m in lanes.values() for lane in m)
