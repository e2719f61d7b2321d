"""Whether a released state dict fits a model, tensor by tensor, and which key is the first that does not.

A host model (a timm ViT, an open_clip tower) is loaded from a file users download; a file for
another architecture or width must fail with the key to look at, not with torch's list of every
mismatch (or, worse, load partly). A file whose tensors hold NaN or inf (a diverged run's save, a bad
conversion) fits by shape but would make every number computed from it NaN: it fails here too, by name.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..errors import CheckpointError


def first_misfit(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> str | None:
    """The first key that does not fit, with why: a file tensor (in file order) the model lacks or holds
    in another shape, else a model tensor the file lacks; None when every tensor fits."""
    for key, value in state.items():
        if key not in own:
            return f"{key} (in the file, not in the model)"
        if tuple(value.shape) != tuple(own[key].shape):
            return f"{key} (shape {tuple(value.shape)} in the file, {tuple(own[key].shape)} in the model)"
    missing = next((key for key in own if key not in state), None)
    return None if missing is None else f"{missing} (in the model, missing from the file)"


def misfit_error(
    state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], what: str
) -> CheckpointError | None:
    """The :class:`CheckpointError` naming the first key of ``state`` that does not fit ``own`` (None: all fit)."""
    misfit = first_misfit(state, own)
    if misfit is None:
        return None
    extra = sum(1 for k in state if k not in own)
    missing = sum(1 for k in own if k not in state)
    reshaped = sum(1 for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape))
    return CheckpointError(
        f"{what} does not fit the model: first key that does not fit: {misfit} "
        f"({extra} unexpected, {missing} missing, {reshaped} of another shape in all)"
    )


def require_fit(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise :class:`CheckpointError` naming the first key of ``state`` that does not fit ``own``."""
    error = misfit_error(state, own, what)
    if error is not None:
        raise error


def holds_nonfinite(value: object) -> bool:
    """Whether ``value`` is a floating-point tensor holding a NaN or an inf (integer tensors cannot)."""
    return isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())


def nonfinite_keys(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Keys of ``state``'s floating-point tensors that hold a NaN or an inf, in ``state``'s order."""
    return [key for key, value in state.items() if holds_nonfinite(value)]


def require_finite(state: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise :class:`CheckpointError` naming the tensors of ``state`` that hold NaN or inf."""
    bad = nonfinite_keys(state)
    if bad:
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise CheckpointError(
            f"{what}: tensor(s) {bad[:10]}{more} hold NaN or inf; a model loaded from it would compute NaN"
        )
