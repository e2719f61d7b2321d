"""Kept so that ``from mmllm.engine.cli import task_for`` keeps working. The engine imports no command
line: what trains a config lives in :mod:`mmllm.engine.launch`; the argument parsing (``train_main``,
``variants_main``, ``run_variants``, ``add_run_flags``) moved to :mod:`mmllm.cli`, and ``print_report`` /
``run_cli`` to :mod:`mmllm.console`."""

from __future__ import annotations

from .launch import import_modules, prepare_embedded_data, task_for, train_config

__all__ = ["import_modules", "prepare_embedded_data", "task_for", "train_config"]

_MOVED = {
    "train_main": "mmllm.cli",
    "variants_main": "mmllm.cli",
    "run_variants": "mmllm.cli",
    "add_run_flags": "mmllm.cli",
    "config_from_args": "mmllm.cli",
    "train": "mmllm.cli",
    "QUICK": "mmllm.cli",
    "print_report": "mmllm.console",
    "run_cli": "mmllm.console",
}


def __getattr__(name: str):
    if name in _MOVED:  # said, not imported: the engine must not import the command line
        raise AttributeError(f"mmllm.engine.cli.{name} moved: import it from {_MOVED[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
