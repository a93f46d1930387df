"""Parquet prompt files for `trainer.data`: checked and streamed a row group at a time, read back by row number.

`parquet_rows` feeds the load-time pass of `trainer.data.load_prompts` (which checks, tokenises and keeps the row
numbers of the usable rows); `ParquetItems` reads those rows back on access, keeping the last few row groups decoded,
so memory is bounded by the largest row group.
"""

from __future__ import annotations

import bisect
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from trainer.data_formats import DataSource, Item, Row

__all__ = ["ParquetItems", "import_pyarrow", "parquet_rows"]

_CACHED_ROW_GROUPS = 4
"""Parquet row groups kept decoded (as Arrow columns) for random access."""


def import_pyarrow(path: Path) -> Any:
    """The `pyarrow.parquet` module; a clear error without it."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError(f"data.source: reading {path} needs pyarrow: pip install pyarrow") from exc
    return pq


def _open_parquet(pq: Any, path: Path, data_cfg: DataSource) -> Any:
    """The `ParquetFile`, after checking it is readable and has both columns."""
    try:
        file = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends for a corrupt file
        raise ValueError(f"{path}: not a readable Parquet file: {type(exc).__name__}: {exc}") from exc
    names = file.schema_arrow.names
    for key, name in ((data_cfg.prompt_key, "data.prompt_key"), (data_cfg.answer_key, "data.answer_key")):
        if key not in names:
            raise ValueError(f"{path}: no column {key!r} ({name}); the columns are: {', '.join(names)}")
    return file


def _columns(file: Any, data_cfg: DataSource) -> list[str]:
    """The columns to read: prompt, answer, and the optional difficulty column (`difficulty_key`) when it exists."""
    columns = [data_cfg.prompt_key, data_cfg.answer_key]
    level = getattr(data_cfg, "difficulty_key", None)
    return [*columns, level] if level and level in file.schema_arrow.names else columns


def read_row_group(file: Any, path: Path, g: int, columns: list[str], *, first_row: int) -> Any:
    """Row group `g` as an Arrow table; a damaged page is a ValueError naming the file, the group and its rows
    (pyarrow's own message is a couple of lines of Thrift or decompression detail)."""
    try:
        return file.read_row_group(g, columns=columns)
    except Exception as exc:  # OSError / ArrowInvalid from a corrupt page or a bad compression block
        detail = " ".join(str(exc).split())[:160]
        rows = file.metadata.row_group(g).num_rows
        raise ValueError(
            f"{path}: row group {g} (rows {first_row}-{first_row + rows - 1}) does not read: "
            f"{type(exc).__name__}: {detail}"
        ) from exc


def parquet_rows(pq: Any, path: Path, data_cfg: DataSource) -> Iterator[Row]:
    """(label, prompt, answer, row number, difficulty or None) of each row, one row group at a time."""
    file = _open_parquet(pq, path, data_cfg)
    columns = _columns(file, data_cfg)
    i = 0
    for g in range(file.num_row_groups):
        table = read_row_group(file, path, g, columns, first_row=i)
        levels = table.column(2).to_pylist() if len(columns) == 3 else [None] * table.num_rows
        for prompt, answer, level in zip(table.column(0).to_pylist(), table.column(1).to_pylist(), levels):
            yield f"row {i}", prompt, answer, i, level
            i += 1


class ParquetItems(Sequence):
    """The usable rows of a Parquet file, read on access a row group at a time (the last few kept as Arrow).

    `to_item` turns a row `(label, prompt, answer, difficulty)` into the item (checked and tokenised again by
    `trainer.data`)."""

    def __init__(
        self,
        pq: Any,
        path: Path,
        rows: array,
        data_cfg: DataSource,
        to_item: Callable[[tuple[str, Any, Any, Any]], Item],
    ) -> None:
        self.path, self.rows, self.data_cfg, self.to_item = path, rows, data_cfg, to_item
        self.file = _open_parquet(pq, path, data_cfg)
        self.columns = _columns(self.file, data_cfg)
        meta = self.file.metadata
        self.group_starts = [0]
        for g in range(meta.num_row_groups):
            self.group_starts.append(self.group_starts[-1] + meta.row_group(g).num_rows)
        self.cache: OrderedDict[int, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Item:  # type: ignore[override]
        row = self.rows[i]
        g = bisect.bisect_right(self.group_starts, row) - 1
        if g not in self.cache:
            self.cache[g] = self.file.read_row_group(g, columns=self.columns)
            while len(self.cache) > _CACHED_ROW_GROUPS:
                self.cache.popitem(last=False)
        self.cache.move_to_end(g)
        table, j = self.cache[g], row - self.group_starts[g]
        prompt, answer = table.column(0)[j].as_py(), table.column(1)[j].as_py()
        level = table.column(2)[j].as_py() if len(self.columns) == 3 else None
        return self.to_item((f"row {row}", prompt, answer, level))
