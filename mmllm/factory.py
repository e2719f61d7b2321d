"""open_clip's ``create_model_and_transforms`` for every registered task.

    model, train_transform, eval_transform, tokenizer = mmllm.create_model_and_transforms(
        "mmllm_vqa", **{"model.llm_block.kind": "none"})

``name_or_config`` is a registered task name (``mmllm_vqa``, ``mmllm_retrieval``, ... see
``mmllm tasks``), a LAVIS model arch of one (``mmllm_meter_vqa``), a YAML config path or a
config mapping with ``model``/``datasets``/``run`` sections. A name stands for its task's
default config (``TaskEntry.default_config``). Overrides: ``options=["model.llm_block.kind=none"]``
(the CLI's ``--options``), keywords with dotted keys (``**{"run.seed": 1}``) or whole sections as
nested mappings (``model={"llm_block": {"kind": "none"}}``, merged into the config).

The task is found through the task registry (:mod:`mmllm.engine.registry`) and built as
``mmllm train`` builds it: ``task.build_preprocess()`` (from the config alone) and
``mmllm.engine.trainer.build_model(task)`` (so ``run.init_from`` is honoured). The model is
returned as built (call ``.eval()`` for inference, as with open_clip).

What the other three are is the task's own preprocessing, the
:class:`~mmllm.engine.preprocess.Preprocess` its ``build_preprocess()`` returns:

* ``train_transform``/``eval_transform``: its ``train``/``eval`` transforms (the same one for
  tasks that augment nothing, e.g. VQA's resize + normalise).
  For images these map a PIL image to the [3, H, W] tensor the model takes (stack them for a batch).
  Tasks whose inputs are not images (point clouds, trajectories, 3D scenes) give ``None``; the action
  task's ``transform`` is its clip transform object (``.train(frames)``, ``.crops(frames, n)``).
* ``tokenizer``: its ``tokenizer`` (a Hugging Face tokenizer: call it on a list of strings
  with ``return_tensors="pt"``), or ``None`` for tasks without text (classification, point clouds,
  action, motion).

Some models take their size from the data: VQA's answer vocabulary (give
``datasets.mmllm_vqa.answer_vocab`` as a JSON list file, or prepare the data), the point-cloud
class list, the motion lane map. Those tasks need their files (or the override) to build.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from .config import SECTIONS, load_config
from .errors import ConfigError
from .schema import suggest


class ModelAndTransforms(NamedTuple):
    """What :func:`create_model_and_transforms` returns; unpacks as a 4-tuple."""

    model: nn.Module
    train_transform: Any
    eval_transform: Any
    tokenizer: Any


def _entry_for_name(name: str):
    from .engine.registry import all_tasks

    tasks = all_tasks()
    if name in tasks:
        return tasks[name]
    by_arch = {e.model_arch: e for e in tasks.values()}
    if name in by_arch:
        return by_arch[name]
    known = sorted(set(tasks) | set(by_arch))
    raise ConfigError(
        f"create_model_and_transforms: {name!r} is neither a registered task, a model arch of one, nor an "
        f"existing config file{suggest(name, known)}; known names: {known}"
    )


def _dotted(key: str, value: Any) -> dict[str, Any]:
    """``"a.b.c", v`` -> ``{"a": {"b": {"c": v}}}``."""
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def resolve_config(
    name_or_config: str | os.PathLike | Mapping[str, Any], options: Sequence[str] = (), **overrides: Any
) -> DictConfig:
    """The config ``create_model_and_transforms`` builds from (a name, YAML path or mapping + overrides)."""
    entry = None
    if isinstance(name_or_config, (Mapping, DictConfig)):
        try:
            cfg = OmegaConf.create(
                dict(name_or_config) if not isinstance(name_or_config, DictConfig) else name_or_config
            )
        except OmegaConfBaseException as exc:
            raise ConfigError(f"create_model_and_transforms: not a valid config mapping: {exc}") from exc
        where = "the config mapping"
    elif isinstance(name_or_config, (str, os.PathLike)):
        text = os.fspath(name_or_config)
        if Path(text).is_file() or text.endswith((".yaml", ".yml")):
            cfg = load_config(text)
            where = text
        else:
            entry = _entry_for_name(text)
            if entry.default_config is None:
                raise ConfigError(f"task {entry.name!r} has no default config: pass a YAML path or a mapping")
            cfg = load_config(entry.default_config)
            where = str(entry.default_config)
    else:
        raise ConfigError(
            f"create_model_and_transforms takes a name, a YAML path or a mapping, got {type(name_or_config).__name__}"
        )
    layers = []
    for key, value in overrides.items():
        if "." in key:
            layers.append(_dotted(key, value))
        elif key in SECTIONS and isinstance(value, (Mapping, DictConfig)):
            layers.append({key: value})
        else:
            raise ConfigError(
                f"override {key}={value!r}: use a dotted key (model.llm_block.kind) or a section "
                f"{SECTIONS} given as a mapping"
            )
    for option in options:
        if not isinstance(option, str) or "=" not in option:
            raise ConfigError(f"option {option!r} must look like section.key=value")
    try:
        cfg = cast(DictConfig, OmegaConf.merge(cfg, *layers, OmegaConf.from_dotlist(list(options))))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad override for {where}: {exc}") from exc
    unknown = [str(k) for k in cfg if k not in SECTIONS]
    missing = [s for s in SECTIONS if s not in cfg]
    if unknown or missing:
        raise ConfigError(
            f"{where}: a task config has the sections {SECTIONS} (unknown: {unknown}, missing: {missing})"
        )
    if entry is not None:
        cfg.run.task = entry.name  # the task asked for by name, even from a config shared by several
    return cfg


def create_task(name_or_config: str | os.PathLike | Mapping[str, Any], options: Sequence[str] = (), **overrides: Any):
    """The registered :class:`~mmllm.engine.task.Task` for a name/config, with its preprocessing built."""
    from .engine.registry import build_task

    cfg = resolve_config(name_or_config, options, **overrides)
    task = build_task(cfg)
    task.build_preprocess()
    return task


def task_transforms(task) -> tuple[Any, Any, Any]:
    """(train transform, eval transform, tokenizer) of a task whose preprocessing is built: its
    :class:`~mmllm.engine.preprocess.Preprocess` (``task.preprocess``), see the module doc."""
    preprocess = task.preprocess
    return preprocess.train, preprocess.eval, preprocess.tokenizer


def create_model_and_transforms(
    name_or_config: str | os.PathLike | Mapping[str, Any], options: Sequence[str] = (), **overrides: Any
) -> ModelAndTransforms:
    """(model, train_transform, eval_transform, tokenizer) for a registered task; see the module docstring."""
    from .engine.trainer import build_model

    task = create_task(name_or_config, options, **overrides)
    model = build_model(task)
    return ModelAndTransforms(model, *task_transforms(task))
