"""The embedded MNIST-motion generator: deterministic from its seed, labels that are motions (checked by
measuring the frames with independent tools: intensity centroids, spreads, masses and PIL's rotation),
time reversal giving the paired class, single frames that look alike within a pair, and the SSv2 files
it writes read back by the loader."""

import json

import numpy as np
import pytest
from PIL import Image

from mmllm.data.mnist import load_mnist
from mmllm.errors import DataError
from vision.action import clips
from vision.action.data import count_and_decode, read_ssv2, read_ssv2_labels

CLEAN = clips.ClipSettings(distractor_prob=0.0)


@pytest.fixture(scope="module")
def digits():
    images, labels = load_mnist("test")
    return images[:500], labels[:500]


def moments(frame: np.ndarray) -> tuple[float, float, float, float]:
    """(centroid x, centroid y, spread, mass) of a frame's intensity, in pixel units (pixel i centred at i+0.5)."""
    gray = frame.astype(np.float64).sum(-1)
    mass = gray.sum()
    ys, xs = np.mgrid[: gray.shape[0], : gray.shape[1]] + 0.5
    cx, cy = (xs * gray).sum() / mass, (ys * gray).sum() / mass
    spread = np.sqrt((((xs - cx) ** 2 + (ys - cy) ** 2) * gray).sum() / mass)
    return cx, cy, spread, mass


def rotation_sense(video: np.ndarray) -> int:
    """+1 if each frame is the previous one turned counterclockwise (PIL's positive angle), -1 if clockwise:
    the sign of the best-matching small turn, voted over the clip."""
    votes = 0
    for before, after in zip(video[:-1], video[1:]):
        (x0, y0, _, _), (x1, y1, _, _) = moments(before), moments(after)
        source = Image.fromarray(before)
        errors = {}
        for angle in (-25, -20, -15, -10, -5, 5, 10, 15, 20, 25):
            turned = source.rotate(angle, resample=Image.BILINEAR, center=(x0, y0), translate=(x1 - x0, y1 - y0))
            errors[angle] = np.abs(np.asarray(turned, dtype=np.float64) - after).sum()
        votes += 1 if min(errors, key=errors.get) > 0 else -1
    return 1 if votes > 0 else -1


def measured_class(video: np.ndarray) -> int:
    """The motion class of a clip [T, H, W, 3] from measurements alone."""
    first, last = video[0], video[-1]
    s0, s1 = moments(video[1])[2], moments(video[-2])[2]  # frames 1 and T-2: never blank, even in a fade
    if s1 / s0 > 1.25 or s0 / s1 > 1.25:
        return 6 if s1 > s0 else 7  # approaching (grows) / moving away (shrinks)
    m0, m1 = first.astype(float).sum(), last.astype(float).sum()
    if abs(m1 - m0) > 0.5 * max(m0, m1):
        return 8 if m1 > m0 else 9  # appearing / disappearing
    x0, y0, _, _ = moments(first)
    x1, y1, _, _ = moments(last)
    if max(abs(x1 - x0), abs(y1 - y0)) > 6:
        if abs(x1 - x0) > abs(y1 - y0):
            return 0 if x1 > x0 else 1  # left to right / right to left
        return 2 if y1 < y0 else 3  # up (y points down) / down
    return 5 if rotation_sense(video[::2]) > 0 else 4  # frames 2 apart: 8-20 degrees  # counterclockwise / clockwise


def test_labels_are_the_measured_motions_and_reversal_gives_the_pair(digits):
    specs = clips.make_split(*digits, count=40, seed=3, settings=CLEAN)
    videos = clips.render_batch(specs, CLEAN.size)
    assert sorted(s.label for s in specs) == sorted(list(range(10)) * 4)
    for spec, video in zip(specs, videos):
        assert video.shape == (16, 64, 64, 3) and video.dtype == np.uint8
        assert measured_class(video) == spec.label, clips.TEMPLATES[spec.label]
        backwards = video[::-1]
        assert measured_class(backwards) == clips.REVERSED[spec.label]
        np.testing.assert_array_equal(clips.render(spec.reversed(), CLEAN.size), backwards)


def test_one_frame_looks_alike_within_each_pair(digits):
    """Pooled over all frames, a single frame's position, size and brightness have the same distribution for
    both classes of a time-reversed pair (tested: equal means, within 4 standard errors over clips), so one
    frame cannot tell them apart; a pair that differed by half its travel (~10 px) would fail."""
    specs = clips.make_split(*digits, count=400, seed=4, settings=CLEAN)
    videos = clips.render_batch(specs, CLEAN.size)
    per_clip = {c: [] for c in range(10)}  # each clip's mean over its non-blank frames
    for spec, video in zip(specs, videos):
        per_clip[spec.label].append(np.mean([moments(f) for f in video if f.any()], axis=0))
    for a in (0, 2, 4, 6, 8):
        sa, sb = np.array(per_clip[a]), np.array(per_clip[a + 1])
        error = np.sqrt(sa.var(axis=0, ddof=1) / len(sa) + sb.var(axis=0, ddof=1) / len(sb))
        assert (np.abs(sa.mean(axis=0) - sb.mean(axis=0)) < 4 * error).all(), (
            clips.TEMPLATES[a],
            sa.mean(0),
            sb.mean(0),
            error,
        )


def test_deterministic_from_the_seed(digits):
    one = clips.render_batch(clips.make_split(*digits, count=12, seed=7, settings=clips.ClipSettings()), 64)
    two = clips.render_batch(clips.make_split(*digits, count=12, seed=7, settings=clips.ClipSettings()), 64)
    other = clips.render_batch(clips.make_split(*digits, count=12, seed=8, settings=clips.ClipSettings()), 64)
    np.testing.assert_array_equal(one, two)
    assert not np.array_equal(one, other)


def test_generate_writes_ssv2_files_the_loader_reads(tmp_path):
    settings = clips.ClipSettings(train=10, val=4, test=4, seed=1)
    root = clips.generate(tmp_path / "set", settings)
    marker = json.loads((root / "paths.json").read_text())
    assert marker["settings"]["train"] == 10 and marker["settings"]["version"] == clips.GENERATOR_VERSION
    classes = read_ssv2_labels(root / "labels.json")
    assert classes[0] == "Pushing something from left to right" and len(classes) == 10
    records = read_ssv2(root / "train.json", classes, root / "videos", "mp4")
    assert (
        len(records) == 10
        and len({r.video_id for r in read_ssv2(root / "test.json", classes, root / "videos", "mp4")}) == 4
    )
    raw = json.loads((root / "train.json").read_text())[0]
    assert set(raw) == {"id", "label", "template", "placeholders"} and "[" in raw["template"]
    assert raw["placeholders"][0] in raw["label"]
    # the video holds the rendered clip (H.264 is lossy: compare within a few grey levels)
    images, labels = load_mnist("train")
    spec = clips.make_split(images, labels, 10, settings.seed * 1000, settings)[0]
    frames = count_and_decode(records[0].path, lambda n: np.arange(n))
    assert frames.shape == (16, 64, 64, 3)
    assert np.abs(frames.astype(float) - clips.render(spec, 64)).mean() < 3.0
    assert records[0].label == spec.label
    # a second call keeps the finished set; other settings or a foreign folder are refused
    stamp = (root / "train.json").stat().st_mtime_ns
    clips.generate(root, settings)
    assert (root / "train.json").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match="delete .* to regenerate"):
        clips.generate(root, clips.ClipSettings(train=11, val=4, test=4, seed=1))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="is not a finished embedded action set"):
        clips.generate(foreign, settings)
    assert (foreign / "notes.txt").read_text() == "keep me"
