"""Inputs and exact foregrounds for ``mmllm analyze`` on image classification: the digit's own pixels.

On MNIST's black background any map finds the bright strokes, so the §6 question of Pang et al. (ICLR 2024)
— does the block single out the informative tokens? — is only asked in earnest on a background that is
not empty: ``background="textured"`` composites each analysed digit onto a seeded smooth-noise texture.
Only the analysis inputs change; training data, config and the MNIST preparer stay as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmllm.analysis.run import AnalysisInputs
from mmllm.errors import ConfigError

BACKGROUNDS = ("plain", "textured")
TEXTURE_RANGE = (0.1, 0.6)  # moderate contrast, inside MNIST's [0, 1] pixel range and below the strokes' ~1
TEXTURE_CELL = 4  # pixels per noise cell: finer than a 7-pixel patch, so background patches are not uniform


def texture(
    height: int,
    width: int,
    seed: int,
    low: float = TEXTURE_RANGE[0],
    high: float = TEXTURE_RANGE[1],
    cell: int = TEXTURE_CELL,
) -> torch.Tensor:
    """[H, W] smooth value noise in [low, high]: uniform noise on a coarse grid, bilinearly upsampled; the
    same seed gives the same texture on every machine (torch's CPU generator)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 1, height // cell + 2, width // cell + 2, generator=generator, dtype=torch.float64)
    smooth = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=True)[0, 0]
    span = (smooth.max() - smooth.min()).clamp_min(1e-12)
    return (low + (high - low) * (smooth - smooth.min()) / span).float()


def composite(digit: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """A white-on-black digit drawn onto ``background``: its value is the ink's coverage α, so the result is
    α·1 + (1 − α)·background — strokes stay white, empty pixels show the texture, values stay in [0, 1]."""
    alpha = digit.clamp(0, 1)
    return alpha + (1 - alpha) * background


def foreground(pixels: torch.Tensor) -> torch.Tensor:
    """[B, H, W] bool: pixels of the clean digit above half its image's maximum (its strokes)."""
    return pixels > 0.5 * pixels.amax(dim=(1, 2), keepdim=True)


def analysis_inputs(task, model, dataset, num: int, background: str = "plain", seed: int = 0) -> AnalysisInputs:
    """The first ``num`` images of the split on a ``plain`` (as stored) or ``textured`` background (image i
    on ``texture(seed + i)``); foreground = the clean digit's strokes. CLS attention: the ViT's last block."""
    if background not in BACKGROUNDS:
        raise ConfigError(f"--background must be one of {BACKGROUNDS}, got {background!r}")
    items = [dataset[i] for i in range(min(num, len(dataset)))]
    images = torch.stack([it["image"] for it in items])
    mean = torch.tensor(task.data_cfg.mean).view(1, -1, 1, 1)
    std = torch.tensor(task.data_cfg.std).view(1, -1, 1, 1)
    pixels = images * std + mean  # [B, C, H, W] in [0, 1]
    masks = foreground(pixels[:, 0])
    if background == "textured":
        h, w = pixels.shape[-2:]
        textures = torch.stack([texture(h, w, seed + i) for i in range(len(items))])[:, None]
        pixels = composite(pixels, textures)
        images = (pixels - mean) / std
    dtype = next(model.parameters()).dtype
    vit = model.vit
    return AnalysisInputs(
        forward=lambda m: m(images.to(dtype)),
        masks=masks,
        display=pixels[:, 0],
        prefix=vit.num_prefix_tokens,
        grid=tuple(vit.patch_embed.grid_size),
        attention=vit.blocks[-1].attn if vit.has_class_token else None,
        background=background,
    )
