"""DataLoader settings per device: the run's ``num_workers``, ``pin_memory`` and ``persistent_workers``,
with ``auto`` resolved here, once, for the training loader and the benchmark that measures it.

Why these defaults: on a CPU-only machine the training step already uses every core, so loader workers
compete with it (0 workers; pinned memory means nothing without a GPU). On a GPU the step runs on the
device and the CPU is free to decode and augment the next batches: workers (up to 8, leaving a core per
local rank for the launcher and the step's own Python), pinned host memory for asynchronous copies, and
workers kept alive across epochs so each epoch does not pay their start-up (dataset pickling, imports).
"""

from __future__ import annotations

import os
from typing import Any

import torch

MAX_AUTO_WORKERS = 8


def auto_num_workers(device: torch.device, local_world_size: int = 1) -> int:
    """0 on CPU; on a GPU the cores left per local rank after one for the step, at most 8."""
    if device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(MAX_AUTO_WORKERS, cores // max(1, local_world_size) - 1))


def loader_settings(run: Any, device: torch.device, local_world_size: int = 1) -> dict[str, Any]:
    """Keyword arguments for ``DataLoader`` from a run section (``num_workers`` int or ``auto``,
    ``pin_memory`` / ``persistent_workers`` bool or None = auto)."""
    workers = run.num_workers
    if workers == "auto":
        workers = auto_num_workers(device, local_world_size)
    pin = run.pin_memory if run.pin_memory is not None else device.type == "cuda"
    persistent = run.persistent_workers if run.persistent_workers is not None else workers > 0
    settings: dict[str, Any] = {"num_workers": workers, "pin_memory": bool(pin)}
    if workers > 0:  # DataLoader refuses persistent_workers without workers
        settings["persistent_workers"] = bool(persistent)
    return settings
