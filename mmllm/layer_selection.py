"""Which of the LLM's decoder layers the block takes: a user's spec ("last", -2, [28, 29], "-2:",
"middle") as layer indices.

This is the LLM *depth* the block comes from (the paper's Fig. 2 varies it). It is not the
paper's head/middle/tail ablation (its Table D), which is *where in the visual encoder* the
block is inserted: that is the host model's choice, not this module's.
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import LayerIndexError

LayerSpec = int | str | Sequence[int] | range

_NAMED = {
    "last": lambda n: [n - 1],
    "first": lambda n: [0],
    "middle": lambda n: [n // 2],
}


def _check(index: int, num_layers: int) -> int:
    if isinstance(index, bool) or not isinstance(index, int):
        raise LayerIndexError(f"layer index must be an int, got {index!r}")
    if not -num_layers <= index < num_layers:
        raise LayerIndexError(
            f"layer index {index} out of range: the LLM has {num_layers} layers "
            f"(valid: 0..{num_layers - 1} or -{num_layers}..-1)"
        )
    return index % num_layers


def resolve_layers(spec: LayerSpec, num_layers: int) -> list[int]:
    """Sorted, unique, non-negative layer indices, in the order the block applies them.

    Accepts an int (negative counts from the end), a list/range of ints, the names
    ``last`` (the paper's default: the LLM's last layer), ``first`` and ``middle``
    (layer ``n // 2``), and Python slices as strings (``"-2:"`` = the last two layers).
    """
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in _NAMED:
            return _NAMED[text](num_layers)
        if text in ("head", "tail"):
            raise LayerIndexError(
                f"layer spec {spec!r}: head/middle/tail in the paper (Table D) is where the block sits in the "
                "visual encoder, not which LLM layer it is; for LLM layers use 'first', 'middle', 'last' or an int"
            )
        if ":" in text:
            try:
                parts = [int(p) if p.strip() else None for p in text.split(":")]
            except ValueError:
                raise LayerIndexError(f"bad layer slice {spec!r}") from None
            indices = list(range(num_layers))[slice(*parts)]
            if not indices:
                raise LayerIndexError(f"layer slice {spec!r} selects no layer of {num_layers}")
            return indices
        try:
            return [_check(int(text), num_layers)]
        except ValueError:
            raise LayerIndexError(
                f"unknown layer spec {spec!r}: use an int, a list, a slice like '-2:', or one of {sorted(_NAMED)}"
            ) from None
    if isinstance(spec, int) and not isinstance(spec, bool):
        return [_check(spec, num_layers)]
    if isinstance(spec, (Sequence, range)) and not isinstance(spec, str):  # (str: above)
        indices = [_check(i, num_layers) for i in spec]
        if not indices:
            raise LayerIndexError("empty layer list")
        if len(set(indices)) != len(indices):
            raise LayerIndexError(f"layer list {list(spec)} repeats a layer")
        return sorted(indices)
    raise LayerIndexError(f"unsupported layer spec {spec!r}")
