"""Several training stages as one run: each stage an ordinary task config, a later one initialised from an
earlier one's ``model_final.pt`` (``run.init_from``), run in order by one command (``mmllm train`` and the
sweep both take a stages file where they take a config).

Why a file of its own: LLaVA's two stages are two tasks (captioning, then VQA) with different data,
learning rates and trainable parts, so neither config can hold the other, and the second must not start
before the first finished. A stages file::

    stages:
      - {name: stage1, config: easyvqa_llava_stage1.yaml}            # paths relative to this file
      - name: stage2
        config: easyvqa_llava_stage2.yaml
        init_from: stage1                                             # that stage's model_final.pt
        init_prefixes: [lm.projector., "lm.lm.*.visual.*"]           # run.init_prefixes (globs allowed)

Folders: the last stage writes to the run's ``run.output_dir`` (so a sweep or leaderboard finds its
``summary.json`` where a one-stage run keeps it); each earlier stage to ``<output_dir>/<name>``.
Options (``--options``): every ``key=value`` applies to every stage (a ``datasets.<name>`` section a stage
does not read is ignored by its task); ``<stage>:key=value`` to that stage only.
Re-running: each stage is an ordinary run in its folder (:mod:`.rundir`): a finished stage is skipped, an
unfinished one resumed, a folder holding a different run refused. A stage is also refused when an earlier
stage's ``model_final.pt`` changed since it started from it (``stage_init.json`` records the digest):
a retrained stage 1 never silently sits under a stale stage 2.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pydantic import Field, field_validator

from ..config import load_config, load_yaml
from ..errors import ConfigError
from ..jsonio import read_json, write_json
from ..schema import Section

STAGES_KEY = "stages"
INIT_RECORD = "stage_init.json"
FINAL_MODEL = "model_final.pt"


class StageSpec(Section):
    """One stage: its task config and, for a later stage, which earlier stage it starts from."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="folder name of an earlier stage; option prefix")
    config: str = Field(description="the stage's task config, relative to the stages file")
    init_from: str | None = Field(None, description="an earlier stage whose model_final.pt initialises this one")
    init_prefixes: list[str] = Field(default_factory=list, description="run.init_prefixes (prefixes or globs)")


class StagesFile(Section):
    stages: list[StageSpec]
    description: str | None = None

    @field_validator("stages")
    @classmethod
    def _order(cls, stages: list[StageSpec]) -> list[StageSpec]:
        if len(stages) < 2:
            raise ValueError("a stages file needs at least two stages (one stage is a plain config)")
        seen: list[str] = []
        for stage in stages:
            if stage.name in seen:
                raise ValueError(f"stage name {stage.name!r} repeats")
            if stage.init_from is not None and stage.init_from not in seen:
                raise ValueError(f"stage {stage.name}: init_from {stage.init_from!r} is not an earlier stage ({seen})")
            if stage.init_prefixes and stage.init_from is None:
                raise ValueError(f"stage {stage.name}: init_prefixes needs init_from")
            seen.append(stage.name)
        return stages


@dataclass(frozen=True)
class Stage:
    """One stage as it will run: its composed config (options and folders applied) and its folder."""

    name: str
    cfg: DictConfig
    out_dir: Path
    init_from: Path | None


def is_stages_file(path: str | Path) -> bool:
    """Whether ``path`` is a stages file (a top-level ``stages`` list) rather than a task config."""
    node = load_yaml(path)
    return STAGES_KEY in node


def _own_options(options: Sequence[str], stage: str, names: set[str]) -> list[str]:
    """The options for ``stage``: the unprefixed ones and its own ``<stage>:key=value`` ones, prefix dropped."""
    out = []
    for option in options:
        key, eq, value = option.partition("=")
        if ":" not in key:
            out.append(option)
            continue
        head, _, rest = key.partition(":")
        if head not in names:
            raise ConfigError(f"option {option!r}: no stage {head!r} (stages: {sorted(names)})")
        if head == stage:
            out.append(f"{rest}{eq}{value}")
    return out


def load_stages(path: str | Path, options: Sequence[str] = ()) -> list[Stage]:
    """The stages of ``path`` with ``options`` applied, each config composed and its folder set."""
    path = Path(path)
    raw = OmegaConf.to_container(load_yaml(path), resolve=True)
    spec = StagesFile.parse({str(k): v for k, v in raw.items()} if isinstance(raw, dict) else None, str(path))
    names = {s.name for s in spec.stages}
    last = spec.stages[-1]
    final_cfg = load_config(path.parent / last.config, _own_options(options, last.name, names))
    out_value = OmegaConf.select(final_cfg, "run.output_dir", default=None)
    if not out_value:
        raise ConfigError(f"{path}: stage {last.name} has no run.output_dir (set it, or pass run.output_dir=...)")
    root = Path(str(out_value))
    folders = {s.name: root / s.name for s in spec.stages[:-1]} | {last.name: root}
    stages: list[Stage] = []
    for stage in spec.stages:
        own = _own_options(options, stage.name, names)
        extra = [f"run.output_dir={folders[stage.name]}"]
        init = None
        if stage.init_from is not None:
            init = folders[stage.init_from] / FINAL_MODEL
            extra.append(f"run.init_from={init}")
            if stage.init_prefixes:
                extra.append("run.init_prefixes=[" + ",".join(f"'{p}'" for p in stage.init_prefixes) + "]")
        cfg = load_config(path.parent / stage.config, [*own, *extra])
        stages.append(Stage(stage.name, cfg, folders[stage.name], init))
    return stages


def load_run_config(path: str | Path, options: Sequence[str] = ()) -> DictConfig:
    """The config whose results a run reports: a task config itself, or a stages file's last stage."""
    if is_stages_file(path):
        return load_stages(path, options)[-1].cfg
    return load_config(path, options)


def _digest(path: Path) -> str:
    from ..loading.integrity import file_digest

    return file_digest(path)


def check_init(stage: Stage) -> None:
    """Refuse a stage whose folder holds a run started from another version of its ``init_from`` file;
    otherwise record the file's digest (``stage_init.json``). A missing file is the engine's error."""
    if stage.init_from is None or not stage.init_from.is_file():
        return
    record = stage.out_dir / INIT_RECORD
    digest = _digest(stage.init_from)
    if record.is_file() and not bool(OmegaConf.select(stage.cfg, "run.overwrite", default=False)):
        stored = read_json(record, "stage record").get("init_sha256")
        if stored != digest:
            raise ConfigError(
                f"stage {stage.name} in {stage.out_dir} started from another {stage.init_from} (the earlier stage "
                "was trained again since); pass --overwrite to train both anew, or choose another run.output_dir"
            )
    stage.out_dir.mkdir(parents=True, exist_ok=True)
    write_json(record, {"init_from": str(stage.init_from), "init_sha256": digest})


def train_stages(path: str | Path, options: Sequence[str] = (), eval_limit_optional: bool = False) -> dict[str, Any]:
    """Train every stage in order (each skipped when finished, resumed when started); the last one's results."""
    from .launch import train_config

    stages = load_stages(path, options)
    results: dict[str, Any] = {}
    for stage in stages:
        check_init(stage)
        results = train_config(stage.cfg, eval_limit_optional=eval_limit_optional)
        gc.collect()  # the stage's model and engine go before the next one is built
    return results
