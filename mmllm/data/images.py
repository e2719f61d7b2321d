"""Image loading with clear errors, and the eval-style transform every project uses."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from PIL import Image, UnidentifiedImageError
from torchvision import transforms

from ..errors import DataError


@runtime_checkable
class ImageSource(Protocol):
    """An image that is not a file of its own (a hub dataset's image column): opened when an item is
    read, so a split's images are never all decoded at once."""

    def open(self) -> Image.Image:
        """The image as stored (any mode); :func:`load_image` converts it as it converts files."""
        ...


ImageRef = str | Path | ImageSource  # what a record names its image by


def load_image(source: ImageRef) -> Image.Image:
    """The RGB image of a file or an :class:`ImageSource`: both take the same conversion, so hub images
    reach the transforms exactly as files do."""
    if not isinstance(source, (str, Path)):  # (a Path has an open() too: test for files first)
        return _opened_rgb(source.open, str(source))
    path = Path(source)
    if not path.is_file():
        raise DataError(f"image {path} does not exist")
    return _opened_rgb(lambda: Image.open(path), str(path))


def _opened_rgb(opener, what: str) -> Image.Image:
    try:
        with opener() as image:
            image.load()
            return to_rgb(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"image {what} is corrupt or not an image: {exc}") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB; transparent pixels onto white, not onto whatever RGB they hold."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def image_transform(size: int, mean, std) -> transforms.Compose:
    """Resize to the encoder's input, then normalise. No colour or flip augmentation:
    colours and left/right are answers in VQA data."""
    return transforms.Compose(
        [
            transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def check_images_exist(paths: list[Path], what: str) -> None:
    missing = [str(p) for p in dict.fromkeys(paths) if not Path(p).is_file()]
    if missing:
        raise DataError(f"{what}: {len(missing)} image(s) missing, e.g. {missing[:3]}")


def stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(images, dim=0)
