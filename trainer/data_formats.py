"""The prompt-file formats the loaders read, by suffix, and the row and item shapes the loaders share.

`trainer.data` (JSON lines, JSON arrays, the synthetic task) and `trainer.data_parquet` both import this module and
never each other's names back; `trainer.config` checks `data.source` and `eval.source` against `DATA_SUFFIXES`, so
the config accepts exactly the files the loaders read.
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = [
    "DATA_SUFFIXES",
    "JSON_SUFFIXES",
    "PARQUET_SUFFIXES",
    "SUFFIX_TEXT",
    "DataSource",
    "Item",
    "Row",
    "difficulty_key",
]

JSON_SUFFIXES = (".jsonl", ".json")
"""JSON lines; a `.json` file that starts with `[` is one JSON array instead."""
PARQUET_SUFFIXES = (".parquet", ".pq")
DATA_SUFFIXES = JSON_SUFFIXES + PARQUET_SUFFIXES
"""Every file type a `data.source` or `eval.source` entry may name (lower case; the check ignores case)."""
SUFFIX_TEXT = " / ".join(DATA_SUFFIXES)
"""`.jsonl / .json / .parquet / .pq`, for the config's messages."""

Item = dict[str, Any]
"""A loaded prompt: `{"prompt": str, "prompt_ids": list[int], "answer": str}` (plus `"difficulty"`)."""
Row = tuple[str, Any, Any, int, Any]
"""(row label for messages, prompt, answer, locator: byte offset in a JSONL file, row number in a Parquet file,
difficulty: the `difficulty_key` value, None when the config names no such column or the row lacks it)."""


class DataSource(Protocol):
    """What the prompt loaders (`trainer.data`, `trainer.data_json`, `trainer.data_parquet`) read of a data config,
    by attribute: `trainer.config.DataConfig`, or the evaluation's `SimpleNamespace` view of one source
    (`trainer.eval._data_view`). The view also sets `synthetic_size`, `synthetic_split` and `difficulty_key`, which
    the loaders read with `getattr` and a default (so `DataConfig`, which has none of them, is one too). Read-only
    properties, so that a narrower field type (`DataConfig.on_long_prompt`'s `Literal`) still fits."""

    @property
    def source(self) -> str: ...
    @property
    def prompt_key(self) -> str: ...
    @property
    def answer_key(self) -> str: ...
    @property
    def max_prompt_tokens(self) -> int: ...
    @property
    def on_long_prompt(self) -> str: ...
    @property
    def apply_chat_template(self) -> bool: ...


def difficulty_key(data_cfg: DataSource) -> str | None:
    """The difficulty column the config names (`difficulty_key`), None when it names none."""
    return getattr(data_cfg, "difficulty_key", None) or None
