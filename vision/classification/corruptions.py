"""Deterministic image corruptions: the robustness test set, an analogue of ImageNet-C.

Hendrycks & Dietterich (ICLR 2019) corrupt the ImageNet validation images with 15 corruptions
at 5 severities and store them as ``<corruption>/<severity>/<class>/<image>``. We use four of
their corruptions at three severities, with the same layout, so a user's ImageNet-C folder and
our embedded set are read by one loader:

* ``gaussian_noise``: ``clip(x + s * n)``, ``n ~ N(0, 1)`` per pixel and channel (ImageNet-C's formula);
* ``gaussian_blur``: a Gaussian filter of standard deviation ``s`` x the shorter side;
* ``contrast``: ``(x - mean) * s + mean`` with the image's mean (ImageNet-C's formula, via
  torchvision's ``adjust_contrast``, which blends with the mean grey level);
* ``elastic``: the elastic distortion of Simard et al. (ICDAR 2003) as torchvision's
  ``ElasticTransform`` defines it (a uniform random displacement field smoothed by a Gaussian
  of ``sigma`` and scaled by ``alpha``), both given as fractions of the shorter side.

Severity parameters were chosen on 28x28 MNIST digits (pixel equivalents in the comments) so
that accuracy drops with each step without reaching chance; ImageNet-C's own values are for
224-pixel photos. Randomness is drawn from a NumPy PCG64 stream seeded by (seed, corruption,
image key), so an image's corruption does not depend on which other images are processed or in
which order, and the same random field is scaled across severities (higher severity is
strictly further from the clean image for noise).
"""

from __future__ import annotations

import argparse
import hashlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from mmllm.errors import ConfigError

from .folders import ImageFolderSplit

# name -> parameter per severity 1, 2, 3 (fractions of the shorter side where geometric)
CORRUPTIONS: dict[str, tuple] = {
    "gaussian_noise": (0.1, 0.2, 0.3),  # noise std on [0, 1] pixels
    "gaussian_blur": (1.0 / 28, 1.5 / 28, 2.0 / 28),  # sigma 1.0 / 1.5 / 2.0 px at 28 px
    "contrast": (0.4, 0.2, 0.1),  # contrast factor (1 = unchanged)
    "elastic": ((20 / 28, 4 / 28), (34 / 28, 4 / 28), (48 / 28, 4 / 28)),  # (alpha, sigma) px: Simard's is (34, 4)
}
SEVERITIES = (1, 2, 3)


def _rng(seed: int, name: str, key: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}\0{name}\0{key}".encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:8], "little")))


def _odd_kernel(sigma: float) -> int:
    size = int(8 * sigma + 1)  # as torchvision's ElasticTransform: +-4 sigma
    return size + 1 if size % 2 == 0 else size


def _check(image: torch.Tensor, name: str, severity: int) -> None:
    if name not in CORRUPTIONS:
        raise ConfigError(f"unknown corruption {name!r}; known: {sorted(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ConfigError(f"corruption severity must be one of {SEVERITIES}, got {severity!r}")
    if image.dim() != 3 or not image.is_floating_point():
        raise ValueError(f"expected a float image [C, H, W] in [0, 1], got {image.dtype} {tuple(image.shape)}")


def corrupt(image: torch.Tensor, name: str, severity: int, key: str, seed: int = 0) -> torch.Tensor:
    """``image`` ([C, H, W] float in [0, 1]) corrupted by ``name`` at ``severity`` (1..3).

    ``key`` identifies the image (e.g. its path relative to the split folder): with ``seed`` it
    fixes the random draws. The result is float in [0, 1], same shape.
    """
    _check(image, name, severity)
    param = CORRUPTIONS[name][severity - 1]
    channels, height, width = image.shape
    side = min(height, width)
    x = image.float().clamp(0, 1)
    if name == "gaussian_noise":
        noise = _rng(seed, name, key).standard_normal((channels, height, width)).astype(np.float32)
        out = x + param * torch.from_numpy(noise)
    elif name == "gaussian_blur":
        sigma = param * side
        out = TF.gaussian_blur(x, [_odd_kernel(sigma)] * 2, [sigma, sigma])
    elif name == "contrast":
        # ImageNet-C: (x - mean) * c + mean; torchvision blends with the mean grey level, which is
        # the same for grey images and the luminance-weighted version of it for colour ones
        out = TF.adjust_contrast(x, param) if channels in (1, 3) else (x - x.mean()) * param + x.mean()
    else:  # elastic
        alpha, sigma = param[0] * side, param[1] * side
        field = _rng(seed, name, key).uniform(-1.0, 1.0, size=(2, 1, height, width)).astype(np.float32)
        field = TF.gaussian_blur(torch.from_numpy(field), [_odd_kernel(sigma)] * 2, [sigma, sigma])
        dx, dy = field[0] * alpha / width, field[1] * alpha / height  # torchvision's normalisation
        displacement = torch.cat([dx, dy], 0).permute(1, 2, 0)[None]  # [1, H, W, 2]
        out = TF.elastic_transform(x, displacement, interpolation=TF.InterpolationMode.BILINEAR, fill=[0.0])
    return out.clamp(0, 1)


# ---------------------------------------------------------------- writing an ImageNet-C-style tree
@contextmanager
def single_thread():
    """One torch thread while corrupting many small images: on a busy 2-core machine the intra-op
    thread hand-off costs ~100x the work of blurring a 28x28 image (measured: 77 ms vs 0.5 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[C, H, W] float in [0, 1] -> [H, W] (one channel) or [H, W, C] uint8 for PIL."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array


def corrupt_folder(
    src: str | Path, dst: str | Path, seed: int = 0, names: tuple[str, ...] | None = None, per_class: int | None = None
) -> int:
    """Write ``dst/<corruption>/<severity>/<class>/<stem>.png`` for every image of the
    ImageFolder split ``src`` (or its first ``per_class`` per class); returns the number written.

    Grey images (equal channels) stay one-channel, so noise stays grey. ``dst`` must not exist
    or be empty: a half-written tree would be evaluated as if whole.
    """
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise ConfigError(f"{dst} is not empty: choose a new folder for the corrupted set")
    split = ImageFolderSplit(src, per_class=per_class)
    names = tuple(names or CORRUPTIONS)
    for name in names:
        _check(torch.zeros(1, 1, 1), name, 1)
    with single_thread():
        return _write_corrupted(split, dst, names, seed)


def _write_corrupted(split, dst: Path, names: tuple[str, ...], seed: int) -> int:
    from PIL import Image

    count = 0
    for index in range(len(split)):
        label, key = split.targets[index], split.keys[index]
        pixels = torch.from_numpy(np.asarray(split.load(index), dtype=np.float32) / 255.0).permute(2, 0, 1)
        if torch.equal(pixels[0], pixels[1]) and torch.equal(pixels[0], pixels[2]):
            pixels = pixels[:1]
        for name in names:
            for severity in SEVERITIES:
                out = dst / name / str(severity) / split.classes[label] / (Path(key).stem + ".png")
                out.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(to_uint8(corrupt(pixels, name, severity, key, seed))).save(out)
                count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    """``python -m vision.classification.corruptions SRC DST``: a corrupted copy of your test split."""
    from mmllm.console import run_cli

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("src", help="ImageFolder split (class sub-folders)")
    parser.add_argument("dst", help="new folder: <corruption>/<severity>/<class>/<image>.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=None, help="only the first N images of each class")
    parser.add_argument("--corruptions", nargs="*", default=None, choices=sorted(CORRUPTIONS))
    args = parser.parse_args(argv)
    return run_cli(
        lambda: print(
            f"wrote {corrupt_folder(args.src, args.dst, args.seed, args.corruptions, args.per_class)} "
            f"images under {args.dst}"
        )
    )


if __name__ == "__main__":
    raise SystemExit(main())
