"""Resumable, atomic DeepSpeed checkpoints that are never lost.

DeepSpeed writes a tag folder, then (if asked) a ``latest`` file. A run killed while writing
could leave a half-written folder that ``latest`` already names. We write each checkpoint
under a temporary tag, record a manifest of its files and sizes, rename it once every rank
has finished, and only then replace ``latest`` atomically. Loading trusts a tag only if its
manifest matches the files on disk (sizes, and the SHA-256 of each file); a ``latest`` that
names a missing or damaged tag falls back to the newest intact one. Only tags of this run's own
checkpoint folder are ever pruned: those this process wrote and, once it resumes, those up to
the step it resumed from (written by an earlier process of the same run).

Every file DeepSpeed reads back goes through ``torch.load(weights_only=True)`` (DeepSpeed's own
checkpoint engine unpickles fully, weights_only off): :func:`guard_loads` replaces the load
of the engine's checkpoint engine, admitting only the few DeepSpeed classes its states hold
(:func:`mmllm.safeload.deepspeed_safe_globals`). Our client state (RNG states, loader position)
is plain data: tensors, ints, tuples. A manifest written before hashes were recorded (sizes
only) is loaded with a warning that the tag is unverified; weights_only still applies.
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

from ..errors import CheckpointError
from ..jsonio import atomic_write_text
from ..loading.integrity import file_digest
from ..model_file import describe_write_error
from ..safeload import deepspeed_safe_globals, load_weights_only
from . import distributed

LATEST = "latest"
MANIFEST = "mmllm_manifest.json"
_TAG = re.compile(r"^step(\d+)$")


def rng_state() -> dict[str, Any]:
    """The RNG states as plain data (ints, tuples, tensors) that a ``weights_only`` load rebuilds: NumPy's
    state tuple holds an ndarray, stored here as an int64 tensor."""
    state = np.random.get_state()
    assert isinstance(state, tuple)  # legacy=True (the default): the tuple form, not the dict
    name, keys, pos, has_gauss, gauss = state
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy = state["numpy"]
    if isinstance(numpy, dict):
        numpy = (
            numpy["name"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["gauss"],
        )
    np.random.set_state(numpy)  # a tuple: written by an mmllm before the state was stored pickle-free
    torch.set_rng_state(state["torch"])


def _files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST]


def _file_sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in _files(folder)}


def _manifest(folder: Path) -> dict[str, Any]:
    """Size and SHA-256 of every file of a finished checkpoint folder."""
    files = _files(folder)
    return {
        "files": {str(p.relative_to(folder)): p.stat().st_size for p in files},
        "sha256": {str(p.relative_to(folder)): file_digest(p) for p in files},
    }


def guard_loads(engine) -> None:
    """Make every checkpoint file ``engine`` reads load with ``weights_only=True``.

    DeepSpeed reads each state file of ``load_checkpoint`` (model states, ZeRO optimizer partitions) through
    ``engine.checkpoint_engine.load(path, map_location)``; its engines call ``torch.load`` with weights_only off.
    This replaces that one method on the instance (whatever engine the DeepSpeed config chose; saving is
    untouched). A refused pickle raises :class:`CheckpointError` naming the file and the global it asked for."""
    checkpoint_engine = getattr(engine, "checkpoint_engine", None)
    if checkpoint_engine is None:  # an engine without an optimizer: DeepSpeed would make an unguarded one
        from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

        checkpoint_engine = engine.checkpoint_engine = TorchCheckpointEngine()
    if getattr(checkpoint_engine.load, "_mmllm_weights_only", False):
        return
    allow = deepspeed_safe_globals()

    def load(path: str, map_location=None):
        return load_weights_only(path, map_location=map_location, allow=allow)

    load._mmllm_weights_only = True  # type: ignore[attr-defined]  # mypy types no attributes set on a function
    checkpoint_engine.load = load


class CheckpointStore:
    def __init__(self, folder: Path, keep_last: int = 2):
        self.folder = Path(folder)
        self.keep_last = keep_last
        self.written: set[str] = set()  # tags of this run that pruning may drop: written or resumed from

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
            recorded = json.loads(manifest.read_text())
            expected, hashes = recorded["files"], recorded.get("sha256")
            if not isinstance(expected, dict) or not isinstance(hashes, (dict, type(None))):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            return f"{manifest} is corrupt"
        actual = _file_sizes(folder)
        for name, size in expected.items():
            if name not in actual:
                return f"{folder / name} is missing"
            if actual[name] != size:
                return f"{folder / name} is truncated ({actual[name]} of {size} bytes)"
        extra = sorted(set(actual) - set(expected))
        if extra:  # DeepSpeed loads files by name pattern: one the save did not write is not trusted
            return f"{folder / extra[0]} was not written by the checkpoint save (not in {MANIFEST})"
        for name, digest in (hashes or {}).items():
            if name not in actual:
                return f"{folder / name} is missing"
            if file_digest(folder / name) != digest:
                return f"{folder / name}: SHA-256 differs from the one recorded in {MANIFEST} when it was written"
        return None

    def unverified(self, tag: str) -> bool:
        """Whether tag ``tag``'s manifest predates hashes (sizes only: its contents were not checked)."""
        try:
            return "sha256" not in json.loads((self.folder / tag / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError, TypeError):
            return True

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
            warnings.warn(
                f"checkpoint {named!r} named by {pointer} cannot be used: {issue}; "
                "falling back to the newest intact checkpoint",
                stacklevel=2,
            )
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
                str(self.folder),
                tag=tmp_tag,
                client_state=client_state,
                save_latest=False,
                exclude_frozen_parameters=not include_frozen,
            )
        except (OSError, RuntimeError) as exc:
            shutil.rmtree(self.folder / tmp_tag, ignore_errors=True)
            raise CheckpointError(
                f"could not write checkpoint {self.folder / tag}: {describe_write_error(exc, self.folder / tmp_tag)}"
            ) from exc
        distributed.barrier()
        if rank0:
            atomic_write_text(self.folder / tmp_tag / MANIFEST, json.dumps(_manifest(self.folder / tmp_tag)))
            shutil.rmtree(self.folder / tag, ignore_errors=True)
            os.replace(self.folder / tmp_tag, self.folder / tag)
            atomic_write_text(self.folder / LATEST, tag)
            self.written.add(tag)
            self._prune(keep=tag)
        distributed.barrier()
        return tag

    def adopt(self, tag: str) -> None:
        """After resuming from ``tag``: the step tags of this folder up to ``tag`` are this run's own, written
        by an earlier process; let ``keep_last`` prune them too. Later tags (a run rewound by
        ``run.resume_ckpt_path``) are left alone, as is anything not named ``stepN``."""
        match = _TAG.match(tag)
        if match is None:
            return
        self.written.update(t for t in self.tags() if (m := _TAG.match(t)) and int(m.group(1)) <= int(match.group(1)))

    def _prune(self, keep: str) -> None:
        """Drop the oldest of this run's tags (written or adopted) beyond ``keep_last``; never another one."""
        mine = sorted((int(m.group(1)), t) for t in self.written if t != keep and (m := _TAG.match(t)))
        for _, tag in mine[: max(0, len(mine) - (self.keep_last - 1))]:
            shutil.rmtree(self.folder / tag, ignore_errors=True)
            self.written.discard(tag)

    # ------------------------------------------------------------------ reading
    def load(self, engine, tag: str | None = None) -> dict[str, Any] | None:
        """Client state of checkpoint ``tag`` (default: the newest intact one) loaded into ``engine`` (None if none)."""
        if tag is not None:
            issue = self.problem(tag)
            if issue is not None:
                raise CheckpointError(f"checkpoint {self.folder / tag} cannot be trusted: {issue}")
        tag = tag or self.latest_tag()
        if tag is None:
            return None
        if self.unverified(tag):
            warnings.warn(
                f"checkpoint {self.folder / tag}: its {MANIFEST} has sizes but no SHA-256 (written by an "
                "older mmllm), so its contents are unverified; it is still read with weights_only=True",
                stacklevel=2,
            )
        guard_loads(engine)
        try:
            path, client_state = engine.load_checkpoint(
                str(self.folder),
                tag=tag,
                load_module_strict=False,
                load_optimizer_states=True,
                load_lr_scheduler_states=True,
            )
        except CheckpointError:  # a refused pickle (mmllm.safeload): already names the file and why
            raise
        except Exception as exc:  # noqa: BLE001 - DeepSpeed/torch raise many types for unreadable files
            raise CheckpointError(
                f"checkpoint {self.folder / tag} cannot be read ({type(exc).__name__}: {exc}); "
                "move it away to resume from an older one"
            ) from exc
        if path is None or client_state is None:
            raise CheckpointError(f"checkpoint {self.folder / tag} could not be loaded by DeepSpeed")
        self.adopt(tag)
        return client_state
