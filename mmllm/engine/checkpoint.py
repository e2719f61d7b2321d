"""Resumable, atomic DeepSpeed checkpoints that are never lost.

DeepSpeed writes a tag folder, then (if asked) a ``latest`` file. A run killed while writing
could leave a half-written folder that ``latest`` already names. We write each checkpoint
under a temporary tag, record a manifest of its files and sizes, rename it once every rank
has finished, and only then replace ``latest`` atomically. Loading trusts a tag only if its
manifest matches the files on disk; a ``latest`` that names a missing or damaged tag falls
back to the newest intact one. Only tags this run wrote are ever pruned.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpointing import describe_write_error
from ..errors import CheckpointError
from ..jsonio import atomic_write_text
from . import distributed

LATEST = "latest"
MANIFEST = "mmllm_manifest.json"
_TAG = re.compile(r"^step(\d+)$")


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _file_sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


class CheckpointStore:
    def __init__(self, folder: Path, keep_last: int = 2):
        self.folder = Path(folder)
        self.keep_last = keep_last
        self.written: set[str] = set()  # tags written by this process: the only ones pruned

    # ------------------------------------------------------------------ inspection
    def problem(self, tag: str) -> str | None:
        """Why tag ``tag`` cannot be trusted, or None if its files match its manifest."""
        folder = self.folder / tag
        if not folder.is_dir():
            return f"{folder} does not exist"
        manifest = folder / MANIFEST
        if not manifest.is_file():
            return f"{folder} has no {MANIFEST} (written by an interrupted save)"
        try:
            expected = json.loads(manifest.read_text())["files"]
        except (json.JSONDecodeError, KeyError, TypeError):
            return f"{manifest} is corrupt"
        actual = _file_sizes(folder)
        for name, size in expected.items():
            if name not in actual:
                return f"{folder / name} is missing"
            if actual[name] != size:
                return f"{folder / name} is truncated ({actual[name]} of {size} bytes)"
        return None

    def tags(self) -> list[str]:
        """Step tags on disk, newest first."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p.name) for p in self.folder.iterdir() if (m := _TAG.match(p.name))]
        return [name for _, name in sorted(found, reverse=True)]

    def latest_tag(self) -> str | None:
        """The tag to resume from: ``latest`` if intact, else the newest intact tag (with a warning)."""
        pointer = self.folder / LATEST
        named = pointer.read_text().strip() if pointer.is_file() else None
        if named is not None:
            issue = self.problem(named)
            if issue is None:
                return named
            warnings.warn(f"checkpoint {named!r} named by {pointer} cannot be used: {issue}; "
                          "falling back to the newest intact checkpoint", stacklevel=2)
        for tag in self.tags():
            issue = self.problem(tag)
            if issue is None:
                return tag
            warnings.warn(f"skipping checkpoint {tag!r}: {issue}", stacklevel=2)
        return None

    def has_any(self) -> bool:
        return bool(self.tags()) or (self.folder / LATEST).is_file()

    # ------------------------------------------------------------------ writing
    def save(self, engine, step: int, client_state: dict[str, Any], include_frozen: bool = False) -> str:
        tag = f"step{step}"
        tmp_tag = f".tmp-{tag}"
        rank0 = engine.global_rank == 0
        if rank0:
            self.folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self.folder / tmp_tag, ignore_errors=True)
        distributed.barrier()
        try:
            engine.save_checkpoint(
                str(self.folder), tag=tmp_tag, client_state=client_state, save_latest=False,
                exclude_frozen_parameters=not include_frozen,
            )
        except (OSError, RuntimeError) as exc:
            shutil.rmtree(self.folder / tmp_tag, ignore_errors=True)
            raise CheckpointError(f"could not write checkpoint {self.folder / tag}: "
                                  f"{describe_write_error(exc, self.folder / tmp_tag)}") from exc
        distributed.barrier()
        if rank0:
            atomic_write_text(self.folder / tmp_tag / MANIFEST, json.dumps({"files": _file_sizes(self.folder / tmp_tag)}))
            shutil.rmtree(self.folder / tag, ignore_errors=True)
            os.replace(self.folder / tmp_tag, self.folder / tag)
            atomic_write_text(self.folder / LATEST, tag)
            self.written.add(tag)
            self._prune(keep=tag)
        distributed.barrier()
        return tag

    def _prune(self, keep: str) -> None:
        """Drop the oldest tags *this run* wrote beyond ``keep_last``; never a tag we did not write."""
        mine = sorted((int(_TAG.match(t).group(1)), t) for t in self.written if t != keep)
        for _, tag in mine[: max(0, len(mine) - (self.keep_last - 1))]:
            shutil.rmtree(self.folder / tag, ignore_errors=True)
            self.written.discard(tag)

    # ------------------------------------------------------------------ reading
    def load(self, engine, tag: str | None = None) -> dict[str, Any] | None:
        """Client state of checkpoint ``tag`` (default: the newest intact one) loaded into ``engine`` (None if none)."""
        tag = tag or self.latest_tag()
        if tag is None:
            return None
        try:
            path, client_state = engine.load_checkpoint(
                str(self.folder), tag=tag, load_module_strict=False,
                load_optimizer_states=True, load_lr_scheduler_states=True,
            )
        except Exception as exc:  # noqa: BLE001 - DeepSpeed/torch raise many types for unreadable files
            raise CheckpointError(f"checkpoint {self.folder / tag} cannot be read ({type(exc).__name__}: {exc}); "
                                  "move it away to resume from an older one") from exc
        if path is None or client_state is None:
            raise CheckpointError(f"checkpoint {self.folder / tag} could not be loaded by DeepSpeed")
        return client_state
