"""Resumable, atomic DeepSpeed checkpoints.

DeepSpeed writes a tag folder, then (if asked) a ``latest`` file. A run killed while
writing could leave a half-written folder that ``latest`` already names. We write each
checkpoint under a temporary tag, rename it once every rank has finished, and only then
replace ``latest`` atomically, so ``latest`` always names a complete checkpoint.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed

LATEST = "latest"
_TAG = re.compile(r"^step(\d+)$")


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


class CheckpointStore:
    def __init__(self, folder: Path, keep_last: int = 2):
        self.folder = Path(folder)
        self.keep_last = keep_last

    def latest_tag(self) -> str | None:
        pointer = self.folder / LATEST
        if not pointer.is_file():
            return None
        tag = pointer.read_text().strip()
        return tag if (self.folder / tag).is_dir() else None

    def save(self, engine, step: int, client_state: dict[str, Any], include_frozen: bool = False) -> str:
        tag = f"step{step}"
        tmp_tag = f".tmp-{tag}"
        rank0 = engine.global_rank == 0
        if rank0:
            self.folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self.folder / tmp_tag, ignore_errors=True)
        distributed.barrier()
        engine.save_checkpoint(
            str(self.folder), tag=tmp_tag, client_state=client_state, save_latest=False,
            exclude_frozen_parameters=not include_frozen,
        )
        distributed.barrier()
        if rank0:
            shutil.rmtree(self.folder / tag, ignore_errors=True)
            os.replace(self.folder / tmp_tag, self.folder / tag)
            atomic_write_text(self.folder / LATEST, tag)
            self._prune(keep=tag)
        distributed.barrier()
        return tag

    def _prune(self, keep: str) -> None:
        tags = sorted(
            (int(m.group(1)), p) for p in self.folder.iterdir() if (m := _TAG.match(p.name)) and p.name != keep
        )
        for _, path in tags[: max(0, len(tags) - (self.keep_last - 1))]:
            shutil.rmtree(path, ignore_errors=True)

    def load(self, engine) -> dict[str, Any] | None:
        tag = self.latest_tag()
        if tag is None:
            return None
        _, client_state = engine.load_checkpoint(
            str(self.folder), tag=tag, load_module_strict=False,
            load_optimizer_states=True, load_lr_scheduler_states=True,
        )
        return client_state


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True, default=str))
