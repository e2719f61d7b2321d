"""Benchmarks and models apart: what a benchmark owns, what a model of it implements.

A *benchmark* is data and judgement: readers of its real formats, its embedded-data preparers, the
evaluation splits, the evaluator writing the result files, the main metric and its direction. It
knows no model. A *model* of a benchmark is a :class:`BenchmarkModel`: its typed ``model`` section,
its preprocessing, the ``nn.Module``, how a batch is made, the training loss and one prediction per
evaluated item (:meth:`BenchmarkModel.predict`). A run is benchmark × model (× block kind): the
pair is an ordinary :class:`~mmllm.engine.task.Task` to the engine, the sweeps and LAVIS, and its
data section is the benchmark's own, ``datasets.<benchmark>``, written once for every model.

(LAVIS has the same axes: a task + dataset builder per benchmark, a model class per architecture.)

Register a benchmark with ``@registered_benchmark(...)`` and a model with ``@registered_model(...)``
(:mod:`mmllm.engine.registry`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, cast

from torch import nn
from torch.utils.data import Dataset

from ..errors import ConfigError
from ..schema import DataSection
from .evaluation import PredictionSet, predict_split
from .preprocess import Preprocess
from .run_config import RunConfig
from .splits import EvalSplit
from .task import Task


class Benchmark(ABC):
    """One benchmark's data and evaluator, built from its typed ``datasets.<key>`` section.

    Subclasses set ``DataOptions`` and implement :meth:`build_datasets` (items every model of the
    benchmark can read) and :meth:`score` (metrics of one prediction set; result files written)."""

    DataOptions: ClassVar[type[DataSection]] = DataSection
    # the class's registry entry (set by @registered_benchmark on the class itself, never inherited)
    benchmark_entry: ClassVar[Any] = None

    def __init__(self, data: DataSection, run: RunConfig, section: str):
        self.data = data
        self.run = run
        self.section = section  # "datasets.<key>", for error messages

    @property
    def name(self) -> str:
        entry = type(self).__dict__.get("benchmark_entry")
        return entry.name if entry is not None else type(self).__name__

    def build_datasets(self, preprocess: Preprocess) -> dict[str, Dataset]:
        """The benchmark's splits as items every model of it reads (evaluation splits follow
        :class:`~mmllm.engine.splits.EvalSplit`). Benchmarks whose models make their own items need not."""
        raise ConfigError(f"benchmark {self.name!r} builds no shared datasets: its models build their own")

    @abstractmethod
    def score(self, predictions: PredictionSet, dataset: Dataset, split: str, out_dir: Path) -> dict[str, float]:
        """Metrics of ``predictions`` (every item of ``dataset`` exactly once); result files written by rank 0."""


class BenchmarkModel(Task):
    """A model of one benchmark: the model side of a :class:`Task`; data and evaluation are the benchmark's.

    Subclasses set ``benchmark`` (the Benchmark class) and ``ModelOptions``, and implement
    ``build_preprocess``, ``build_model``, ``collate``, ``training_loss`` and :meth:`predict`."""

    benchmark: ClassVar[type[Benchmark]]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        bench = cls.__dict__.get("benchmark")
        if bench is not None and "DataOptions" not in cls.__dict__:
            cls.DataOptions = bench.DataOptions  # one data section for every model of the benchmark
        bench = getattr(cls, "benchmark", None)
        if bench is not None and not issubclass(cls.DataOptions, bench.DataOptions):
            raise TypeError(
                f"{cls.__name__}.DataOptions must extend {bench.__name__}.DataOptions (the benchmark's "
                "keys stay readable by every model; add only the model's own answer-side keys)"
            )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bench = self.benchmark(self.data_cfg, self.run, f"datasets.{self.dataset_key}")

    def build_datasets(self) -> dict[str, Dataset]:
        """The benchmark's items (a model that needs items of its own overrides this)."""
        Path(self.run.output_dir).mkdir(parents=True, exist_ok=True)
        return self.bench.build_datasets(self.preprocess)

    def predict(self, model: nn.Module, batch: dict[str, Any]) -> Iterable[tuple[Any, Any]]:
        """``(item id, prediction)`` for every item of ``batch``, in the benchmark's prediction form. (A model
        whose benchmark scores something else, retrieval's score matrices, overrides :meth:`evaluate`.)"""
        raise ConfigError(
            f"{type(self).__name__} predicts no items: implement predict(model, batch), or "
            "evaluate() where the benchmark scores whole splits"
        )

    def predictions(self, model: nn.Module, dataset: Dataset, desc: str = "eval") -> PredictionSet:
        """:meth:`predict` over an evaluation split, every item exactly once (the engine's sharding)."""
        split = cast(EvalSplit, dataset)  # an evaluation split (the trainer checked it: mmllm.engine.splits)
        return predict_split(model, split, self.collate, self.run.batch_size_eval, self.predict, desc=desc, task=self)

    def evaluate(self, model: nn.Module, dataset: Dataset, split: str, out_dir: Path) -> dict[str, float]:
        return self.bench.score(self.predictions(model, dataset, f"eval {split}"), dataset, split, Path(out_dir))
