"""The result every checkpoint reader returns, and what is shared by all readers: shape checks,
the fingerprint of the loaded weights, and tensor-by-tensor casting that never holds a layer twice."""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import sys
from dataclasses import dataclass, field

import torch
from transformers import PretrainedConfig

from ..architectures import ArchitectureSpec
from ..errors import CheckpointError
from .state_fit import holds_nonfinite


@dataclass
class LayerWeights:
    """Tensors of the selected decoder layers, named as in transformers' layer modules.

    ``fingerprint`` hashes the layers' names, shapes and first values as stored in the
    checkpoint (before any cast), so it does not depend on the dtype they were loaded in.
    """

    config: PretrainedConfig
    layers: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    final_norm: dict[str, torch.Tensor] | None = None
    source: str = ""
    fingerprint: str | None = None
    sha256: str | None = None  # of every loaded layer tensor's bytes as stored (see :func:`tensor_sha256`)


def expected_shapes(module: torch.nn.Module) -> dict[str, torch.Size]:
    """Names and shapes of a module's persistent tensors (the ones a checkpoint must hold)."""
    return {name: t.shape for name, t in module.state_dict().items()}


def layer_template(spec: ArchitectureSpec, config: PretrainedConfig, index: int) -> torch.nn.Module:
    with torch.device("meta"):
        return spec.build_layer(config, index)


def final_norm_template(spec: ArchitectureSpec, config: PretrainedConfig) -> torch.nn.Module:
    with torch.device("meta"):
        return spec.build_final_norm(config)


def check_shape(tensor: torch.Tensor, shape: tuple[int, ...], name: str, where: str, source: str) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise CheckpointError(
            f"{source}: {where} tensor {name!r} has shape {tuple(tensor.shape)}, the config implies {tuple(shape)}"
        )


def check_finite(tensor: torch.Tensor, name: str, where: str, source: str, stored: torch.dtype) -> None:
    """Refuse a tensor holding NaN or inf, as read or after the cast to another dtype (bfloat16 weights
    above 65,504 become inf in float16): the frozen block would turn every token into NaN."""
    if holds_nonfinite(tensor):
        cast_note = f" after the cast from {stored} to {tensor.dtype}" if tensor.dtype != stored else ""
        raise CheckpointError(f"{source}: {where} tensor {name!r} holds NaN or inf{cast_note}")


def check_tensors(
    found: dict[str, torch.Tensor], expected: dict[str, torch.Size], where: str, source: str
) -> dict[str, torch.Tensor]:
    """Raise a CheckpointError naming every missing or misshapen tensor."""
    missing = sorted(set(expected) - set(found))
    if missing:
        raise CheckpointError(f"{source}: {where} is missing tensor(s) {missing}")
    for name, shape in expected.items():
        check_shape(found[name], shape, name, where, source)
    return {name: found[name] for name in expected}


def fingerprint_piece(index: int, name: str, tensor: torch.Tensor) -> bytes:
    """What a layer tensor adds to the fingerprint (unchanged since the first release: old
    checkpoints' fingerprints stay valid)."""
    head = tensor.flatten()[:16].float().numpy().tobytes()
    return f"{index}.{name}{tuple(tensor.shape)}".encode() + head


def fingerprint(pieces: dict[tuple[int, str], bytes]) -> str:
    digest = hashlib.sha256()
    for key in sorted(pieces):
        digest.update(pieces[key])
    return digest.hexdigest()[:16]


def digest_piece(index: int, name: str, tensor: torch.Tensor) -> bytes:
    """What a layer tensor adds to the full SHA-256: its name, shape, dtype and every byte as stored."""
    from .integrity import tensor_digest

    return f"{index}.{name}{tuple(tensor.shape)}{tensor.dtype}:{tensor_digest(tensor)}".encode()


def tensor_sha256(pieces: dict[tuple[int, str], bytes]) -> str:
    """SHA-256 over all layer tensors (sorted by layer and name): identifies the frozen weights exactly,
    whatever dtype they are loaded in, so a saved block can check it gets the weights it was trained with."""
    digest = hashlib.sha256()
    for key in sorted(pieces):
        digest.update(pieces[key])
    return digest.hexdigest()


def cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``tensor`` in ``dtype``: the same tensor (no copy) when it already is, else one new tensor."""
    if dtype is None or tensor.dtype == dtype:
        return tensor
    return tensor.to(dtype)


_MADV_DONTNEED = 4
_libc = None


def release_file_pages(tensor: torch.Tensor) -> None:
    """madvise(MADV_DONTNEED) on the whole pages inside a file-mapped tensor's bytes (Linux only).

    A ``torch.load(mmap=True)`` checkpoint is one private mapping of the whole file: a tensor
    read from it stays resident until every tensor of the file is freed, so a cast copy would
    otherwise sit beside its source. The pages are clean (never written), so a later read of
    the same tensor faults them in again from the file. Call it only on tensors whose storage
    is a file mapping: on anonymous memory the kernel would zero the pages.
    """
    global _libc
    if not sys.platform.startswith("linux") or tensor.device.type != "cpu" or tensor.numel() == 0:
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    page = mmap.PAGESIZE
    first, last = -(-start // page) * page, end // page * page  # whole pages only
    if last > first:
        _libc.madvise(first, last - first, _MADV_DONTNEED)
