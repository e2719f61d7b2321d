"""Embedded action-recognition data: real MNIST digits whose class is the *motion*, not the digit.

Ten Something-Something-v2-like templates in five time-reversed pairs (pushing left->right /
right->left, moving up / down, turning clockwise / counterclockwise, approaching with the camera /
moving away, appearing / disappearing). Every per-clip nuisance (which digit, its size, tint,
brightness, a static distractor digit, one-pixel camera shake) is shared by all classes, and the
start of each motion is drawn so that one frame at an unknown time has the same distribution in
both classes of a pair: a single frame cannot tell them apart (the single-frame baseline checks it),
while reversing a clip in time turns it into its pair's class.

Clips are rendered with ``torch.nn.functional.grid_sample`` (one affine warp per frame: position,
rotation, scale), deterministically from a seed, and written as H.264 ``.mp4`` files (PyAV) with the
SSv2 annotation files (``train.json``, ``validation.json``, ``test.json``, ``labels.json``), so the
loader that reads the real SSv2 reads them too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mmllm.data.embedded import MARKER
from mmllm.errors import DataError
from mmllm.jsonio import read_json, write_json

GENERATOR_VERSION = 2
TEMPLATES = (
    "Pushing [something] from left to right",
    "Pushing [something] from right to left",
    "Moving [something] up",
    "Moving [something] down",
    "Turning [something] clockwise",
    "Turning [something] counterclockwise",
    "Approaching [something] with your camera",
    "Moving away from [something] with your camera",
    "[Something] appearing",
    "[Something] disappearing",
)
REVERSED = {0: 1, 1: 0, 2: 3, 3: 2, 4: 5, 5: 4, 6: 7, 7: 6, 8: 9, 9: 8}  # class of the clip played backwards
DIGIT = 28  # MNIST side


@dataclass(frozen=True)
class ClipSettings:
    """What the embedded set is made of (recorded in its ``paths.json``)."""

    seed: int = 0
    frames: int = 16  # video length; clips sample 8 of them (one per segment of 2, VideoMAE SSv2-style)
    size: int = 64
    train: int = 2000
    val: int = 200
    test: int = 500
    distractor_prob: float = 0.5
    fps: int = 12

    def to_dict(self) -> dict:
        return {**self.__dict__, "version": GENERATOR_VERSION}


@dataclass
class ClipSpec:
    """Per-frame parameters of one clip (arrays of length T) and its static parts."""

    label: int
    digit: np.ndarray  # uint8 [28, 28]
    cx: np.ndarray  # centre, continuous pixel units (pixel i spans [i, i+1])
    cy: np.ndarray
    angle: np.ndarray  # degrees, counterclockwise on screen
    scale: np.ndarray  # digit side = 28 * scale pixels
    brightness: np.ndarray
    tint: np.ndarray  # RGB in (0, 1]
    distractor: np.ndarray | None = None  # uint8 [28, 28]
    distractor_pose: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 0.0)  # cx, cy, scale, brightness
    digit_class: int = -1  # the MNIST label of ``digit`` (named in the annotation's placeholder)

    def reversed(self) -> ClipSpec:
        """The same clip played backwards (its class is ``REVERSED[label]``)."""
        flip = {k: getattr(self, k)[::-1].copy() for k in ("cx", "cy", "angle", "scale", "brightness")}
        return ClipSpec(
            label=REVERSED[self.label],
            digit=self.digit,
            tint=self.tint,
            distractor=self.distractor,
            distractor_pose=self.distractor_pose,
            digit_class=self.digit_class,
            **flip,
        )


def label_key(template: str) -> str:
    """SSv2's labels-file key of a template: the template without its brackets."""
    return template.replace("[", "").replace("]", "")


def sample_spec(
    rng: np.random.Generator, label: int, digit: np.ndarray, distractor: np.ndarray | None, frames: int, size: int
) -> ClipSpec:
    """Random parameters of one clip of class ``label`` (see the module docstring for the symmetry)."""
    tau = np.linspace(0.0, 1.0, frames)
    base_scale = rng.uniform(0.7, 1.0)
    margin = DIGIT * base_scale / 2
    cx = np.full(frames, rng.uniform(margin, size - margin))
    cy = np.full(frames, rng.uniform(margin, size - margin))
    angle = np.full(frames, rng.uniform(-15.0, 15.0))
    scale = np.full(frames, base_scale)
    brightness = np.full(frames, rng.uniform(0.6, 1.0))
    kind, forward = divmod(label, 2)
    sign = 1.0 if forward == 0 else -1.0
    if kind in (0, 1):  # translation along x (labels 0, 1) or y (labels 2, 3); +x is right, +y is down
        travel = rng.uniform(12.0, 30.0)
        direction = sign if kind == 0 else -sign  # "up" (label 2) decreases y
        lo, hi = margin, size - margin - travel
        start = rng.uniform(lo, hi) if direction > 0 else rng.uniform(lo + travel, hi + travel)
        path = start + direction * travel * tau
        if kind == 0:
            cx = path
        else:
            cy = path
    elif kind == 2:  # rotation: clockwise on screen = decreasing counterclockwise angle
        turn = rng.uniform(60.0, 150.0)
        offset = rng.uniform(-20.0, 20.0)
        angle = offset - sign * turn * (tau - 0.5)
    elif kind == 3:  # approach (grow) / move away (shrink), symmetric in log-scale
        factor = rng.uniform(1.5, 2.2)
        scale = base_scale * 0.8 * factor ** (sign * (tau - 0.5))
        big = DIGIT * scale.max() / 2
        cx = np.full(frames, rng.uniform(min(big, size / 2), max(size - big, size / 2)))
        cy = np.full(frames, rng.uniform(min(big, size / 2), max(size - big, size / 2)))
    else:  # appear (fade in) / disappear (fade out)
        brightness = brightness[0] * (tau if sign > 0 else 1.0 - tau)
    shake = rng.uniform(-1.0, 1.0, size=(2, frames))
    tint = rng.uniform(0.5, 1.0, size=3)
    tint = tint / tint.max()
    pose = (rng.uniform(8, size - 8), rng.uniform(8, size - 8), rng.uniform(0.5, 0.7), rng.uniform(0.3, 0.6))
    return ClipSpec(
        label=label,
        digit=digit,
        cx=cx + shake[0],
        cy=cy + shake[1],
        angle=angle,
        scale=scale,
        brightness=brightness,
        tint=tint,
        distractor=distractor,
        distractor_pose=pose,
    )


def _warp(digits: torch.Tensor, cx, cy, angle_deg, scale, size: int) -> torch.Tensor:
    """[M, 28, 28] in [0, 1] placed on [M, size, size] canvases: centre (cx, cy), rotation, scale.

    An output point P (continuous pixel units) samples the digit at 14 + R(angle)^T (P - c) / scale,
    R rotating counterclockwise on screen (y points down)."""
    cx, cy, scale = (torch.as_tensor(np.asarray(v), dtype=torch.float64) for v in (cx, cy, scale))
    theta = torch.deg2rad(torch.as_tensor(np.asarray(angle_deg), dtype=torch.float64))
    cos, sin = torch.cos(theta), torch.sin(theta)
    # R = [[cos, sin], [-sin, cos]] (counterclockwise on screen); R^T = [[cos, -sin], [sin, cos]]
    k = size / (DIGIT * scale)  # output normalised unit -> input normalised unit, before rotation
    ox, oy = size / 2 - cx, size / 2 - cy  # offset of the canvas centre from the digit centre
    affine = torch.stack(
        [
            torch.stack([k * cos, -k * sin, 2 / (DIGIT * scale) * (cos * ox - sin * oy)], -1),
            torch.stack([k * sin, k * cos, 2 / (DIGIT * scale) * (sin * ox + cos * oy)], -1),
        ],
        1,
    ).float()
    grid = F.affine_grid(affine, [len(affine), 1, size, size], align_corners=False)
    return F.grid_sample(digits[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


def render(spec: ClipSpec, size: int) -> np.ndarray:
    """The clip as uint8 RGB frames [T, size, size, 3]."""
    return render_batch([spec], size)[0]


def render_batch(specs: list[ClipSpec], size: int) -> np.ndarray:
    """Clips of equal length as uint8 RGB [B, T, size, size, 3] (one warp call for all their frames)."""
    frames = len(specs[0].cx)
    if any(len(s.cx) != frames for s in specs):
        raise ValueError("render_batch needs clips of equal length")
    digits = torch.from_numpy(np.stack([s.digit for s in specs]).astype(np.float32) / 255.0)
    digits = digits.repeat_interleave(frames, dim=0)
    cat = {k: np.concatenate([getattr(s, k) for s in specs]) for k in ("cx", "cy", "angle", "scale", "brightness")}
    gray = _warp(digits, cat["cx"], cat["cy"], cat["angle"], cat["scale"], size)
    gray = gray.view(len(specs), frames, size, size)
    light = torch.as_tensor(cat["brightness"], dtype=torch.float32).view(len(specs), frames, 1, 1, 1)
    tint = torch.as_tensor(np.stack([s.tint for s in specs]), dtype=torch.float32).view(len(specs), 1, 1, 1, 3)
    video = gray[..., None] * light * tint
    with_distractor = [i for i, s in enumerate(specs) if s.distractor is not None]
    if with_distractor:
        still_digits = np.stack([specs[i].distractor for i in with_distractor]).astype(np.float32) / 255.0
        still_digits = torch.from_numpy(still_digits)
        pose = np.array([specs[i].distractor_pose for i in with_distractor], dtype=np.float64)
        still = _warp(still_digits, pose[:, 0], pose[:, 1], np.zeros(len(pose)), pose[:, 2], size)
        still = still * torch.as_tensor(pose[:, 3], dtype=torch.float32)[:, None, None]
        rows = torch.tensor(with_distractor)
        video[rows] = torch.maximum(video[rows], still[:, None, :, :, None])
    return (video.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def write_video(path: Path, frames: np.ndarray, fps: int = 12) -> None:
    """H.264 ``.mp4`` (yuv420p, single-threaded so the bytes are reproducible), written atomically."""
    import av

    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "17", "preset": "veryfast", "threads": "1"}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
            container.mux(stream.encode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def make_split(
    images: np.ndarray, digit_labels: np.ndarray, count: int, seed: int, settings: ClipSettings
) -> list[ClipSpec]:
    """``count`` clip specs, classes balanced and shuffled, digits drawn without replacement."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % len(TEMPLATES))
    picks = rng.choice(len(images), size=2 * count, replace=2 * count > len(images))
    specs = []
    for i, label in enumerate(labels):
        distractor = images[picks[count + i]] if rng.random() < settings.distractor_prob else None
        spec = sample_spec(rng, int(label), images[picks[i]], distractor, settings.frames, settings.size)
        spec.digit_class = int(digit_labels[picks[i]])
        specs.append(spec)
    return specs


def _record(video_id: str, spec: ClipSpec) -> dict:
    """An SSv2 annotation record: the template, its placeholder and the filled-in label."""
    template = TEMPLATES[spec.label]
    thing = f"digit {spec.digit_class}"
    label = template.replace("[something]", thing).replace("[Something]", thing)
    return {"id": video_id, "label": label[0].lower() + label[1:], "template": template, "placeholders": [thing]}


def generate(root: str | Path, settings: ClipSettings = ClipSettings()) -> Path:
    """Write the embedded set under ``root`` (idempotent: a finished set with the same settings is kept).

    Built in a sibling temporary folder and renamed into place, so ``root`` is either absent or complete.
    """
    from mmllm.data.mnist import load_mnist

    root = Path(root)
    wanted = settings.to_dict()
    if (root / MARKER).is_file():
        found = read_json(root / MARKER).get("settings")
        if found != wanted:
            raise DataError(
                f"{root} holds an embedded action set made with {found}, not {wanted}: "
                f"delete {root} to regenerate it, or choose another root"
            )
        return root
    if root.exists() and any(root.iterdir()):
        raise DataError(
            f"{root} exists and is not a finished embedded action set (no {MARKER}): "
            "remove it or choose another datasets.mmllm_action.root"
        )
    start = time.time()
    tmp = root.parent / f".{root.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "videos").mkdir(parents=True)
    try:
        write_json(tmp / "labels.json", {label_key(t): str(i) for i, t in enumerate(TEMPLATES)})
        next_id = 1
        for split, mnist_split, count, offset in (
            ("train", "train", settings.train, 0),
            ("validation", "val", settings.val, 1),
            ("test", "test", settings.test, 2),
        ):
            images, digit_labels = load_mnist(mnist_split)
            specs = make_split(images, digit_labels, count, settings.seed * 1000 + offset, settings)
            records = []
            for first in range(0, len(specs), 256):
                chunk = specs[first : first + 256]
                for spec, video in zip(chunk, render_batch(chunk, settings.size)):
                    video_id = str(next_id)
                    next_id += 1
                    write_video(tmp / "videos" / f"{video_id}.mp4", video, settings.fps)
                    records.append(_record(video_id, spec))
            write_json(tmp / f"{split}.json", records)
        write_json(
            tmp / MARKER,
            {
                "settings": wanted,
                "seconds": round(time.time() - start, 1),
                "videos": "videos/{id}.mp4",
                "labels": "labels.json",
            },
        )
        if root.exists():
            root.rmdir()  # empty (checked above)
        os.replace(tmp, root)
    except OSError:
        if (root / MARKER).is_file():  # another process finished the same set first
            return root
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the embedded MNIST-motion action set (SSv2 format).")
    parser.add_argument("--root", required=True)
    for name, value in ClipSettings().__dict__.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = vars(parser.parse_args(argv))
    root = generate(args.pop("root"), ClipSettings(**args))
    print(json.dumps(read_json(root / MARKER), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
