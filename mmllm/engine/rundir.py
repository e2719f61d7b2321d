"""An output folder holds one run: resume it only when it is the same run, never overwrite it silently.

Re-running a command resumes its run. Re-running with *different* settings into the same
folder used to resume the old run under the old schedule while recording the new settings,
then overwrite its results; now it is refused unless ``run.resume=always`` (continue the old
run under the new settings) or ``run.overwrite=true`` (delete the old run) says what to do.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..jsonio import read_json
from .run_config import RunConfig

CONFIG_FILE = "config.json"
# the config as it resolved when the run was set up (every default filled in by the code of that day): a later
# version compares against it, so a changed default shows as a difference and an added key does not
RESOLVED_FILE = "resolved_config.json"
REEVALUATION_FILE = "reevaluation.json"  # a finished run evaluated again under other evaluation settings
RUN_FILES = (
    "checkpoints",
    "model_final.pt",
    "summary.json",
    REEVALUATION_FILE,
    "metrics.jsonl",
    "tensorboard",
    CONFIG_FILE,
    RESOLVED_FILE,
)
CONFIG_ONLY = {CONFIG_FILE, RESOLVED_FILE}


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: data}


def config_differences(
    old: dict[str, Any], new: dict[str, Any], harmless_too: bool = False, added_ok: bool = False
) -> list[str]:
    """``key: old -> new`` for every setting that makes the runs different (harmless run keys ignored unless
    ``harmless_too``). ``added_ok``: ``old`` is a resolved config stored by an earlier version, so a key only
    ``new`` has was added since (its default is what that version did) and is no difference."""
    harmless = set() if harmless_too else {f"run.{k}" for k in RunConfig.HARMLESS}
    a, b = _flatten(old), _flatten(new)
    keys = sorted((set(a) if added_ok else set(a) | set(b)) - harmless)
    return [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in keys if a.get(k) != b.get(k)]


def stored_differences(out_dir: Path, current: dict[str, Any], resolve, harmless_too: bool = False) -> list[str]:
    """How the run stored in ``out_dir`` differs from ``current`` (a resolved config): against its
    ``resolved_config.json`` when it has one (a changed default is a difference, an added key is not), else
    against its ``config.json`` resolved by this code (``resolve(raw)``; folders of older versions)."""
    resolved_file = out_dir / RESOLVED_FILE
    if resolved_file.is_file():
        stored = read_json(resolved_file, "stored resolved config")
        return config_differences(stored, current, harmless_too, added_ok=True)
    try:
        stored = resolve(read_json(out_dir / CONFIG_FILE, "stored run config"))
    except Exception as exc:  # noqa: BLE001 - a stored config that no longer parses is a different run
        stored = {"unparseable": str(exc)}
    return config_differences(stored, current, harmless_too)


def holds_a_run(out_dir: Path) -> bool:
    return any((out_dir / name).exists() for name in RUN_FILES)


def never_trained(out_dir: Path) -> bool:
    """Only a ``config.json`` (older versions wrote it before set-up, so a run whose data or model
    set-up failed left one): nothing was trained or written that a re-run could lose."""
    present = {name for name in RUN_FILES if (out_dir / name).exists()}
    return bool(present) and present <= CONFIG_ONLY


def check_output_dir(out_dir: Path) -> None:
    """``out_dir`` exists as a folder (created if need be) that this process can write into."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"run.output_dir {out_dir} is a file, not a folder; choose another run.output_dir")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-")
        probe.close()
    except OSError as exc:
        raise ConfigError(
            f"run.output_dir {out_dir} cannot be created or written: "
            f"{exc.strerror or exc}{f' ({exc.filename})' if exc.filename else ''}; "
            "choose another run.output_dir"
        ) from None


def prepare_output_dir(out_dir: Path, task, resolve) -> str:
    """Decide what to do with ``out_dir``: ``"new"`` or ``"resume"``; refuse a folder that holds another run.

    ``resolve(raw_config_dict)`` gives the resolved (typed, defaults filled) config of a stored run,
    so a run is "the same" when its resolved settings match, whatever spelling its file used.
    """
    run: RunConfig = task.run
    check_output_dir(out_dir)
    if not holds_a_run(out_dir) or never_trained(out_dir):
        return "new"
    if run.overwrite:
        for name in RUN_FILES:
            path = out_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        return "new"
    stored_file = out_dir / CONFIG_FILE
    what = f"output_dir {out_dir} already holds a run"
    how = "pass --overwrite (run.overwrite=true) to delete it, or choose another run.output_dir"
    if run.resume == "never":
        raise ConfigError(f"{what} and run.resume=never; {how}")
    if not stored_file.is_file():
        raise ConfigError(f"{what} without its {CONFIG_FILE} (not written by this version?); {how}")
    differences = stored_differences(out_dir, task.resolved_config(), resolve)
    if differences and run.resume != "always":
        listed = "; ".join(differences[:8]) + (f" (+{len(differences) - 8} more)" if len(differences) > 8 else "")
        raise ConfigError(
            f"{what} with different settings: {listed}. Pass --resume (run.resume=always) to "
            f"continue that run under the new settings, or {how}"
        )
    return "resume"
