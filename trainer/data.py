"""Prompt datasets (JSONL, Parquet or the synthetic task), tokenised once, and a resumable per-rank sampler.

`load_prompts(cfg.data, tokenizer)` reads the configured source into a list of
`{"prompt": str, "prompt_ids": list[int], "answer": str}`; `PromptSampler` hands each rank its share of every chunk
of prompts, from a permutation reshuffled per epoch, and can be saved and resumed exactly.

The data config is read by attribute (duck typing): `source` ("synthetic" or a path to .jsonl / .json / .parquet),
`prompt_key`, `answer_key`, `max_prompt_tokens`, `on_long_prompt` ("skip" | "error"), `apply_chat_template`, and
optionally `synthetic_size`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from trainer import task

__all__ = ["SYNTHETIC", "SYNTHETIC_SIZE", "PromptSampler", "Prompts", "encode_prompt", "load_prompts"]

log = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
SYNTHETIC_SIZE = 4096
"""Items drawn from the synthetic task when the config does not say (`data.synthetic_size`)."""
_JSON_SUFFIXES = (".jsonl", ".json")
_PARQUET_SUFFIXES = (".parquet", ".pq")


class Prompts(list):
    """The loaded prompts (a plain list of dicts) plus where they came from and how many were skipped."""

    def __init__(self, items: list[dict[str, Any]], *, source: str, skipped: int) -> None:
        super().__init__(items)
        self.source = source
        self.skipped = skipped
        """Rows dropped for being longer than `data.max_prompt_tokens` (with `on_long_prompt = "skip"`)."""


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, *, chat_template: bool) -> list[int]:
    """Token ids of one prompt: through the tokenizer's chat template (as a user turn, with the generation prompt)
    when `chat_template` is true and the tokenizer has one, else the plain text with the tokenizer's usual specials."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def load_prompts(data_cfg: Any, tokenizer: PreTrainedTokenizerBase, *, seed: int = 0) -> Prompts:
    """The prompts of `data_cfg.source`, tokenised, in file order (the synthetic task: drawn with `seed`).

    Raises:
        FileNotFoundError: the source file does not exist.
        ValueError: an unknown file type, a row that is not an object or lacks a key, a value of the wrong type,
            bytes that are not UTF-8, a too long prompt with `on_long_prompt = "error"`, or no prompt left; the
            message names the file and the row (1-based line for JSONL, 0-based row for Parquet).
        ImportError: a Parquet source without pyarrow installed.
    """
    source = str(data_cfg.source)
    if source == SYNTHETIC:
        size = int(getattr(data_cfg, "synthetic_size", SYNTHETIC_SIZE))
        rows: Iterator[tuple[str, Any, Any]] = (
            (f"synthetic item {i}", item["prompt"], item["answer"])
            for i, item in enumerate(task.make_dataset(size, seed))
        )
        where = SYNTHETIC
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"data.source: {path} does not exist or is not a file")
        suffix = path.suffix.lower()
        if suffix in _JSON_SUFFIXES:
            rows = _json_rows(path, data_cfg.prompt_key, data_cfg.answer_key)
        elif suffix in _PARQUET_SUFFIXES:
            rows = _parquet_rows(path, data_cfg.prompt_key, data_cfg.answer_key)
        else:
            raise ValueError(
                f"data.source: {path} has an unknown type {suffix!r}; allowed: 'synthetic', "
                + ", ".join(_JSON_SUFFIXES + _PARQUET_SUFFIXES)
            )
        where = str(path)

    limit = int(data_cfg.max_prompt_tokens)
    on_long = data_cfg.on_long_prompt
    if on_long not in ("skip", "error"):
        raise ValueError(f"data.on_long_prompt: {on_long!r} is not allowed; allowed: 'skip', 'error'")
    items, skipped = [], 0
    for row, prompt, answer in rows:
        prompt, answer = _check_row(where, row, prompt, answer, data_cfg)
        ids = encode_prompt(tokenizer, prompt, chat_template=bool(data_cfg.apply_chat_template))
        if len(ids) > limit:
            if on_long == "error":
                raise ValueError(
                    f"{where}: {row}: the prompt has {len(ids)} tokens, more than data.max_prompt_tokens={limit} "
                    "(raise the limit, or set data.on_long_prompt='skip')"
                )
            skipped += 1
            continue
        items.append({"prompt": prompt, "prompt_ids": ids, "answer": answer})
    if skipped:
        log.warning("%s: skipped %d prompts longer than data.max_prompt_tokens=%d", where, skipped, limit)
    if not items:
        why = f" (all {skipped} were longer than data.max_prompt_tokens={limit})" if skipped else ""
        raise ValueError(f"data.source: {where} holds no prompts{why}")
    return Prompts(items, source=where, skipped=skipped)


def _check_row(where: str, row: str, prompt: Any, answer: Any, data_cfg: Any) -> tuple[str, str]:
    """The row's prompt and answer as strings; a clear error for a wrong type."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(
            f"{where}: {row}: data.prompt_key={data_cfg.prompt_key!r} must be a non-empty string, got {prompt!r:.80}"
        )
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise ValueError(
            f"{where}: {row}: data.answer_key={data_cfg.answer_key!r} must be a string or a number, got {answer!r:.80}"
        )
    return prompt, str(answer)


def _json_rows(path: Path, prompt_key: str, answer_key: str) -> Iterator[tuple[str, Any, Any]]:
    """(row label, prompt, answer) of each non-blank line of a JSON-lines file (or each element of a JSON array)."""
    data = path.read_bytes()
    if path.suffix.lower() == ".json" and data.lstrip()[:1] == b"[":
        try:
            records = json.loads(_utf8(path, data, 0, "the file"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from exc
        for i, record in enumerate(records):
            yield _pick(path, f"element {i}", record, prompt_key, answer_key)
        return
    for lineno, raw in enumerate(data.splitlines(), start=1):
        text = _utf8(path, raw, lineno, f"line {lineno}")
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {lineno}: not valid JSON: {exc}") from exc
        yield _pick(path, f"line {lineno}", record, prompt_key, answer_key)


def _utf8(path: Path, raw: bytes, lineno: int, where: str) -> str:
    """`raw` decoded as UTF-8 (a leading BOM dropped); a clear error naming the file and the line otherwise."""
    try:
        return raw.decode("utf-8-sig" if lineno <= 1 else "utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: {where}: not UTF-8 (byte {raw[exc.start]:#04x} at offset {exc.start}); convert the file to UTF-8"
        ) from exc


def _pick(path: Path, row: str, record: Any, prompt_key: str, answer_key: str) -> tuple[str, Any, Any]:
    """(row, prompt, answer) of one JSON record; a clear error for a non-object or a missing key."""
    if not isinstance(record, dict):
        raise ValueError(f"{path}: {row}: expected a JSON object, got {type(record).__name__}")
    for key, name in ((prompt_key, "data.prompt_key"), (answer_key, "data.answer_key")):
        if key not in record:
            keys = ", ".join(sorted(map(str, record)))[:200]
            raise ValueError(f"{path}: {row}: no key {key!r} ({name}); the row has: {keys}")
    return row, record[prompt_key], record[answer_key]


def _parquet_rows(path: Path, prompt_key: str, answer_key: str) -> Iterator[tuple[str, Any, Any]]:
    """(row label, prompt, answer) of each row of a Parquet file's two columns."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError(f"data.source: reading {path} needs pyarrow: pip install pyarrow") from exc
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends for a corrupt file
        raise ValueError(f"{path}: not a readable Parquet file: {type(exc).__name__}: {exc}") from exc
    for key, name in ((prompt_key, "data.prompt_key"), (answer_key, "data.answer_key")):
        if key not in schema.names:
            raise ValueError(f"{path}: no column {key!r} ({name}); the columns are: {', '.join(schema.names)}")
    table = pq.read_table(path, columns=[prompt_key, answer_key])
    prompts, answers = table.column(prompt_key).to_pylist(), table.column(answer_key).to_pylist()
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        yield f"row {i}", prompt, answer


class PromptSampler:
    """Which dataset items each rank takes next: chunks of a per-epoch permutation, split across ranks.

    Epoch `e` visits the items in the order `torch.randperm(n_items)` drawn from a generator seeded with
    `seed + e`. Every call to `next_chunk` advances all ranks by the same `prompts_per_chunk` positions (a global
    chunk); rank `r` takes the `r`-th slice of `prompts_per_chunk // world` items, so the ranks' items are disjoint.
    An epoch's last incomplete chunk is dropped (the next epoch's reshuffle picks those items up), so a chunk never
    holds the same item twice. `state_dict()` / `load_state_dict()` save and restore (epoch, position) exactly.
    """

    def __init__(self, n_items: int, prompts_per_chunk: int, *, seed: int, rank: int = 0, world: int = 1) -> None:
        for name, value, least in (("n_items", n_items, 1), ("prompts_per_chunk", prompts_per_chunk, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        if isinstance(world, bool) or not isinstance(world, int) or world < 1:
            raise ValueError(f"world must be an int >= 1, got {world!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world:
            raise ValueError(f"rank must be an int in [0, {world}), got {rank!r}")
        if prompts_per_chunk % world != 0:
            raise ValueError(f"prompts_per_chunk={prompts_per_chunk} is not divisible by the world size {world}")
        if prompts_per_chunk > n_items:
            raise ValueError(
                f"a chunk of {prompts_per_chunk} prompts needs at least that many dataset items, got {n_items}"
            )
        self.n_items, self.prompts_per_chunk = n_items, prompts_per_chunk
        self.seed, self.rank, self.world = int(seed), rank, world
        self.epoch, self.position = 0, 0
        self._order: list[int] | None = None

    def _permutation(self) -> list[int]:
        """The current epoch's order of all items, cached."""
        if self._order is None:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            self._order = torch.randperm(self.n_items, generator=gen).tolist()
        return self._order

    def next_chunk(self) -> list[int]:
        """This rank's `prompts_per_chunk // world` item indices of the next global chunk."""
        if self.position + self.prompts_per_chunk > self.n_items:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        chunk = self._permutation()[self.position : self.position + self.prompts_per_chunk]
        self.position += self.prompts_per_chunk
        per_rank = self.prompts_per_chunk // self.world
        return chunk[self.rank * per_rank : (self.rank + 1) * per_rank]

    def state_dict(self) -> dict[str, int]:
        """The sampler's position (plain ints; identical on every rank)."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "n_items": self.n_items,
            "prompts_per_chunk": self.prompts_per_chunk,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continues from `state`; the dataset size, seed and chunk size must be the ones it was saved with."""
        for key in ("n_items", "seed", "prompts_per_chunk"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"sampler state: saved with {key}={state[key]} but this run has {key}={getattr(self, key)} "
                    "(the data or its config changed since the checkpoint)"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.n_items:
            raise ValueError(f"sampler state: bad epoch/position {epoch}/{position} for {self.n_items} items")
        self.epoch, self.position, self._order = epoch, position, None
