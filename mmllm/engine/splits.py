"""The contract of an evaluation split: what the trainer, :func:`~mmllm.engine.evaluation.predict_split`
and ``mmllm evaluate`` rely on, declared once instead of probed with ``hasattr``.

An evaluation split is a dataset with

* ``ids``: the items' ids, in item order, each once (question ids, image paths, video ids, ...): the
  ids a :class:`~mmllm.engine.evaluation.PredictionSet` must cover exactly once;
* ``head(n)``: the same kind of split cut to its first ``n`` items (``run.max_eval_samples``), each
  item scored against its own references; a split whose items depend on each other says what
  ``first n`` means (retrieval: the first ``n`` images with all their captions);
* ``len()``: the number of items (``len(split) == len(split.ids)``).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Protocol, runtime_checkable

from ..errors import ConfigError

MEMBERS = ("ids", "head", "__len__")


@runtime_checkable
class EvalSplit(Protocol):
    """An evaluation split (see the module docstring); ``isinstance(x, EvalSplit)`` checks the members."""

    @property
    def ids(self) -> Sequence[Hashable]: ...

    def head(self, n: int) -> EvalSplit: ...

    def __len__(self) -> int: ...


def missing_members(dataset: object) -> list[str]:
    """The members of :class:`EvalSplit` that ``dataset`` lacks (empty: it is one)."""
    return [m for m in MEMBERS if not hasattr(dataset, m)]


def eval_split(dataset: object, what: str) -> EvalSplit:
    """``dataset`` itself when it is an :class:`EvalSplit`, else a ConfigError naming what it lacks."""
    lacking = missing_members(dataset)
    if lacking:
        raise ConfigError(
            f"{what} ({type(dataset).__name__}) is not an evaluation split: it has no "
            f"{', '.join('head(n)' if m == 'head' else 'len()' if m == '__len__' else m for m in lacking)}"
        )
    return dataset  # type: ignore[return-value]
