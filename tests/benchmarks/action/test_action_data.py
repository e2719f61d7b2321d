"""Action-recognition data: SSv2 / list readers on hand-written files, VideoMAE's sampling indices
worked out by hand, decoding of small videos written with PyAV, and the bad inputs."""

import json

import av
import numpy as np
import pytest
import torch

from mmllm.errors import DataError
from vision.action.data import (
    ActionDataOptions,
    ClipSampler,
    ClipTransform,
    build_datasets,
    count_and_decode,
    read_ssv2,
    read_ssv2_labels,
    read_video_list,
)

STEP = 20  # frame t is filled with grey level STEP * t, so a decoded frame tells its index


def write_video(path, frames: int, height: int = 32, width: int = 64) -> None:
    """An H.264 video whose frame t is uniformly grey at level STEP * t (lossless). (decord 0.6 fails on
    some sizes, e.g. 48 x 32, with "The size must exactly match": the loader then says to try PyAV.)"""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"qp": "0", "threads": "1"}
        for t in range(frames):
            image = np.full((height, width, 3), STEP * t, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def frame_ids(frames: np.ndarray) -> list[int]:
    """Indices of decoded frames [T, H, W, 3] (from their grey level)."""
    return [int(round(float(f.mean()) / STEP)) for f in frames]


class FixedRng:
    """Stands in for np.random.Generator.integers with values chosen by the test."""

    def __init__(self, values):
        self.values = list(values)

    def integers(self, low, high, size=None):
        out = np.array(self.values[: size or 1])
        assert ((out >= low) & (out < high)).all(), (out, low, high)
        return out if size else int(out[0])


# ---------------------------------------------------------------------------------------------- sampling
def test_segment_sampling_train_one_frame_per_segment():
    # n=20, T=4: segments [0,5) [5,10) [10,15) [15,20); offsets 1, 3, 0, 4 inside them
    sampler = ClipSampler("segment", 4)
    assert sampler.train_indices(20, FixedRng([1, 3, 0, 4])).tolist() == [1, 8, 10, 19]
    # n=10, T=4: segments of 10 // 4 = 2 frames (TSN drops the remainder)
    assert sampler.train_indices(10, FixedRng([1, 0, 1, 1])).tolist() == [1, 2, 5, 7]
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = sampler.train_indices(23, rng)
        assert all(5 * i <= v < 5 * (i + 1) for i, v in enumerate(idx))


def test_segment_sampling_test_views_as_videomae():
    sampler = ClipSampler("segment", 4)
    # n=20: tick 5; view 0 = segment starts, view 1 of 2 = segment middles (VideoMAE's int(tick/2 + tick*x))
    assert sampler.test_indices(20, 0, 2).tolist() == [0, 5, 10, 15]
    assert sampler.test_indices(20, 1, 2).tolist() == [2, 7, 12, 17]
    # n=10: tick 2.5 -> floor(0, 2.5, 5, 7.5) and floor(1.25, 3.75, 6.25, 8.75)
    assert sampler.test_indices(10, 0, 2).tolist() == [0, 2, 5, 7]
    assert sampler.test_indices(10, 1, 2).tolist() == [1, 3, 6, 8]
    # n=12, 3 views: tick 3, offsets 0, 1, 2
    assert [sampler.test_indices(12, c, 3).tolist() for c in range(3)] == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]


def test_dense_sampling_train_and_test():
    sampler = ClipSampler("dense", 4, sampling_rate=3)
    assert sampler.needed == 10  # frames 0, 3, 6, 9
    assert sampler.train_indices(30, FixedRng([7])).tolist() == [7, 10, 13, 16]
    # 3 test clips over 30 frames: starts 0, 10, 20 (first to last possible start, evenly)
    assert [sampler.test_indices(30, c, 3).tolist() for c in range(3)] == [
        [0, 3, 6, 9],
        [10, 13, 16, 19],
        [20, 23, 26, 29],
    ]
    assert sampler.test_indices(30, 0, 1).tolist() == [10, 13, 16, 19]  # one clip: the centre window
    assert sampler.test_indices(10, 0, 1).tolist() == [0, 3, 6, 9]


def test_video_shorter_than_clip_is_refused():
    with pytest.raises(ValueError, match="9 frames < 10"):
        ClipSampler("dense", 4, sampling_rate=3).train_indices(9, np.random.default_rng(0))
    with pytest.raises(ValueError, match="3 frames < 4"):
        ClipSampler("segment", 4).test_indices(3, 0, 1)


# ---------------------------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_decode_picks_the_requested_frames(tmp_path, decoder):
    path = tmp_path / "v.mp4"
    write_video(path, 12)
    seen = []
    frames = count_and_decode(path, lambda n: seen.append(n) or [0, 3, 7, 11], decoder)
    assert seen == [12]
    assert frames.shape == (4, 32, 64, 3) and frames.dtype == np.uint8
    assert frame_ids(frames) == [0, 3, 7, 11]


def test_decord_under_the_torch_bridge_lavis_sets(tmp_path):
    """LAVIS's video processors switch decord's process-wide bridge to torch on import; decoding must not care."""
    import decord

    path = tmp_path / "v.mp4"
    write_video(path, 12)
    decord.bridge.set_bridge("torch")
    try:
        frames = count_and_decode(path, lambda n: [0, 3, 7, 11], "decord")
    finally:
        decord.bridge.set_bridge("native")
    assert isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frame_ids(frames) == [0, 3, 7, 11]


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_bad_videos_name_the_file(tmp_path, decoder):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(DataError, match="garbage.mp4 does not decode with"):
        count_and_decode(garbage, lambda n: [0], decoder)
    short = tmp_path / "short.mp4"
    write_video(short, 5)
    sampler = ClipSampler("segment", 8)
    with pytest.raises(DataError, match=r"short.mp4 is shorter than the clip: 5 frames < 8 frames needed"):
        count_and_decode(short, lambda n: sampler.test_indices(n, 0, 1), decoder)
    with pytest.raises(DataError, match="missing.mp4 does not exist"):
        count_and_decode(tmp_path / "missing.mp4", lambda n: [0], decoder)


# ---------------------------------------------------------------------------------------------- annotations
def write_ssv2(folder, records, labels=None):
    labels = labels or {
        "Pushing something from left to right": "0",
        "Pushing something from right to left": "1",
        "Something appearing": "2",
    }
    (folder / "labels.json").write_text(json.dumps(labels))
    (folder / "train.json").write_text(json.dumps(records))
    return folder / "labels.json", folder / "train.json"


def test_ssv2_reader(tmp_path):
    labels, train = write_ssv2(
        tmp_path,
        [
            {
                "id": "74225",
                "label": "pushing a cup from right to left",
                "template": "Pushing [something] from right to left",
                "placeholders": ["a cup"],
            },
            {"id": 3, "label": "a pen appearing", "template": "[Something] appearing", "placeholders": ["a pen"]},
        ],
    )
    classes = read_ssv2_labels(labels)
    assert classes == [
        "Pushing something from left to right",
        "Pushing something from right to left",
        "Something appearing",
    ]
    records = read_ssv2(train, classes, tmp_path / "videos", "webm")
    assert [(r.video_id, r.label) for r in records] == [("74225", 1), ("3", 2)]
    assert records[0].path == tmp_path / "videos" / "74225.webm"


def test_ssv2_bad_inputs(tmp_path):
    labels, _ = write_ssv2(tmp_path, [])
    classes = read_ssv2_labels(labels)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "1", "template": "Dropping [something]"}]))
    with pytest.raises(DataError, match="record 1 has template 'Dropping \\[something\\]', not in the class list"):
        read_ssv2(bad, classes, tmp_path, "webm")
    bad.write_text(json.dumps([{"id": "7"}]))  # the SSv2 test list: ids only
    with pytest.raises(DataError, match="record 7 has no 'template'"):
        read_ssv2(bad, classes, tmp_path, "webm")
    bad.write_text(json.dumps([{"id": "1", "template": "[Something] appearing"}] * 2))
    with pytest.raises(DataError, match="video id 1 appears twice"):
        read_ssv2(bad, classes, tmp_path, "webm")
    gap = tmp_path / "gap.json"
    gap.write_text(json.dumps({"a": "0", "b": "2"}))
    with pytest.raises(DataError, match="indices must be 0..1; missing \\[1\\]"):
        read_ssv2_labels(gap)


def test_list_reader_and_bad_lines(tmp_path):
    listing = tmp_path / "train.csv"
    listing.write_text("abseiling/a b.mp4 0\n\nzumba/x.mp4 2\n")
    records = read_video_list(listing, num_classes=3, video_root=tmp_path / "videos")
    assert [(r.video_id, r.label, r.path) for r in records] == [
        ("abseiling/a b.mp4", 0, tmp_path / "videos/abseiling/a b.mp4"),
        ("zumba/x.mp4", 2, tmp_path / "videos/zumba/x.mp4"),
    ]
    listing.write_text("a.mp4 0\nb.mp4\n")
    with pytest.raises(DataError, match=r"train.csv:2: expected `path label`, got 'b.mp4' \(missing label\)"):
        read_video_list(listing, 3)
    listing.write_text("a.mp4 0\nb.mp4 3\n")
    with pytest.raises(DataError, match="train.csv:2: label 3 is outside the class list 0..2"):
        read_video_list(listing, 3)
    listing.write_text("a.mp4 walking\n")
    with pytest.raises(DataError, match="train.csv:1: label 'walking' is not an integer"):
        read_video_list(listing, 3)


# ---------------------------------------------------------------------------------------------- views
def test_three_crops_along_the_long_side():
    # 32 x 48 frames whose pixel value is 5 * column: crops of 32 start at columns 0, 8, 16
    frames = np.broadcast_to((np.arange(48, dtype=np.uint8) * 5)[None, None, :, None], (2, 32, 48, 3)).copy()
    transform = ClipTransform(32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    crops = transform.crops(frames, 3)
    assert [c.shape for c in crops] == [torch.Size([3, 2, 32, 32])] * 3
    assert [round(float(c[0, 0, 0, 0]) * 255) for c in crops] == [0, 40, 80]
    assert round(float(transform.crops(frames, 1)[0][0, 0, 0, 0]) * 255) == 40  # one crop: the centre


def test_datasets_from_ssv2_and_list_files(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("1", "2"):
        write_video(videos / f"{name}.mp4", 12)
    write_ssv2(
        tmp_path,
        [
            {"id": "1", "template": "Something appearing"},
            {"id": "2", "template": "Pushing [something] from right to left"},
        ],
    )
    opts = ActionDataOptions(
        format="ssv2",
        labels=str(tmp_path / "labels.json"),
        video_ext="mp4",
        splits={
            "train": {"annotation": str(tmp_path / "train.json"), "video_root": str(videos)},
            "test": {"annotation": str(tmp_path / "train.json"), "video_root": str(videos)},
        },
        num_frames=4,
        input_size=32,
        mean=(0, 0, 0),
        std=(1, 1, 1),
        train_crop_scale=(1.0, 1.0),
        train_crop_ratio=(2.0, 2.0),
        test_num_clips=3,
        test_num_crops=2,
    )
    data = build_datasets(opts, num_classes=3)
    item = data["train"][1]
    assert item["video"].shape == (3, 4, 32, 32) and item["label"] == 1
    ids = [round(float(item["video"][0, t].mean()) * 255 / STEP) for t in range(4)]
    assert all(3 * i <= v < 3 * (i + 1) for i, v in enumerate(ids))  # one frame per segment of 3
    views = data["test"][0]
    assert views["video"].shape == (6, 3, 4, 32, 32) and views["label"] == 2
    levels = views["video"][:, 0].mean(dim=(2, 3)) * 255 / STEP  # [view, T]
    expected = [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]  # tick 3: offsets 0, 1, 2 (clip-major, 2 crops each)
    assert levels.round().long().tolist() == [e for e in expected for _ in range(2)]
    with pytest.raises(DataError, match="lists 3 classes but model.num_classes is 5"):
        build_datasets(opts, num_classes=5)

    listing = tmp_path / "list.txt"
    listing.write_text("1.mp4 0\n2.mp4 1\n")
    dense = ActionDataOptions(
        format="list",
        splits={"train": {"annotation": str(listing), "video_root": str(videos)}},
        num_frames=3,
        sampling_rate=4,
        input_size=32,
        mean=(0, 0, 0),
        std=(1, 1, 1),
    )
    assert dense.sampling_mode == "dense"
    clip = build_datasets(dense, num_classes=2)["train"][0]["video"]
    ids = [round(float(clip[0, t].mean()) * 255 / STEP) for t in range(3)]
    assert ids[1] - ids[0] == 4 and ids[2] - ids[1] == 4
