"""Hub data sets where users keep them: a hub id (downloaded into, or read back from, the ``datasets``
cache) or a local folder holding the same parquet/jsonl files, read as rows for the benchmarks' adapters.

The adapters (a benchmark's ``layout``) map columns to the records the file readers produce; this module
only opens a split, checks it and hands out rows and images. Images are never decoded here: a map-style
split lends each record a :class:`RowImage` (the row is decoded when an item is read), a streamed split an
:class:`EncodedImage` (the encoded bytes as they arrived, the split itself never stored).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from PIL import Image
from pydantic import Field

from ..errors import DataError
from ..schema import Section

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset

HubTable: TypeAlias = "Dataset | IterableDataset"  # a split as datasets.load_dataset gives it


class HubSplitSpec(Section):
    """One split of a hub data set (``datasets.<benchmark>.splits.<name>.hub``)."""

    path: str = Field(description="hub id (lmms-lab/VQAv2) or a local folder with the same parquet/jsonl files")
    split: str = Field(description="the hub split (validation, test, train+restval, ...)")
    layout: str = Field(description="the column layout (each benchmark names its own, e.g. vqav2)")
    name: str | None = Field(None, description="the hub configuration (subset), if the data set has several")
    revision: str | None = Field(None, description="a branch, tag or commit (e.g. refs/convert/parquet)")
    streaming: bool = Field(False, description="read rows as they arrive instead of preparing the whole split")
    limit: int | None = Field(None, gt=0, description="only the first this many rows (after `where`)")
    where: dict[str, str] = Field(
        default_factory=dict, description="keep rows whose column equals the value (Karpathy's split column)"
    )
    cache_dir: str | None = Field(None, description="the datasets cache to use (default: HF_DATASETS_CACHE)")

    def describe(self) -> str:
        """The split as error messages name it."""
        where = "".join(f", {k}={v}" for k, v in self.where.items())
        return f"hub data set {self.path!r} (split {self.split!r}{where})"


def load_hub_split(
    path: str,
    split: str,
    *,
    name: str | None = None,
    streaming: bool = False,
    revision: str | None = None,
    cache_dir: str | None = None,
) -> HubTable:
    """``datasets.load_dataset`` of one split, its failures as DataError (offline and not cached, no such
    split, no data files) so a config mistake reads as one."""
    import datasets

    try:
        return datasets.load_dataset(
            path, name, split=split, streaming=streaming, revision=revision, cache_dir=cache_dir
        )
    except (FileNotFoundError, ConnectionError, ValueError, OSError) as exc:
        if "corresponds to no data" in str(exc):  # datasets' words for a split of zero rows
            raise DataError(f"hub data set {path!r} (split {split!r}) has no rows") from exc
        raise DataError(f"hub data set {path!r} (split {split!r}) cannot be loaded: {exc}") from exc


def open_hub_split(spec: HubSplitSpec, required: Sequence[str], image_column: str | None = None) -> HubTable:
    """The split of ``spec`` with its ``where`` filter and ``limit`` applied, checked to have the
    ``required`` columns (and ``image_column``) and at least one row. A stream's images stay encoded
    (cast before filtering, which would decode them otherwise)."""
    import datasets

    table = load_hub_split(
        spec.path,
        spec.split,
        name=spec.name,
        streaming=spec.streaming,
        revision=spec.revision,
        cache_dir=spec.cache_dir,
    )
    require_columns(table, [*required, *([image_column] if image_column else []), *spec.where], spec.describe())
    if image_column and is_streamed(table):
        table = table.cast_column(image_column, datasets.Image(decode=False))
    for column, value in spec.where.items():
        table = table.filter(lambda v, want=value: str(v) == want, input_columns=column)
    if spec.limit is not None:
        table = table.take(spec.limit) if is_streamed(table) else table.select(range(min(spec.limit, len(table))))
    if not has_rows(table):
        raise DataError(f"{spec.describe()} has no rows")
    return table


def is_streamed(table: HubTable) -> bool:
    import datasets

    return isinstance(table, datasets.IterableDataset)


def column_names(table: HubTable) -> list[str]:
    """The split's columns (a stream whose schema is unknown until read: those of its first row)."""
    if table.column_names is not None:
        return list(table.column_names)
    first = next(iter(table), None)
    return list(first) if first is not None else []


def require_columns(table: HubTable, columns: Sequence[str], what: str) -> None:
    present = column_names(table)
    missing = [c for c in dict.fromkeys(columns) if c not in present]
    if missing:
        raise DataError(f"{what} lacks column(s) {missing} (it has {present})")


def has_rows(table: HubTable) -> bool:
    """Whether the split has a row, reading at most one of a stream."""
    if is_streamed(table):
        return next(iter(table.take(1)), None) is not None
    return len(table) > 0


def iter_rows(table: HubTable, columns: Sequence[str], image_column: str | None, what: str) -> Iterator[dict[str, Any]]:
    """The split's rows (of :func:`open_hub_split`), only ``columns`` of each, plus under ``image`` an
    :class:`ImageSource` of ``image_column``: no image is decoded (a map-style split does not even read them)."""
    if not is_streamed(table):
        images = table.select_columns([image_column]) if image_column else None
        for row_index, row in enumerate(table.select_columns(list(columns))):
            if image_column:
                row["image"] = RowImage(images, row_index, image_column, what)
            yield row
        return
    for row in table.select_columns([*columns, *([image_column] if image_column else [])]):
        if image_column:
            row["image"] = encoded_image(row.pop(image_column), what)
        yield row


@dataclass(frozen=True)
class RowImage:
    """The image of one row of a map-style split, decoded by ``datasets`` when an item is read."""

    table: Any  # the split's image column alone (a datasets.Dataset)
    row: int
    column: str
    what: str

    def open(self) -> Image.Image:
        image = self.table[self.row][self.column]
        if not isinstance(image, Image.Image):
            raise DataError(f"{self}: column {self.column!r} holds {type(image).__name__}, not an image")
        return image

    def __str__(self) -> str:
        return f"{self.what} row {self.row}"


@dataclass(frozen=True)
class EncodedImage:
    """One streamed row's image as it arrived (encoded bytes, or a path the data set points at)."""

    data: bytes | None
    path: str | None
    what: str

    def open(self) -> Image.Image:
        if self.data is not None:
            return Image.open(io.BytesIO(self.data))
        if self.path is not None:
            return Image.open(self.path)
        raise DataError(f"{self}: the row has neither image bytes nor an image path")

    def __str__(self) -> str:
        return f"{self.what} image {self.path or '(embedded)'}"


def encoded_image(value: Any, what: str) -> EncodedImage:
    """An undecoded ``Image`` value ({bytes, path}) as an :class:`EncodedImage`."""
    if not isinstance(value, dict):
        raise DataError(f"{what}: the image column holds {type(value).__name__}, not an image")
    return EncodedImage(value.get("bytes"), value.get("path"), what)
