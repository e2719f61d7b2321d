"""Evaluation, owned by the engine: exact sharding (no padded duplicates) and gathering
(:func:`predict`), predictions that cover a split's ids exactly once (:class:`PredictionSet`,
:func:`predict_split`), and a finished run rebuilt and evaluated (:func:`load_trained`,
:func:`evaluate_run`: ``mmllm evaluate --run DIR``)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence, Sized
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ..errors import ConfigError, DataError
from ..precision import cast_parameters
from . import distributed
from .splits import EvalSplit, eval_split, missing_members


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the trainable weights (DeepSpeed bf16 casts them; frozen blocks keep their own)."""
    for p in model.parameters():
        if p.requires_grad:
            return p.dtype
    return next(model.parameters()).dtype


def shard(dataset: Dataset) -> Dataset:
    """This rank's share of an evaluation set: indices rank, rank+world, ... (every item exactly once)."""
    if not torch.distributed.is_initialized():
        return dataset
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return Subset(dataset, list(range(rank, len(cast(Sized, dataset)), world)))  # an evaluation set has a length


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: Dataset,
    collate: Callable,
    batch_size: int,
    step: Callable[[nn.Module, dict[str, Any]], Iterable[Any]],
    desc: str = "eval",
    *,
    task,
) -> list[Any]:
    """Run ``step(model, batch)`` over this rank's shard and gather every rank's outputs.

    Batches are moved by ``task.move_batch`` (only the task's compute-dtype inputs are cast)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    dtype = model_dtype(model)
    loader = DataLoader(shard(dataset), batch_size=batch_size, collate_fn=collate)
    outputs: list[Any] = []
    main = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    for batch in tqdm(loader, desc=desc, disable=not main, mininterval=2.0):
        outputs.extend(step(model, task.move_batch(batch, device, dtype)))
    model.train(was_training)
    return [o for part in distributed.all_gather_objects(outputs) for o in part]


def _some(ids: Sequence[Hashable], n: int = 5) -> str:
    shown = ", ".join(repr(i) for i in ids[:n])
    return f"[{shown}{', ...' if len(ids) > n else ''}]"


class PredictionSet(Mapping):
    """A split's predictions keyed by item id, in the split's order: every id of the split exactly
    once, checked here (the one place; a DataError names the first duplicated, foreign or missing ids).

    ``ids``: the split's ids (:attr:`EvalSplit.ids`); ``pairs``: ``(id, prediction)`` as gathered from
    every rank; ``what`` names the evaluation in errors."""

    def __init__(self, ids: Iterable[Hashable], pairs: Iterable[tuple[Hashable, Any]], what: str = "predictions"):
        ids = list(ids)
        expected: set[Hashable] = set()
        listed_twice: list[Hashable] = []
        for i in ids:
            if i in expected:
                listed_twice.append(i)
            expected.add(i)
        if listed_twice:
            raise DataError(f"{what}: the split lists id(s) {_some(listed_twice)} more than once")
        got: dict[Hashable, Any] = {}
        twice: list[Hashable] = []
        for key, value in pairs:
            if key in got:
                twice.append(key)
            got[key] = value
        if twice:
            raise DataError(
                f"{what}: {len(twice)} prediction(s) repeat an id, e.g. {_some(twice)}: each id is "
                "predicted exactly once"
            )
        foreign = [k for k in got if k not in expected]
        if foreign:
            raise DataError(
                f"{what}: {len(foreign)} prediction(s) for id(s) the split does not hold, e.g. {_some(foreign)}"
            )
        missing = [i for i in ids if i not in got]
        if missing:
            raise DataError(f"{what}: {len(missing)} of the {len(ids)} ids have no prediction, e.g. {_some(missing)}")
        self._by_id = {i: got[i] for i in ids}

    @property
    def ids(self) -> list[Hashable]:
        return list(self._by_id)

    def __getitem__(self, key: Hashable) -> Any:
        return self._by_id[key]

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)


def predict_split(
    model: nn.Module,
    dataset: EvalSplit,
    collate: Callable,
    batch_size: int,
    step: Callable[[nn.Module, dict[str, Any]], Iterable[tuple[Hashable, Any]]],
    desc: str = "eval",
    *,
    task,
    ids: Sequence[Hashable] | None = None,
) -> PredictionSet:
    """:func:`predict` over an evaluation split whose ``step`` yields ``(id, prediction)`` pairs: the
    :class:`PredictionSet` of ``dataset.ids`` (or ``ids``: a view's own, e.g. retrieval's captions)."""
    if ids is None:
        if "ids" in missing_members(dataset):
            raise ConfigError(f"{desc}: {type(dataset).__name__} has no ids to check the predictions against")
        ids = dataset.ids
    # an EvalSplit is a map-style Dataset as well (the protocol names only what the engine checks)
    return PredictionSet(ids, predict(model, cast(Dataset, dataset), collate, batch_size, step, desc, task=task), desc)


def load_trained(
    checkpoint: str | Path,
    out_dir: str | Path | None = None,
    edit: Callable | None = None,
    tasks: Sequence[str] | None = None,
):
    """(task, model, datasets) of a finished run, rebuilt from the config stored in its model file.

    ``tasks``: the registry names of the tasks the calling evaluator scores; the model file of a run of
    any other task is refused (ConfigError) before anything is built, instead of being scored by the
    wrong evaluator. None (the analysis tools): any task.

    The model runs in the run's training precision: DeepSpeed bf16 casts every weight, so an
    evaluation in fp32 would not reproduce the run's own numbers.
    """
    from omegaconf import OmegaConf

    from ..model_file import load_model_file, read_model_file
    from .registry import build_task
    from .trainer import compute_precision

    blob = read_model_file(checkpoint)
    if tasks is not None:
        stored_entry = blob.get("config")
        stored = stored_entry if isinstance(stored_entry, dict) else {}
        run_entry = stored.get("run")
        run = run_entry if isinstance(run_entry, dict) else {}
        name = run.get("task")
        if name not in tasks:
            what = f"a checkpoint of task {name!r}" if name else "a checkpoint without run.task in its stored config"
            raise ConfigError(
                f"{checkpoint} is {what}; this evaluator scores task(s) {', '.join(tasks)}: "
                "use the evaluate script of the run's own task"
            )
    cfg = OmegaConf.create(blob["config"])
    cfg.run.output_dir = str(out_dir or Path(checkpoint).parent)
    cfg.run.resume = "auto"
    if edit is not None:
        edit(cfg)
    task = build_task(cfg)
    task.build_preprocess()
    model = task.build_model()
    load_model_file(model, checkpoint)
    if compute_precision(task) == "bf16":
        cast_parameters(model, torch.bfloat16)  # as DeepSpeed's bf16 casts a training model
    Path(cfg.run.output_dir).mkdir(parents=True, exist_ok=True)
    return task, model, task.build_datasets()


def evaluate_run(
    run: str | Path,
    split: str = "test",
    out_dir: str | Path | None = None,
    *,
    options: Sequence[str] = (),
    tasks: Sequence[str] | None = None,
    edit: Callable | None = None,
    score: Callable[..., dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Evaluate ``split`` of a finished run (its folder or its ``model_final.pt``), rebuilt from the config
    stored in the model file (:func:`load_trained`): ``mmllm evaluate --run DIR`` and every task's
    ``evaluate.py --checkpoint``.

    ``options``: evaluation-time config overrides (``run.rerank_score=albef``), applied after ``edit(cfg)``;
    ``tasks``: the tasks the caller scores (others refused, see :func:`load_trained`); ``score(task, model,
    dataset, split, out_dir)``: a script's own report (default: ``task.evaluate``, the metrics a run records
    as ``<split>_<metric>``). Result files go to ``out_dir`` (default: the run's folder)."""
    from .trainer import FINAL_MODEL

    path = Path(run)
    checkpoint = path / FINAL_MODEL if path.is_dir() else path
    if not checkpoint.is_file():
        raise ConfigError(f"{run}: no {FINAL_MODEL} there: give a finished run's folder or its model file")
    bad = [o for o in options if not isinstance(o, str) or "=" not in o]
    if bad:
        raise ConfigError(f"option {bad[0]!r} must look like section.key=value")

    def edits(cfg):
        if edit is not None:
            edit(cfg)
        if options:
            from omegaconf import OmegaConf
            from omegaconf.errors import OmegaConfBaseException

            try:
                cfg.merge_with(OmegaConf.from_dotlist(list(options)))
            except OmegaConfBaseException as exc:
                raise ConfigError(f"bad option for {checkpoint}: {exc}") from exc

    task, model, datasets = load_trained(checkpoint, out_dir, edit=edits, tasks=tasks)
    if split not in datasets:
        raise ConfigError(
            f"split {split!r} is not among the splits of {checkpoint}'s config "
            f"(datasets.{task.dataset_key}: {sorted(datasets)})"
        )
    dataset = eval_split(datasets[split], f"split {split!r} of task {task.name!r}")
    out = Path(task.run.output_dir)
    if score is None:
        return task.evaluate(model, dataset, split, out)
    return score(task, model, dataset, split, out)
