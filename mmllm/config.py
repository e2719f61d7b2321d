"""LAVIS-style task configs: YAML with ``model``, ``datasets`` and ``run`` sections,
overridable from the command line (``--options run.max_epoch=2 model.llm_block.kind=none``).

Composition (``_base_``)
------------------------
Any mapping of a config file, at any depth, may name one or more *base files* under the reserved key
``_base_`` (a path or a list of paths, relative to the file that names them). The mapping is then
the base files' content merged in order, with the mapping's own keys on top::

    model: {_base_: ../models/meter_smollm2.yaml, arch: meter_vqa}      # a model section, shared
    datasets:
      mmllm_vqa: {_base_: ../benchmarks/easyvqa_val.yaml, num_answers: 3129}   # a benchmark's data, shared
    run: {task: mmllm_vqa, ...}

A base file is a mapping that becomes the content of the mapping naming it: at the top level a whole
task config (its ``model``/``datasets``/``run`` sections, like mmengine's ``_base_``), inside
``datasets.<name>`` a benchmark's data keys (``prepare``, ``root``, ``splits``, ...), inside ``model``
a model's keys. A base file may have bases of its own (at any depth, relative to itself).

Why this one mechanism: a benchmark's data section (``datasets.mmllm_vqa``, read by every VQA model) carries
each model's own answer-side keys on top (METER's vocabulary size, the generative path's answer length), and
the same data feed other benchmarks (easy-VQA's captions for ITM+MLM pretraining), so a whole-file include
(mmengine's top-level ``_base_``, Hydra's defaults list with its fixed package paths) would still copy the
section; an include at the mapping where the data go places one file anywhere, and at the top level it is
exactly mmengine's ``_base_``. ``_base_`` (underscored) cannot
collide with an option name. Interpolations (``${...}``) are resolved after composing, against the
composed config, as in a single file.

Merge rules are OmegaConf's (``OmegaConf.merge``): mappings merge key by key, recursively; a list or a
scalar on top *replaces* the base's value (lists are never concatenated). Merging cannot remove a key
(``key: null`` sets it to null), so a base holds what every user wants and a user adds to it: easy-VQA's
``easyvqa.yaml`` holds the train/test splits, ``easyvqa_val.yaml`` (based on it) adds the val split for
the models that select on it. Errors (a missing or unreadable base file, a base that is not a mapping, a
``_base_`` that is not a path or list of paths, a cycle of bases) are :class:`ConfigError`\\ s naming the
including file and key. Command-line ``--options`` apply last, over the composed config;
``mmllm config --show X.yaml`` prints the composed result."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError

SECTIONS = ("model", "datasets", "run")
BASE_KEY = "_base_"


def _read_yaml(path: Path, named_by: str = "") -> DictConfig:
    """``path``'s top-level mapping, uncomposed (``named_by``: who includes it, for the errors)."""
    if not path.is_file():
        raise ConfigError(
            f"{named_by}base file {path} does not exist" if named_by else f"config file {path} does not exist"
        )
    not_a_mapping = (
        f"{named_by}{path}: a base file's top level must be a mapping"
        if named_by
        else f"{path}: top level must be a mapping with sections {SECTIONS}"
    )
    try:
        node = OmegaConf.load(path)
    except OSError as exc:  # OmegaConf's answer to a top-level scalar
        raise ConfigError(f"{not_a_mapping}: {exc}") from exc
    except Exception as exc:  # yaml errors
        raise ConfigError(f"{named_by}{path}: not valid YAML: {exc}") from exc
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{not_a_mapping}, got a {type(node).__name__}")
    return node


def _base_paths(value: Any, file: Path, where: str) -> list[Path]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v for v in values):
        raise ConfigError(f"{file}: {where} must be a file path or a list of file paths, got {value!r}")
    return [(file.parent / v) for v in values]


def _compose(data: Any, file: Path, key: str, chain: tuple[Path, ...]) -> Any:
    """``data`` (plain containers of ``file``, at ``key``) with every ``_base_`` merged in."""
    if isinstance(data, list):
        return [_compose(v, file, f"{key}[{i}]", chain) for i, v in enumerate(data)]
    if not isinstance(data, dict):
        return data
    own = {k: _compose(v, file, f"{key}.{k}" if key else str(k), chain) for k, v in data.items() if k != BASE_KEY}
    if BASE_KEY not in data:
        return own
    where = f"{key}.{BASE_KEY}" if key else BASE_KEY
    layers = []
    for base in _base_paths(data[BASE_KEY], file, where):
        real = base.resolve()
        if real in chain:
            cycle = " -> ".join(str(p) for p in (*chain[chain.index(real) :], real))
            raise ConfigError(f"{file}: {where}: bases form a cycle: {cycle}")
        named_by = f"{file}: {where}: "
        loaded = OmegaConf.to_container(_read_yaml(base, named_by), resolve=False)
        layers.append(_compose(loaded, base, "", (*chain, real)))
    try:
        merged = OmegaConf.merge(*layers, own)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{file}: {where}: cannot merge the bases: {exc}") from exc
    return OmegaConf.to_container(merged, resolve=False)


def load_yaml(path: str | Path) -> DictConfig:
    """A YAML mapping with its ``_base_`` files composed (see the module docstring); no section checks
    (LAVIS reads task configs through here too)."""
    path = Path(path)
    node = _read_yaml(path)
    raw = OmegaConf.to_container(node, resolve=False)
    if not _has_base(raw):
        return node  # exactly what OmegaConf.load reads
    return cast(DictConfig, OmegaConf.create(_compose(raw, path, "", (path.resolve(),))))


def _has_base(data: Any) -> bool:
    if isinstance(data, dict):
        return BASE_KEY in data or any(_has_base(v) for v in data.values())
    return isinstance(data, list) and any(_has_base(v) for v in data)


def load_config(path: str | Path, options: Sequence[str] = ()) -> DictConfig:
    """The task config of ``path``: its ``_base_`` files composed, then ``options`` (``key=value``) on top."""
    path = Path(path)
    cfg = load_yaml(path)
    for option in options:
        if "=" not in option:
            raise ConfigError(f"override {option!r} must look like section.key=value")
    try:
        cfg = cast(
            DictConfig, OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(options)))
        )  # a mapping merged: a mapping
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad override in {list(options)}: {exc}") from exc
    unknown = [str(k) for k in cfg if k not in SECTIONS]
    if unknown == ["stages"]:  # a stages file (mmllm.engine.stages) handed to a reader of one task config
        raise ConfigError(
            f"{path} is a stages file (several task configs run in order): run it with `mmllm train --config "
            f"{path}` or a sweep; `mmllm config --show` prints its stages; the LAVIS entry point takes one stage's config"
        )
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
