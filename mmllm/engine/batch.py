"""Moving a batch to the device, casting only the inputs a task says run in the compute dtype.

DeepSpeed's bf16 mode casts the model, not the data: image pixels must follow, but point
coordinates, trajectories and soft-score targets would be silently blurred by bf16 (8 bits of
mantissa: 0.3 becomes 0.30078, 1234.5 m becomes 1232), so each task names what is cast.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch


def move_batch(batch: Any, device: torch.device, dtype: torch.dtype, cast: Collection[str] = ()) -> Any:
    """``batch`` (dict / list / tensor) on ``device``; tensors under the keys in ``cast`` converted to ``dtype``."""
    if isinstance(batch, dict):
        return {k: _move(v, device, dtype if k in cast else None) for k, v in batch.items()}
    return _move(batch, device, None)


def _move(value: Any, device: torch.device, dtype: torch.dtype | None) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.to(device)
        return value.to(dtype) if dtype is not None and value.is_floating_point() else value
    if isinstance(value, dict):
        return {k: _move(v, device, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return type(value)(_move(v, device, dtype) for v in value)
    return value
