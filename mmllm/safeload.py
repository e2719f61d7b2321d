"""Pickle-free reading of torch files: every ``.pt``/``.bin`` mmllm reads goes through ``weights_only=True``.

A torch file is a pickle. Loaded with weights_only off (what DeepSpeed's own checkpoint
engine does) a planted file runs any code it names (``__reduce__`` → ``os.system``). With
``weights_only=True`` torch's restricted unpickler builds only tensors, containers and plain
numbers, plus the globals a caller allow-lists explicitly; anything else raises
``pickle.UnpicklingError`` before it is called. :func:`refusal` turns that into a message
saying a pickle was refused (not that the file is "corrupt"); :func:`load_weights_only` is
the loader used for DeepSpeed checkpoint states (see :mod:`mmllm.engine.checkpoint`).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

# torch's wordings: "Unsupported global: GLOBAL m.f was not an allowed global", "unsupported GLOBAL posix.system
# whose module posix is blocked", "Can only build Tensor, ... but got <class 'm.C'>"
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)|Unsupported class ([\w.]+)|but got <class '([\w.]+)'>")
_DETAIL = re.compile(r"WeightsUnpickler error:\s*([^\n]+)|^((?:Trying|Unsupported|Can only)[^\n]+)", re.MULTILINE)


def refusal(path: str | Path, exc: BaseException) -> str:
    """'<path>: refused to unpickle ...' for a ``pickle.UnpicklingError`` raised by a ``weights_only`` load."""
    text = str(exc)
    named = _GLOBAL.search(text)
    if named:
        name = next(g for g in named.groups() if g)
        what = f"the file asks to import/run {name!r}, which is neither a tensor nor plain data"
    else:
        detail = _DETAIL.search(text)
        found = next((g for g in detail.groups() if g), "") if detail else text.splitlines()[-1:] or [""]
        what = f"the file holds pickled objects that are not tensors ({''.join(found).strip()[:200]})"
    return (
        f"{path}: refused to unpickle: {what}. mmllm loads checkpoints with weights_only=True, so nothing "
        "in the file was run; a file that needs more than tensors is not one mmllm wrote (or was tampered with)"
    )


def deepspeed_safe_globals() -> list[Any]:
    """The non-tensor globals DeepSpeed's (ZeRO 0-3, fp32/bf16/fp16) checkpoint states need, plus NumPy's
    array reconstruction (uint32 arrays) for checkpoints written before mmllm stored its RNG state pickle-free.

    Each is data on load: two DeepSpeed enums/dataclasses and the loss scalers (classes rebuilt from
    their attribute dict, no ``__setstate__``); a NumPy array is rebuilt from its bytes (an object
    array's items still go through the same restricted unpickler)."""
    import numpy as np
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    reconstruct = np.zeros(1).__reduce__()[0]  # numpy.core/_core.multiarray._reconstruct, whichever NumPy has
    return [
        ZeroStageEnum,
        LossScaler,
        DynamicLossScaler,
        fragment_address,
        reconstruct,
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),
    ]


def load_weights_only(path: str | Path, map_location: Any = "cpu", allow: list[Any] | None = None) -> Any:
    """``torch.load(path, weights_only=True)`` admitting only ``allow`` besides tensors and plain data; a
    refused pickle is a :class:`CheckpointError` saying so, other failures propagate unchanged."""
    try:
        with torch.serialization.safe_globals(list(allow or [])):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(refusal(path, exc)) from exc
