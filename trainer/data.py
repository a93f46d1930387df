"""Prompt datasets (JSONL, Parquet or the synthetic task), streamed from disk through a byte-offset index, and a
resumable per-rank sampler.

`load_prompts(cfg.data, tokenizer)` returns a `Prompts` sequence whose items are
`{"prompt": str, "prompt_ids": list[int], "answer": str}`, plus `"difficulty"` (the row's value of the
`difficulty_key` column: an int, float or str, None where the row has none) when the config names such a column;
`PromptSampler` (`trainer.sampler`, re-exported here) hands each rank its share of every chunk of prompts, from a
permutation reshuffled per epoch, and can be saved and resumed exactly.

Memory: a JSONL file is never held in memory. One pass at load time reads it line by line, validates every row
(UTF-8, JSON, keys, types) and tokenises it in batches to apply `max_prompt_tokens`, then forgets it, keeping only
the byte offset of each usable row (8 bytes a row: 8 MB for a million prompts). `prompts[i]` seeks to row `i`,
reads, decodes and tokenises it again (tens of microseconds; a step reads a few dozen rows). So every error the
eager loader raised (bad row, too long prompt with `on_long_prompt = "error"`, nothing left) still comes before
training starts, `len(prompts)` is the number of usable rows and `prompts.skipped` is exact; the price is one
tokenisation of the whole file at start-up (27 s for a million short prompts with the built-in tokenizer on two
CPU cores). Parquet (`trainer.data_parquet`) is streamed the same way, a row group at a time, and read back a row
group at a time (the last few kept), so memory is bounded by the largest row group: write big files with row groups
of at most ~100k rows. A JSON array (`.json` starting with `[`) and the synthetic task are small by nature and are
held in a list.

The data config is read by attribute (duck typing; `trainer.data_formats.DataSource`): `source` (a built-in task of
`trainer.tasks`, "synthetic" or "chain", or a path to .jsonl / .json / .parquet / .pq), `prompt_key`, `answer_key`,
`max_prompt_tokens`, `on_long_prompt` ("skip" | "error"), `apply_chat_template`, and optionally `synthetic_size`,
`synthetic_split` ("train", the default, or "eval": the task's held-out split, see
`trainer.tasks.synthetic.make_dataset`) and `difficulty_key` (a column name; unset or "": no difficulty). The training
data config (`DataConfig`) sets none of the optional ones; the evaluation (`trainer.eval`) sets them.
"""

from __future__ import annotations

import logging
import math
import os
from array import array
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from trainer import tasks
from trainer.data_formats import (
    DATA_SUFFIXES,
    JSON_SUFFIXES,
    PARQUET_SUFFIXES,
    DataSource,
    Item,
    Row,
    difficulty_key,
)
from trainer.data_json import json_array_rows, jsonl_rows, parse_line, pick, starts_with_bracket
from trainer.data_parquet import ParquetItems, import_pyarrow, parquet_rows
from trainer.sampler import PromptSampler

__all__ = [
    "SYNTHETIC_SIZE",
    "PromptSampler",
    "Prompts",
    "difficulty_key",
    "encode_prompt",
    "encode_prompts",
    "load_prompts",
]

log = logging.getLogger(__name__)

SYNTHETIC_SIZE = 4096
"""Items drawn from the synthetic task when the config does not say (`data.synthetic_size`)."""
_BATCH = 4096
"""Rows tokenised together in the load-time pass: big enough for the fast tokenizers' batch path, small enough that
the batch's Python objects stay a few MB."""


class Prompts(Sequence):
    """The loaded prompts (a sequence of item dicts, read from disk on access for files) plus where they came from
    and how many were skipped."""

    def __init__(self, items: Sequence[Item], *, source: str, skipped: int) -> None:
        self._items = items
        self.source = source
        self.skipped = skipped
        """Rows dropped for being longer than `data.max_prompt_tokens` (with `on_long_prompt = "skip"`)."""

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self._items[j] for j in range(len(self))[i]]
        return self._items[i]

    def __repr__(self) -> str:
        return f"Prompts({len(self)} items from {self.source!r}, {self.skipped} skipped)"


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str], *, chat_template: bool) -> list[list[int]]:
    """Token ids of each prompt: through the tokenizer's chat template (as a user turn, with the generation prompt)
    when `chat_template` is true and the tokenizer has one, else the plain text with the tokenizer's usual specials.
    One batched tokenizer call (the load-time pass and `encode_prompt` share it, so both give the same ids)."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        try:
            texts = [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
                )
                for p in prompts
            ]
        except Exception as exc:  # jinja2's TemplateError (a template that does not parse or raises), or its type
            if "jinja2" not in type(exc).__module__:
                raise
            where = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
            raise ValueError(
                f"{where}: its chat template does not render ({type(exc).__name__}: {exc}); fix chat_template in "
                "tokenizer_config.json, or set data.apply_chat_template=false"
            ) from exc
        return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return [list(ids) for ids in tokenizer(prompts)["input_ids"]]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, *, chat_template: bool) -> list[int]:
    """Token ids of one prompt (see `encode_prompts`)."""
    return encode_prompts(tokenizer, [prompt], chat_template=chat_template)[0]


def load_prompts(data_cfg: DataSource, tokenizer: PreTrainedTokenizerBase, *, seed: int = 0) -> Prompts:
    """The prompts of `data_cfg.source`, tokenised, in file order (the synthetic task: drawn with `seed`).

    Files are validated and indexed here in one pass and read row by row on access (see the module docstring), so
    the errors below are raised by this call, before any training.

    Raises:
        FileNotFoundError: the source file does not exist.
        ValueError: an unknown file type, a row that is not an object or lacks a key, a value of the wrong type,
            bytes that are not UTF-8, a too long prompt with `on_long_prompt = "error"`, or no prompt left; the
            message names the file and the row (1-based line for JSONL, 0-based row for Parquet). Reading an item
            of a file that changed after loading is also a ValueError.
        ImportError: a Parquet source without pyarrow installed.
    """
    source = str(data_cfg.source)
    limit = int(data_cfg.max_prompt_tokens)
    if data_cfg.on_long_prompt not in ("skip", "error"):
        raise ValueError(f"data.on_long_prompt: {data_cfg.on_long_prompt!r} is not allowed; allowed: 'skip', 'error'")
    if tasks.is_builtin(source):
        size = int(getattr(data_cfg, "synthetic_size", SYNTHETIC_SIZE))
        split = str(getattr(data_cfg, "synthetic_split", "train"))
        key = difficulty_key(data_cfg)
        rows: Iterator[Row] = (
            (f"{source} item {i}", item["prompt"], item["answer"], i, item.get(key) if key else None)
            for i, item in enumerate(tasks.get(source).make_dataset(size, seed, split=split))
        )
        return _eager(source, rows, tokenizer, data_cfg)
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"data.source: {path} does not exist or is not a file")
    suffix = path.suffix.lower()
    if suffix in JSON_SUFFIXES:
        if suffix == ".json" and starts_with_bracket(path):
            return _eager(str(path), json_array_rows(path, data_cfg), tokenizer, data_cfg)
        stamp = _stamp(path)
        offsets = array("q")
        digest = [0]  # the file's CRC-32, summed while it is read: a later `touch` is told from an edit by it
        skipped, notes = _scan(
            str(path),
            jsonl_rows(path, data_cfg, digest),
            tokenizer,
            data_cfg,
            lambda loc, _: offsets.append(loc),
            keep_items=False,
        )
        if _stamp(path) != stamp:
            raise ValueError(f"{path}: changed while it was being loaded; load it again")
        items: Sequence[Item] = _JsonlItems(path, offsets, stamp, tokenizer, data_cfg, crc=digest[0])
    elif suffix in PARQUET_SUFFIXES:
        pq = import_pyarrow(path)
        rows_kept = array("q")
        skipped, notes = _scan(
            str(path),
            parquet_rows(pq, path, data_cfg),
            tokenizer,
            data_cfg,
            lambda loc, _: rows_kept.append(loc),
            keep_items=False,
        )
        to_item = partial(_item, str(path), tokenizer=tokenizer, data_cfg=data_cfg)
        items = ParquetItems(pq, path, rows_kept, data_cfg, to_item)
    else:
        raise ValueError(
            f"data.source: {path} has an unknown type {suffix!r}; allowed: 'synthetic', " + ", ".join(DATA_SUFFIXES)
        )
    return _finish(str(path), items, skipped, limit, notes)


def _eager(where: str, rows: Iterator[Row], tokenizer: PreTrainedTokenizerBase, data_cfg: DataSource) -> Prompts:
    """Small sources (the synthetic task, a JSON array) held in a list."""
    items: list[Item] = []
    skipped, notes = _scan(where, rows, tokenizer, data_cfg, lambda _, item: items.append(item), keep_items=True)
    return _finish(where, items, skipped, int(data_cfg.max_prompt_tokens), notes)


_NOTED_ROWS = 5
"""Rows skipped without tokenising (`_far_too_long`) that are named one by one; the rest are counted in one line."""


def _finish(where: str, items: Sequence[Item], skipped: int, limit: int, notes: list[str]) -> Prompts:
    """The loaded prompts, after the warnings the load deferred (`notes`: rows skipped for their characters) and the
    count of the skipped ones; with no prompt left, only the error, in one line."""
    if skipped and len(items):  # with none left, the error below says it all, in one line
        for note in notes[:_NOTED_ROWS]:
            log.warning("%s: skipped without tokenising it", note)
        if len(notes) > _NOTED_ROWS:
            log.warning("%s: %d more prompts skipped without tokenising them", where, len(notes) - _NOTED_ROWS)
        log.warning("%s: skipped %d prompts longer than data.max_prompt_tokens=%d", where, skipped, limit)
    if not len(items):
        why = f" (all {skipped} were longer than data.max_prompt_tokens={limit})" if skipped else ""
        raise ValueError(f"data.source: {where} holds no prompts{why}")
    return Prompts(items, source=where, skipped=skipped)


def _scan(
    where: str,
    rows: Iterator[Row],
    tokenizer: PreTrainedTokenizerBase,
    data_cfg: DataSource,
    keep: Callable[[int, Item | None], None],
    *,
    keep_items: bool,
) -> tuple[int, list[str]]:
    """Checks and tokenises every row (in batches), calls `keep(locator, item)` for each usable one in order, and
    returns how many were skipped as too long (or raises for one, with `on_long_prompt = "error"`), with what to say
    about each one skipped for its characters alone (said by `_finish`, once it is known whether any prompt is left).

    With `keep_items` false (the streamed sources) the item is None and only token counts are computed, through
    `_TokenCounter`'s fast path where it applies."""
    chat_template = bool(data_cfg.apply_chat_template)
    counter = None if keep_items else _TokenCounter(tokenizer, chat_template=chat_template)
    limit = int(data_cfg.max_prompt_tokens)
    char_cap = _LONG_SLACK * max_chars_per_token(tokenizer) * limit  # longer than this cannot fit: never tokenised
    skipped, notes = 0, []
    batch: list[tuple[str, str, str, int, Any]] = []
    with_difficulty = difficulty_key(data_cfg) is not None

    def flush() -> None:
        nonlocal skipped
        prompts, all_ids = [b[1] for b in batch], None
        if counter is None:
            all_ids = encode_prompts(tokenizer, prompts, chat_template=chat_template)
            counts = [len(ids) for ids in all_ids]
        else:
            counts = counter(prompts)
        for k, ((row, prompt, answer, loc, level), n) in enumerate(zip(batch, counts)):
            if n == 0:  # nothing to condition on: the engine would refuse it at the first step
                raise ValueError(f"{where}: {row}: the prompt encodes to no tokens ({prompt!r:.60})")
            if _too_long(where, row, n, data_cfg):
                skipped += 1
            elif all_ids:
                item = {"prompt": prompt, "prompt_ids": all_ids[k], "answer": answer}
                keep(loc, item | ({"difficulty": level} if with_difficulty else {}))
            else:
                keep(loc, None)
        batch.clear()

    for row, prompt, answer, loc, level in rows:
        level = _check_difficulty(where, row, level)
        entry = (row, *_check_row(where, row, prompt, answer, data_cfg), loc, level)
        if len(entry[1]) > char_cap:  # one huge row would take many GB to tokenise (100 MB: 24 GB, then OOM)
            notes.append(_far_too_long(where, row, len(entry[1]), data_cfg))
            skipped += 1
            continue
        batch.append(entry)
        if len(batch) == _BATCH:
            flush()
    if batch:
        flush()
    return skipped, notes


class _TokenCounter:
    """Token counts of prompts, equal to `len(encode_prompt(...))`, for the load-time length check.

    Why not just `encode_prompts`: for a fast (Rust) tokenizer, transformers' conversion of each encoding back to
    Python costs ~50 us a prompt, more than the tokenisation itself; a million prompts took 90 s. The backend
    tokenizer's `encode_batch` gives the counts directly. It is used only when it has no truncation or padding set
    and it agrees with `encode_prompts` on the whole first batch; otherwise every batch goes through
    `encode_prompts`. (Reading an item re-tokenises it with `encode_prompt`, and raises if it is over the limit.)"""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, chat_template: bool) -> None:
        self.tokenizer = tokenizer
        self.template = chat_template and bool(getattr(tokenizer, "chat_template", None))
        backend = getattr(tokenizer, "backend_tokenizer", None)
        usable = backend is not None and getattr(backend, "truncation", 1) is None
        self.backend = backend if usable and getattr(backend, "padding", 1) is None else None
        self.checked = False

    def __call__(self, prompts: list[str]) -> list[int]:
        exact = None
        if self.backend is None or not self.checked:
            exact = [len(ids) for ids in encode_prompts(self.tokenizer, prompts, chat_template=self.template)]
            if self.backend is None:
                return exact
        if self.template:
            texts = [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
                )
                for p in prompts
            ]
        else:
            texts = prompts
        fast = [len(e.ids) for e in self.backend.encode_batch(texts, add_special_tokens=not self.template)]
        if exact is not None:
            self.checked = True
            if fast != exact:
                log.info("token counts: the backend tokenizer disagrees with the tokenizer; using the slow path")
                self.backend = None
            return exact
        return fast


def _check_difficulty(where: str, row: str, value: Any) -> Any:
    """A row's difficulty as given (int, float or str; None when absent); a clear error for another type."""
    if value is None or (isinstance(value, (int, float, str)) and not isinstance(value, bool)):
        return value
    raise ValueError(f"{where}: {row}: the difficulty column must hold a number or a string, got {value!r:.80}")


_LONG_SLACK = 4
"""A prompt longer than `_LONG_SLACK * max_chars_per_token * max_prompt_tokens` characters is too long whatever its
tokens (the slack covers normalisers that shorten text, such as NFKC composing characters)."""


def max_chars_per_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """The longest token of the vocabulary, in characters of its vocabulary string: no token decodes to more
    characters (byte-level BPE writes one character per byte; byte-fallback pieces such as `<0x41>` only make the
    bound looser). So a prompt of `c` characters has at least `c / this` tokens."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # a tokenizer without a vocabulary to list: a generous bound
        return 256
    return max((len(token) for token in vocab), default=256) or 1


def _far_too_long(where: str, row: str, n_chars: int, data_cfg: DataSource) -> str:
    """A prompt of `n_chars` characters, past any tokenisation of `max_prompt_tokens`: an error naming the file and
    the row with `on_long_prompt = "error"`, else what the warning will say (the row is skipped, never tokenised)."""
    limit = int(data_cfg.max_prompt_tokens)
    what = f"{where}: {row}: the prompt has {n_chars:,} characters, far more than data.max_prompt_tokens={limit} holds"
    if data_cfg.on_long_prompt == "error":
        raise ValueError(f"{what} (raise the limit, or set data.on_long_prompt='skip')")
    return what


def _too_long(where: str, row: str, n_tokens: int, data_cfg: DataSource) -> bool:
    """Whether to skip this prompt for its length; an error instead with `on_long_prompt = "error"`."""
    limit = int(data_cfg.max_prompt_tokens)
    if n_tokens <= limit:
        return False
    if data_cfg.on_long_prompt == "error":
        raise ValueError(
            f"{where}: {row}: the prompt has {n_tokens} tokens, more than data.max_prompt_tokens={limit} "
            "(raise the limit, or set data.on_long_prompt='skip')"
        )
    return True


def _check_row(where: str, row: str, prompt: Any, answer: Any, data_cfg: DataSource) -> tuple[str, str]:
    """The row's prompt and answer as strings; a clear error for a wrong type."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(
            f"{where}: {row}: data.prompt_key={data_cfg.prompt_key!r} must be a non-empty string, got {prompt!r:.80}"
        )
    for key, text in ((data_cfg.prompt_key, prompt), (data_cfg.answer_key, answer)):
        if isinstance(text, str) and not _is_unicode_text(text):  # a lone surrogate: no tokenizer takes it
            raise ValueError(
                f"{where}: {row}: data.{'prompt' if text is prompt else 'answer'}_key={key!r} holds a lone surrogate "
                f"({_first_surrogate(text)}), which is not Unicode text; fix the file's escapes"
            )
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise ValueError(
            f"{where}: {row}: data.answer_key={data_cfg.answer_key!r} must be a string or a number, got {answer!r:.80}"
        )
    if (isinstance(answer, float) and not math.isfinite(answer)) or not str(answer).strip():
        # JSON's NaN and an empty answer would be trained against as the text "nan" or "".
        raise ValueError(
            f"{where}: {row}: data.answer_key={data_cfg.answer_key!r} must be a finite number or a non-empty "
            f"string, got {answer!r:.80}"
        )
    return prompt, str(answer)


def _is_unicode_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _first_surrogate(text: str) -> str:
    return next((f"\\u{ord(c):04x} at character {i}" for i, c in enumerate(text) if 0xD800 <= ord(c) <= 0xDFFF), "")


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


class _JsonlItems(Sequence):
    """The usable rows of a JSONL file, read on access through their byte offsets.

    Every access opens the file, checks it still has the size and modification time it had when indexed, reads one
    line and tokenises it: no shared file position (safe across threads and forks) and no cache (an item is read
    about once an epoch, and a cache would hand out the same mutable dict twice)."""

    def __init__(
        self,
        path: Path,
        offsets: array,
        stamp: tuple[int, int],
        tokenizer: PreTrainedTokenizerBase,
        data_cfg: DataSource,
        *,
        crc: int | None = None,
    ) -> None:
        self.path, self.offsets, self.stamp, self.crc = path, offsets, stamp, crc
        self.tokenizer, self.data_cfg = tokenizer, data_cfg

    def _unchanged(self, st: os.stat_result) -> bool:
        """The file is as it was loaded: the same size and time, or (a `touch`, a copy that kept the bytes) the
        same size and CRC-32, after which the new time is taken as the file's."""
        if (st.st_size, st.st_mtime_ns) == self.stamp:
            return True
        if self.crc is None or st.st_size != self.stamp[0]:
            return False
        from trainer.checkpoint.checksums import file_sum

        if file_sum(self.path)[1] != self.crc:
            return False
        self.stamp = (st.st_size, st.st_mtime_ns)
        return True

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> Item:  # type: ignore[override]
        offset = self.offsets[i]  # IndexError and negative indices as for a list
        with self.path.open("rb") as f:
            if not self._unchanged(os.fstat(f.fileno())):
                raise ValueError(
                    f"{self.path}: changed after it was loaded (its bytes differ); do not edit a data file during a "
                    "run: restore it and continue with --resume auto, or start a new run on the new file"
                )
            f.seek(offset)
            raw = f.readline()
        row = f"the line at byte {offset}"
        record = parse_line(self.path, raw, offset, row)
        if record is None:
            raise ValueError(f"{self.path}: {row} is blank; the file changed after it was loaded")
        return _item(str(self.path), pick(self.path, row, record, self.data_cfg), self.tokenizer, self.data_cfg)


def _item(where: str, row: tuple[str, Any, Any, Any], tokenizer: PreTrainedTokenizerBase, data_cfg: DataSource) -> Item:
    """One row `(label, prompt, answer, difficulty)`, checked and tokenised again on access (the load-time pass
    already accepted it)."""
    label, prompt, answer, level = row
    prompt, answer = _check_row(where, label, prompt, answer, data_cfg)
    ids = encode_prompt(tokenizer, prompt, chat_template=bool(data_cfg.apply_chat_template))
    if len(ids) > int(data_cfg.max_prompt_tokens):
        raise ValueError(f"{where}: {label}: the prompt has {len(ids)} tokens now; the tokenizer changed after loading")
    item = {"prompt": prompt, "prompt_ids": ids, "answer": answer}
    if difficulty_key(data_cfg) is not None:
        item["difficulty"] = _check_difficulty(where, label, level)
    return item
