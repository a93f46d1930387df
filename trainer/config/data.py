"""The `[data]` section: the training prompts and their reference answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trainer.config.base import _Section
from trainer.data_formats import DATA_SUFFIXES, SUFFIX_TEXT
from trainer.tasks import NAMES as BUILTIN_TASKS
from trainer.tasks import is_builtin as is_builtin_task

__all__ = ["BUILTIN_TEXT", "DataConfig"]

BUILTIN_TEXT = ", ".join(repr(t) for t in BUILTIN_TASKS)
"""The built-in task names, quoted, for messages."""


@dataclass
class DataConfig(_Section):
    """Training prompts and their reference answers."""

    SECTION = "data"
    source: str = "synthetic"
    """A built-in task ("synthetic": the digit sum, the quick default; "chain": the running sum of the full learning
    comparison, `trainer.tasks`) or a path to a .jsonl / .json / .parquet / .pq file with prompt and answer
    columns (a .json file is JSON lines, or one JSON array when it starts with `[`)."""
    prompt_key: str = "prompt"
    """Column holding the prompt text."""
    answer_key: str = "answer"
    """Column holding the reference answer."""
    max_prompt_tokens: int = 64
    """Prompts longer than this (after the chat template) are skipped or an error, per `on_long_prompt`."""
    on_long_prompt: Literal["skip", "error"] = "skip"
    """"skip": drop and count long prompts; "error": stop, naming file and row."""
    apply_chat_template: bool = True
    """Wrap each prompt in the tokenizer's chat template when it has one."""

    def validate(self) -> None:
        ok = is_builtin_task(self.source) or self.source.lower().endswith(DATA_SUFFIXES)
        self._require(ok, "source", f"must be a built-in task ({BUILTIN_TEXT}) or a path to a {SUFFIX_TEXT} file")
        self._require(bool(self.prompt_key), "prompt_key", "must not be empty")
        self._require(bool(self.answer_key), "answer_key", "must not be empty")
        self._at_least(1, "max_prompt_tokens")
