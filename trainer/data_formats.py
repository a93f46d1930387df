"""The prompt-file formats the loaders read, by suffix, and the row and item shapes the loaders share.

`trainer.data` (JSON lines, JSON arrays, the synthetic task) and `trainer.data_parquet` both import this module and
never each other's names back; `trainer.config` checks `data.source` and `eval.source` against `DATA_SUFFIXES`, so
the config accepts exactly the files the loaders read.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DATA_SUFFIXES", "JSON_SUFFIXES", "PARQUET_SUFFIXES", "SUFFIX_TEXT", "Item", "Row", "difficulty_key"]

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


def difficulty_key(data_cfg: Any) -> str | None:
    """The difficulty column the config names (`difficulty_key`), None when it names none."""
    return getattr(data_cfg, "difficulty_key", None) or None
