"""Image loading with clear errors, and the eval-style transform every project uses."""
from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision import transforms

from ..errors import DataError


def load_image(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image {path} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")  # transparent pixels onto white, not onto whatever RGB they hold
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return Image.alpha_composite(background, rgba).convert("RGB")
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"image {path} is corrupt or not an image: {exc}") from exc


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
