"""LAVIS-style task configs: YAML with ``model``, ``datasets`` and ``run`` sections,
overridable from the command line (``--options run.max_epoch=2 model.llm_block.kind=none``)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError

SECTIONS = ("model", "datasets", "run")


def load_config(path: str | Path, options: Sequence[str] = ()) -> DictConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml errors
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: top level must be a mapping with sections {SECTIONS}")
    for option in options:
        if "=" not in option:
            raise ConfigError(f"override {option!r} must look like section.key=value")
    try:
        cfg = cast(DictConfig, OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(options))))  # a mapping merged: a mapping
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad override in {list(options)}: {exc}") from exc
    unknown = [str(k) for k in cfg if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"{path}: unknown top-level section(s) {unknown}; a task config has {SECTIONS}")
    missing = [s for s in SECTIONS if s not in cfg]
    if missing:
        raise ConfigError(f"{path}: missing section(s) {missing}; a task config has {SECTIONS}")
    return cfg


def to_dict(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def require(cfg: DictConfig, dotted: str) -> Any:
    """A required config value, with an error that names its full key."""
    value = OmegaConf.select(cfg, dotted, default=None)
    if value is None:
        raise ConfigError(f"config key {dotted!r} is required")
    return value
