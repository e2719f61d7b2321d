"""Action-recognition data: the SSv2 and Kinetics annotation formats, clip sampling as VideoMAE, views.

Formats (what a user brings):

* **Something-Something-v2**: ``labels.json`` maps each template without brackets to its index as a
  string (``{"Pushing something from left to right": "93", ...}``); a split file is a JSON list of
  ``{"id", "label", "template", "placeholders"}`` whose ``template`` has brackets
  (``"Pushing [something] from left to right"``); videos are ``<video_root>/<id>.<video_ext>`` (webm).
* **Kinetics-style list** (VideoMAE's ``train.csv``/``val.csv``/``test.csv``): one ``path label`` per
  line, ``label`` an integer class index, ``path`` relative to ``video_root``.

Sampling (Tong et al., VideoMAE, NeurIPS 2022, following TSN for SSv2): *segment-based* splits the
video into ``num_frames`` equal segments and takes one random frame of each for training and, for test
view ``c`` of ``C``, the frame at the fraction ``c / C`` of each segment (``C = 2``: segment starts and
segment middles, as VideoMAE's SSv2 test). *Dense* (Kinetics) takes ``num_frames`` frames
``sampling_rate`` apart from a random start for training; test windows are spread evenly over the video.
Test views are ``test_num_clips`` temporal clips x ``test_num_crops`` spatial crops (frames resized so
the short side is ``input_size``, crops of ``input_size`` along the long side), scored by averaging the
softmax over the views.

Frames are decoded with ``decord`` (or PyAV, ``decoder: pyav``); a video that does not decode or is
shorter than the clip needs is a :class:`DataError` naming the file and both frame counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from pydantic import Field, PositiveInt, model_validator
from torch.utils.data import Dataset
from torchvision.transforms import RandomResizedCrop

from mmllm.engine.task import DataSection
from mmllm.errors import DataError
from mmllm.jsonio import read_json
from mmllm.schema import Section

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test")


# ---------------------------------------------------------------------------------------------- options
class SplitFiles(Section):
    annotation: str = Field(description="SSv2 JSON list or a `path label` list file")
    video_root: str | None = Field(None, description="folder of the videos (default: the annotation's folder)")


class ActionDataOptions(DataSection):
    """The ``datasets.mmllm_action`` section."""

    format: Literal["ssv2", "list"] = Field("ssv2", description="ssv2: JSON + labels.json; list: `path label` lines")
    labels: str | None = Field(None, description="SSv2 labels JSON (template -> index); required for format ssv2")
    video_ext: str = Field("webm", description="SSv2 videos are <video_root>/<id>.<video_ext>")
    splits: dict[Literal["train", "val", "test"], SplitFiles]
    sampling: Literal["segment", "dense"] | None = Field(
        None, description="segment (TSN/VideoMAE SSv2) or dense (Kinetics); default: segment for ssv2, dense for list"
    )
    num_frames: PositiveInt = Field(16, description="frames per clip (= model.num_frames)")
    sampling_rate: PositiveInt = Field(4, description="dense sampling: frames between two sampled frames")
    input_size: PositiveInt = Field(224, description="crop side (= model.img_size)")
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    train_crop_scale: tuple[float, float] = Field((0.08, 1.0), description="random resized crop area range")
    train_crop_ratio: tuple[float, float] = Field((0.75, 4 / 3), description="random resized crop aspect range")
    flip: bool = Field(
        False,
        description="random horizontal flip in training (never for SSv2: it swaps "
        "left-to-right and right-to-left classes)",
    )
    test_num_clips: PositiveInt = Field(2, description="temporal views per test video (VideoMAE SSv2: 2, K400: 5)")
    test_num_crops: PositiveInt = Field(3, description="spatial views per test video (VideoMAE: 3)")
    val_num_clips: PositiveInt = 1
    val_num_crops: PositiveInt = 1
    decoder: Literal["decord", "pyav"] = "decord"

    @model_validator(mode="after")
    def _check(self) -> ActionDataOptions:
        if "train" not in self.splits:
            raise ValueError("splits needs a train split")
        if self.format == "ssv2" and not self.labels:
            raise ValueError("format ssv2 needs labels (the SSv2 labels JSON)")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        lo, hi = self.train_crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"train_crop_scale must satisfy 0 < min <= max <= 1, got {self.train_crop_scale}")
        return self

    @property
    def sampling_mode(self) -> str:
        return self.sampling or ("segment" if self.format == "ssv2" else "dense")


# ---------------------------------------------------------------------------------------------- annotations
@dataclass(frozen=True)
class VideoRecord:
    video_id: str
    path: Path
    label: int


def read_ssv2_labels(path: str | Path) -> list[str]:
    """Class names in index order from an SSv2 labels JSON (indices must be exactly 0..K-1)."""
    data = read_json(path, "SSv2 labels file")
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: an SSv2 labels file is a non-empty object {{template: index}}")
    names: dict[int, str] = {}
    for name, index in data.items():
        try:
            i = int(index)
        except (TypeError, ValueError):
            raise DataError(f"{path}: label {name!r} has index {index!r}, not an integer") from None
        if i in names:
            raise DataError(f"{path}: index {i} is used by both {names[i]!r} and {name!r}")
        names[i] = name
    if sorted(names) != list(range(len(names))):
        missing = sorted(set(range(len(names))) - set(names))
        raise DataError(f"{path}: indices must be 0..{len(names) - 1}; missing {missing[:5]}")
    return [names[i] for i in range(len(names))]


def read_ssv2(annotation: str | Path, classes: list[str], video_root: str | Path, video_ext: str) -> list[VideoRecord]:
    """Records of an SSv2 split file; each template (brackets removed) must be in ``classes``."""
    data = read_json(annotation, "SSv2 annotation file")
    if not isinstance(data, list) or not data:
        raise DataError(f"{annotation}: an SSv2 split file is a non-empty JSON list of records")
    index = {name: i for i, name in enumerate(classes)}
    records, seen = [], set()
    for n, item in enumerate(data):
        if not isinstance(item, dict) or "id" not in item:
            raise DataError(f"{annotation}: record {n} has no 'id'")
        video_id = str(item["id"])
        if video_id in seen:
            raise DataError(f"{annotation}: video id {video_id} appears twice")
        seen.add(video_id)
        if "template" not in item:
            raise DataError(
                f"{annotation}: record {video_id} has no 'template' (the SSv2 test list has no labels: "
                "it cannot be trained or scored)"
            )
        key = str(item["template"]).replace("[", "").replace("]", "")
        if key not in index:
            raise DataError(
                f"{annotation}: record {video_id} has template {item['template']!r}, "
                f"not in the class list ({len(classes)} labels)"
            )
        records.append(VideoRecord(video_id, Path(video_root) / f"{video_id}.{video_ext}", index[key]))
    return records


def read_video_list(path: str | Path, num_classes: int, video_root: str | Path | None = None) -> list[VideoRecord]:
    """Records of a Kinetics-style ``path label`` list (blank lines skipped; the path may hold spaces)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"video list {path} does not exist")
    root = Path(video_root) if video_root else path.parent
    records, seen = [], set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(None, 1)
        if len(parts) != 2:
            raise DataError(f"{path}:{number}: expected `path label`, got {line.strip()!r} (missing label)")
        name, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            raise DataError(
                f"{path}:{number}: label {label_text!r} is not an integer class index (missing label?)"
            ) from None
        if not 0 <= label < num_classes:
            raise DataError(f"{path}:{number}: label {label} is outside the class list 0..{num_classes - 1}")
        if name in seen:
            raise DataError(f"{path}:{number}: video {name} is listed twice")
        seen.add(name)
        records.append(VideoRecord(name, root / name, label))
    if not records:
        raise DataError(f"video list {path} is empty")
    return records


# ---------------------------------------------------------------------------------------------- sampling
@dataclass(frozen=True)
class ClipSampler:
    """Which frames of an ``n``-frame video form a clip (VideoMAE's segment-based and dense sampling)."""

    mode: Literal["segment", "dense"]
    num_frames: int
    sampling_rate: int = 1

    @property
    def needed(self) -> int:
        """Frames a video must have: one per segment, or the span of a dense clip."""
        return self.num_frames if self.mode == "segment" else (self.num_frames - 1) * self.sampling_rate + 1

    def _check(self, n: int) -> None:
        if n < self.needed:
            raise ValueError(f"{n} frames < {self.needed}")

    def train_indices(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Segment: one random frame in each of ``num_frames`` segments of ``n // num_frames`` frames (TSN).
        Dense: ``num_frames`` frames ``sampling_rate`` apart from a uniformly random start."""
        self._check(n)
        steps = np.arange(self.num_frames)
        if self.mode == "segment":
            length = n // self.num_frames
            return steps * length + rng.integers(0, length, size=self.num_frames)
        start = int(rng.integers(0, n - self.needed + 1))
        return start + steps * self.sampling_rate

    def test_indices(self, n: int, clip: int, num_clips: int) -> np.ndarray:
        """Segment: frame ``floor(i * n/T + (clip/num_clips) * n/T)`` of segment i. Dense: window starts
        spread evenly from the first to the last possible start (the centre when ``num_clips`` is 1)."""
        self._check(n)
        steps = np.arange(self.num_frames)
        if self.mode == "segment":
            tick = n / self.num_frames
            return np.floor(tick * steps + tick * clip / num_clips).astype(np.int64)
        slack = n - self.needed
        start = slack // 2 if num_clips == 1 else int(clip * slack / (num_clips - 1))
        return start + steps * self.sampling_rate


# ---------------------------------------------------------------------------------------------- decoding
def count_and_decode(path: Path, pick, decoder: str = "decord") -> np.ndarray:
    """``pick(n)`` gives the frame indices once the frame count ``n`` is known; returns uint8 [T, H, W, 3]."""
    if not path.is_file():
        raise DataError(f"video {path} does not exist")
    try:
        if decoder == "decord":
            import decord

            reader = decord.VideoReader(str(path), num_threads=1)
            indices = _pick(path, len(reader), pick)
            batch = reader.get_batch(list(indices))
            # decord's output type follows a process-wide bridge that other code may switch (LAVIS's video
            # processors set it to torch on import): accept its native NDArray and a torch tensor alike
            frames = batch.asnumpy() if hasattr(batch, "asnumpy") else batch.cpu().numpy()
        else:
            import av

            with av.open(str(path)) as container:
                all_frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
            indices = _pick(path, len(all_frames), pick)
            frames = np.stack([all_frames[i] for i in indices])
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoders raise their own types (DECORDError, av.error.*)
        hint = " (decoder: pyav may read it)" if decoder == "decord" else ""
        message = " ".join(str(exc).split())[-300:]
        raise DataError(f"video {path} does not decode with {decoder}{hint}: {type(exc).__name__}: {message}") from exc
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) != len(indices):
        raise DataError(f"video {path}: decoded {frames.shape}, expected {len(indices)} RGB frames")
    return frames


def _pick(path: Path, n: int, pick) -> np.ndarray:
    if n <= 0:
        raise DataError(f"video {path} has no frames")
    try:
        return np.asarray(pick(n), dtype=np.int64)
    except ValueError as exc:
        raise DataError(f"video {path} is shorter than the clip: {exc} frames needed") from None


# ---------------------------------------------------------------------------------------------- transforms
class ClipTransform:
    """uint8 frames [T, H, W, 3] -> normalised float [3, T, S, S]; random resized crop (+ flip) in training,
    short side resized to S and ``num_crops`` S x S crops along the long side for evaluation."""

    def __init__(self, size: int, mean, std, crop_scale=(0.08, 1.0), crop_ratio=(0.75, 4 / 3), flip: bool = False):
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1, 1)
        self.crop_scale, self.crop_ratio, self.flip = list(crop_scale), list(crop_ratio), flip

    def _normalise(self, frames: torch.Tensor) -> torch.Tensor:  # [T, 3, S, S] uint8
        return (frames.permute(1, 0, 2, 3).float() / 255.0 - self.mean) / self.std

    def train(self, frames: np.ndarray) -> torch.Tensor:
        video = torch.from_numpy(frames).permute(0, 3, 1, 2)
        top, left, h, w = RandomResizedCrop.get_params(video, self.crop_scale, self.crop_ratio)
        video = TF.resized_crop(video, top, left, h, w, [self.size, self.size], antialias=True)
        if self.flip and torch.rand(()) < 0.5:
            video = TF.horizontal_flip(video)
        return self._normalise(video)

    def crops(self, frames: np.ndarray, num_crops: int) -> list[torch.Tensor]:
        video = TF.resize(torch.from_numpy(frames).permute(0, 3, 1, 2), [self.size], antialias=True)
        h, w = video.shape[-2:]
        out = []
        for k in range(num_crops):
            slack = max(h, w) - self.size
            start = slack // 2 if num_crops == 1 else int(k * slack / (num_crops - 1))
            top, left = (start, (w - self.size) // 2) if h > w else ((h - self.size) // 2, start)
            out.append(self._normalise(video[..., top : top + self.size, left : left + self.size]))
        return out


# ---------------------------------------------------------------------------------------------- datasets
class VideoClips(Dataset):
    """Training clips: ``{"video": [3, T, S, S], "label", "index"}`` with random temporal and spatial sampling."""

    def __init__(self, records: list[VideoRecord], sampler: ClipSampler, transform: ClipTransform, decoder: str):
        self.records, self.sampler, self.transform, self.decoder = records, sampler, transform, decoder

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))  # follows torch's per-worker seeds
        frames = count_and_decode(rec.path, lambda n: self.sampler.train_indices(n, rng), self.decoder)
        return {"video": self.transform.train(frames), "label": rec.label, "index": i}


class VideoViews(Dataset):
    """Evaluation: every view of a video, ``{"video": [clips * crops, 3, T, S, S], "label", "index"}``
    (clip-major order), decoded once per video."""

    def __init__(
        self,
        records: list[VideoRecord],
        sampler: ClipSampler,
        transform: ClipTransform,
        decoder: str,
        num_clips: int,
        num_crops: int,
    ):
        self.records, self.sampler, self.transform, self.decoder = records, sampler, transform, decoder
        self.num_clips, self.num_crops = num_clips, num_crops

    @property
    def num_views(self) -> int:
        return self.num_clips * self.num_crops

    def __len__(self) -> int:
        return len(self.records)

    @property
    def ids(self) -> list[str]:
        return [r.video_id for r in self.records]

    def head(self, n: int) -> VideoViews:
        """The first ``n`` videos of the annotation file."""
        return VideoViews(self.records[:n], self.sampler, self.transform, self.decoder, self.num_clips, self.num_crops)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        per_clip: list[np.ndarray] = []

        def pick(n: int) -> np.ndarray:
            per_clip.extend(self.sampler.test_indices(n, c, self.num_clips) for c in range(self.num_clips))
            return np.unique(np.concatenate(per_clip))

        frames = count_and_decode(rec.path, pick, self.decoder)
        wanted = np.unique(np.concatenate(per_clip))
        views = []
        for idx in per_clip:
            views.extend(self.transform.crops(frames[np.searchsorted(wanted, idx)], self.num_crops))
        return {"video": torch.stack(views), "label": rec.label, "index": i}


def load_split(opts: ActionDataOptions, split: str, num_classes: int) -> list[VideoRecord]:
    """The records of one configured split (SSv2 or list format)."""
    files = opts.splits[split]
    root = files.video_root or str(Path(files.annotation).parent)
    if opts.format == "ssv2":
        classes = read_ssv2_labels(opts.labels)
        if len(classes) != num_classes:
            raise DataError(f"{opts.labels} lists {len(classes)} classes but model.num_classes is {num_classes}")
        return read_ssv2(files.annotation, classes, root, opts.video_ext)
    return read_video_list(files.annotation, num_classes, root)


def build_datasets(
    opts: ActionDataOptions,
    num_classes: int,
    sampler: ClipSampler | None = None,
    transform: ClipTransform | None = None,
) -> dict[str, Dataset]:
    """Train clips and val/test views of every configured split."""
    sampler = sampler or ClipSampler(opts.sampling_mode, opts.num_frames, opts.sampling_rate)
    transform = transform or ClipTransform(
        opts.input_size, opts.mean, opts.std, opts.train_crop_scale, opts.train_crop_ratio, opts.flip
    )
    out: dict[str, Dataset] = {}
    for split in opts.splits:
        records = load_split(opts, split, num_classes)
        if split == "train":
            out[split] = VideoClips(records, sampler, transform, opts.decoder)
        else:
            clips, crops = (
                (opts.val_num_clips, opts.val_num_crops)
                if split == "val"
                else (opts.test_num_clips, opts.test_num_crops)
            )
            out[split] = VideoViews(records, sampler, transform, opts.decoder, clips, crops)
    return out


def prepare_mnist_motion(root: str) -> None:
    """Embedded-data preparer ``prepare: mnist_motion``: the MNIST-motion set in SSv2 format under ``root``."""
    from .clips import generate

    generate(root)
