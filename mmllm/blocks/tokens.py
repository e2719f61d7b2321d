"""Checks and masks every block kind applies to its input tokens (the contract of the package docstring)."""

from __future__ import annotations

import torch

from ..errors import DataError


def check_tokens(x: torch.Tensor, padding_mask: torch.Tensor | None, visual_dim: int | None, kind: str) -> None:
    """DataError (a ValueError) unless ``x`` is [B>0, N>0, visual_dim] and the mask bool [B, N]."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or (visual_dim is not None and x.shape[-1] != visual_dim):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"{kind}: expected visual tokens [B, N, {visual_dim or 'D'}], got {shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(
            f"{kind}: got an empty batch of tokens {tuple(x.shape)} (B={x.shape[0]}, N={x.shape[1]}); "
            "a block needs at least one sample with at least one token"
        )
    if padding_mask is None:
        return
    if (
        not isinstance(padding_mask, torch.Tensor)
        or padding_mask.dtype != torch.bool
        or (padding_mask.shape != x.shape[:2])
    ):
        got = (
            f"{padding_mask.dtype} {tuple(padding_mask.shape)}"
            if isinstance(padding_mask, torch.Tensor)
            else type(padding_mask).__name__
        )
        raise DataError(f"{kind}: padding_mask must be bool [B, N] = {tuple(x.shape[:2])}, got {got}")


def zero_padded(x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """``x`` with padded tokens set to 0: a NaN/inf in padding would otherwise reach every real token
    (attention drops a padded key by an additive mask, but NaN + mask is still NaN, and NaN x 0 = NaN)."""
    if padding_mask is None:
        return x
    return x.masked_fill(padding_mask[..., None], 0.0)


def additive_padding_mask(padding_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, N] bool (True = padding) -> [B, 1, 1, N] float: 0 keeps a key, dtype-min drops it."""
    mask = torch.zeros(padding_mask.shape, dtype=dtype, device=padding_mask.device)
    mask = mask.masked_fill(padding_mask, torch.finfo(dtype).min)
    return mask[:, None, None, :]
