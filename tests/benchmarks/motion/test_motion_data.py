"""The Argoverse 1 CSV + lane-file loader on small hand-written files: agent-centric normalisation checked
by hand, and every malformed input refused with a message naming the file (and track/time)."""

import json
import math

import numpy as np
import pytest
import torch

from mmllm.errors import DataError
from vision.motion.data import (
    LaneMap,
    SceneOptions,
    agent_frame,
    collate,
    load_split,
    read_lane_file,
    read_sequence,
    to_agent_frame,
    to_city_frame,
    vectorize,
)

T0 = 315969629.0
HEADER = "TIMESTAMP,TRACK_ID,OBJECT_TYPE,X,Y,CITY_NAME"


def rows(track, kind, points, steps=None, city="PIT"):
    steps = range(len(points)) if steps is None else steps
    return [f"{T0 + 0.1 * k:.6f},{track},{kind},{x},{y},{city}" for k, (x, y) in zip(steps, points)]


def agent_line(n=50, start=(100.0, 200.0), heading_deg=90.0, step=1.0):
    """The AGENT moving straight at ``step`` m per frame (10 m/s) along ``heading_deg``."""
    h = math.radians(heading_deg)
    return [(start[0] + k * step * math.cos(h), start[1] + k * step * math.sin(h)) for k in range(n)]


def write_csv(path, lines):
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    return path


def scene_lines(n_agent=50):
    agent = rows("agent-1", "AGENT", agent_line(n_agent))
    av = rows("av-0", "AV", [(110.0, 200.0 + k) for k in range(n_agent)])
    # an OTHERS track seen in frames 3-6 and 9-12 (a tracking drop-out, allowed) and one seen once
    other = rows(
        "other-7", "OTHERS", [(90.0, 190.0 + k) for k in (3, 4, 5, 6, 9, 10, 11, 12)], steps=[3, 4, 5, 6, 9, 10, 11, 12]
    )
    once = rows("other-8", "OTHERS", [(95.0, 195.0)], steps=[5])
    return sorted(agent + av + other + once)


@pytest.fixture
def lane_file(tmp_path):
    lanes = {
        "format": "mmllm-lanes",
        "version": 1,
        "cities": {
            "PIT": [
                {"id": 1, "centerline": [[100.0, 180.0 + 4 * k] for k in range(21)]},  # along the agent's path, 80 m
                {
                    "id": "turn",
                    "centerline": [[100.0, 260.0], [110.0, 270.0]],
                    "is_intersection": True,
                    "turn_direction": "RIGHT",
                    "has_traffic_control": True,
                },
                {"id": 3, "centerline": [[900.0, 900.0], [910.0, 900.0]]},  # far away
            ]
        },
    }
    path = tmp_path / "lanes.json"
    path.write_text(json.dumps(lanes))
    return path


@pytest.fixture
def lanes(lane_file):
    return LaneMap(read_lane_file(lane_file), max_vectors=9, source=lane_file)


def test_agent_frame_by_hand():
    # moving north (+y): the heading is pi/2; a point 1 m east of the agent is on its right: (0, -1)
    hist = np.array(agent_line(20, heading_deg=90.0))
    origin, heading = agent_frame(hist)
    assert origin.tolist() == pytest.approx([100.0, 219.0]) and heading == pytest.approx(math.pi / 2)
    local = to_agent_frame(np.array([[101.0, 219.0], [100.0, 221.0], [100.0, 219.0]]), origin, heading)
    assert local == pytest.approx(np.array([[0.0, -1.0], [2.0, 0.0], [0.0, 0.0]]), abs=1e-12)
    assert to_city_frame(local, origin, heading) == pytest.approx(np.array([[101.0, 219.0], [100, 221], [100, 219]]))
    # the last frames barely move (0.05 m < 0.2 m): the heading comes from the last real displacement
    still = np.concatenate([hist, hist[-1:] + [[0.05, 0.0]]])
    assert agent_frame(still)[1] == pytest.approx(math.atan2(1.0, 0.05 - 0.0), abs=0.06)
    assert agent_frame(np.zeros((20, 2)))[1] == 0.0  # never moved: no rotation


def test_read_and_vectorize_hand_written_scene(tmp_path, lanes):
    seq, has_future = read_sequence(write_csv(tmp_path / "7.csv", scene_lines()))
    assert has_future and seq.seq_id == "7" and seq.city == "PIT" and seq.agent.track_id == "agent-1"
    assert {t.track_id for t in seq.others} == {"av-0", "other-7", "other-8"}
    sample = vectorize(seq, lanes, SceneOptions())
    av, am = sample["agent_vectors"], sample["agent_vector_mask"]
    # AGENT first, then AV, then OTHERS; other-8 (one frame) gives no vector and is dropped
    assert av.shape == (3, 19, 8) and am.sum(1).tolist() == [19, 19, 6]
    # after normalisation the last observed position is the origin and the heading is +x
    assert av[0, -1, 2:4] == pytest.approx([0.0, 0.0], abs=1e-5)
    assert av[0, -1, 0:2] == pytest.approx([-1.0, 0.0], abs=1e-5)
    assert av[0, 0, 0:2] == pytest.approx([-19.0, 0.0], abs=1e-5)
    assert av[0, :, 4].tolist() == pytest.approx([-1.8 + 0.1 * k for k in range(19)])  # end time, 0 = now
    assert (
        av[0, 0, 5:8].tolist() == [1, 0, 0]
        and av[1, 0, 5:8].tolist() == [0, 1, 0]
        and av[2, 3, 5:8].tolist() == [0, 0, 1]
    )
    # the AV drives 10 m east of the agent's path (x=110 vs 100): on its right, y = -10 in the agent frame
    assert av[1, -1, 2:4] == pytest.approx([0.0, -10.0], abs=1e-5)
    # other-7: vectors only between consecutive frames 3-4, 4-5, 5-6, 9-10, 10-11, 11-12
    assert np.flatnonzero(am[2]).tolist() == [3, 4, 5, 9, 10, 11]
    assert av[2, 3, 0:4] == pytest.approx([-26.0, 10.0, -25.0, 10.0], abs=1e-5)  # (90,193)->(90,194)
    # future: 1..30 m straight ahead
    assert sample["target"] == pytest.approx(np.stack([np.arange(1, 31), np.zeros(30)], 1), abs=1e-5)
    assert sample["gt_city"][-1] == pytest.approx([100.0, 249.0])
    # lanes within 50 m: lane 1 cut into 9-vector pieces (20 points -> 3 pieces), nearest first; the turn lane
    lv, lm = sample["lane_vectors"], sample["lane_vector_mask"]
    assert lv.shape == (4, 9, 8) and sorted(lm.sum(1).tolist()) == [1, 2, 9, 9]
    assert lv[0, :, 1] == pytest.approx(np.zeros(9), abs=1e-5)  # the nearest piece runs along the x axis
    turn = lv[lm.sum(1) == 1][0, 0]
    assert turn[4:8].tolist() == [1, 0, 1, 1]  # is_intersection, left, right, traffic control
    assert turn[0:4] == pytest.approx([41.0, 0.0, 51.0, -10.0], abs=1e-5)


def test_test_split_without_future_and_collate(tmp_path, lanes):
    folder = tmp_path / "test"
    folder.mkdir()
    for name in ("2", "10"):
        write_csv(folder / f"{name}.csv", sorted(rows("a", "AGENT", agent_line(20)) + rows("b", "AV", [(0, 0)] * 20)))
    ds = load_split(folder, lanes, name="test")
    assert not ds.has_future and [s["seq_id"] for s in ds.samples] == ["2", "10"]  # natural order
    batch = collate([ds[0], ds[1]])
    assert "target" not in batch and batch["index"].tolist() == [0, 1]
    assert batch["agent_vectors"].dtype == torch.float32 and batch["agent_vector_mask"].dtype == torch.bool
    full = tmp_path / "full"
    full.mkdir()
    write_csv(full / "1.csv", scene_lines())
    write_csv(full / "2.csv", sorted(rows("a", "AGENT", agent_line(50, start=(100.0, 150.0)))))
    ds = load_split(full, lanes, name="train")
    batch = collate([ds[0], ds[1]])
    assert batch["target"].shape == (2, 30, 2) and batch["target"].dtype == torch.float32
    assert batch["agent_vector_mask"].shape == (2, 3, 19) and not batch["agent_vector_mask"][1, 1:].any()


def test_bad_csvs_are_refused(tmp_path, lanes):
    good = scene_lines()

    def refused(lines, *needles, header=HEADER):
        path = tmp_path / "bad.csv"
        path.write_text("\n".join([header, *lines]) + "\n")
        with pytest.raises(DataError) as info:
            read_sequence(path)
        for needle in (str(path), *needles):
            assert needle in str(info.value), str(info.value)

    no_y = [",".join(p for i, p in enumerate(line.split(",")) if i != 4) for line in good]
    refused(no_y, "missing column(s) ['Y']", header="TIMESTAMP,TRACK_ID,OBJECT_TYPE,X,CITY_NAME")
    gap = [line for line in good if not (line.split(",")[1] == "agent-1" and line.startswith(f"{T0 + 3.0:.6f}"))]
    refused(gap, "AGENT track 'agent-1' has a gap of 0.200 s after TIMESTAMP 315969631.900", "step 29")
    nan = [
        line.replace(",agent-1,AGENT,100.0,", ",agent-1,AGENT,nan,", 1)
        if line.startswith(f"{T0 + 0.4:.6f},agent-1")
        else line
        for line in good
    ]
    refused(nan, "X is NaN", "TRACK_ID 'agent-1'")
    refused(good + [good[0].replace("PIT", "MIA")], "one CITY_NAME per sequence")
    refused(good + [good[0]], "duplicated frame")
    refused([line.replace("OTHERS", "CAR") for line in good], "OBJECT_TYPE must be one of")
    refused([line.replace("AV", "AGENT") for line in good], "exactly one AGENT track")
    short = [line for line in good if not (line.split(",")[1] == "agent-1" and float(line.split(",")[0]) > T0 + 3.95)]
    refused(short, "has 40 frames; expected 50")
    off_clock = good + [f"{T0 + 0.45:.6f},other-9,OTHERS,1.0,1.0,PIT"]
    refused(off_clock, "not at one of the AGENT's frame times")
    refused(["x"], "missing column(s)", header="just,one,line")


def test_bad_lane_files_and_unknown_city(tmp_path, lanes):
    def refused(content, *needles):
        path = tmp_path / "lanes_bad.json"
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(DataError) as info:
            read_lane_file(path)
        for needle in (str(path), *needles):
            assert needle in str(info.value), str(info.value)

    refused("{not json", "malformed JSON")
    refused({"lanes": []}, "'cities'")
    refused({"cities": {"PIT": [{"id": 1}]}}, "cities.PIT[0]", "'centerline'")
    refused({"cities": {"PIT": [{"id": 1, "centerline": [[0, 0]]}]}}, ">= 2 [x, y] points")
    refused({"cities": {"PIT": [{"id": 1, "centerline": [[0, 0], [float("nan"), 1]]}]}}, "NaN")
    refused({"cities": {"PIT": [{"id": 1, "centerline": [[0, 0], [1, 1]]}] * 2}}, "appears twice")
    refused(
        {"cities": {"PIT": [{"id": 1, "centerline": [[0, 0], [1, 1]], "turn_direction": "UTURN"}]}}, "turn_direction"
    )
    seq, _ = read_sequence(write_csv(tmp_path / "mia.csv", [line.replace("PIT", "MIA") for line in scene_lines()]))
    with pytest.raises(DataError, match="city 'MIA' is not in the lane file"):
        vectorize(seq, lanes)


def test_split_errors(tmp_path, lanes):
    with pytest.raises(DataError, match="does not exist"):
        load_split(tmp_path / "nope", lanes, name="train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .csv sequence files"):
        load_split(tmp_path / "empty", lanes, name="train")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_csv(mixed / "1.csv", scene_lines())
    write_csv(mixed / "2.csv", rows("a", "AGENT", agent_line(20)))
    with pytest.raises(DataError, match="mixes sequences with and without the future"):
        load_split(mixed, lanes, name="val")
