"""JSON and JSON-lines prompt files, read row by row: each row's (label, prompt, answer, locator, difficulty) for
`trainer.data`, with a clear error naming the file and the row for bad UTF-8, bad JSON, a non-object or a missing
key. A JSON-lines file is read one line at a time (its CRC-32 summed on the way); a JSON array is parsed whole."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainer.data_formats import DataSource, Row, difficulty_key


def starts_with_bracket(path: Path) -> bool:
    """Whether a .json file is one JSON array (else it is read as JSON lines)."""
    with path.open("rb") as f:
        head = f.read(4096)
        while head and not head.lstrip().lstrip(b"\xef\xbb\xbf").lstrip():
            head = f.read(4096)
    return head.lstrip().lstrip(b"\xef\xbb\xbf").lstrip()[:1] == b"["


def json_array_rows(path: Path, data_cfg: DataSource) -> Iterator[Row]:
    """(label, prompt, answer, index) of each element of a JSON array (the whole file is parsed: keep these small)."""
    data = path.read_bytes()
    try:
        records = json.loads(_utf8(path, data, 0, "the file"))
    except (ValueError, RecursionError) as exc:  # bad JSON, an int over 4300 digits, nesting too deep
        raise ValueError(f"{path}: not valid JSON: {_json_problem(exc)}") from exc
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON array, got {type(records).__name__}")
    for i, record in enumerate(records):
        label, prompt, answer, level = pick(path, f"element {i}", record, data_cfg)
        yield label, prompt, answer, i, level


def jsonl_rows(path: Path, data_cfg: DataSource, digest: list[int] | None = None) -> Iterator[Row]:
    """(label, prompt, answer, byte offset) of each non-blank line of a JSON-lines file, read one line at a time;
    `digest[0]` ends as the CRC-32 of the whole file."""
    offset = 0
    crc = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            crc = zlib.crc32(raw, crc)
            if digest is not None:
                digest[0] = crc
            start, offset = offset, offset + len(raw)
            record = parse_line(path, raw, start, f"line {lineno}")
            if record is not None:
                label, prompt, answer, level = pick(path, f"line {lineno}", record, data_cfg)
                yield label, prompt, answer, start, level


def parse_line(path: Path, raw: bytes, offset: int, row: str) -> Any:
    """The JSON value of one line (None for a blank line); a clear error for bad UTF-8 or bad JSON."""
    text = _utf8(path, raw, offset, row)
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # bad JSON, an int over 4300 digits, nesting too deep
        raise ValueError(f"{path}: {row}: not valid JSON: {_json_problem(exc)}") from exc


def _json_problem(exc: BaseException) -> str:
    """What json.loads said, as a phrase a user can act on."""
    if isinstance(exc, RecursionError):
        return "nested too deeply to read"
    text = str(exc)
    if "integer string conversion" in text:
        return "a number of more than 4300 digits (write it as a string)"
    return text


def _utf8(path: Path, raw: bytes, offset: int, where: str) -> str:
    """`raw` decoded as UTF-8 (a BOM at the very start of the file dropped); a clear error naming file and row."""
    try:
        return raw.decode("utf-8-sig" if offset == 0 else "utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{path}: {where}: not UTF-8 (byte {raw[exc.start]:#04x} at offset {exc.start}); convert the file to UTF-8"
        ) from exc


def pick(path: Path, row: str, record: Any, data_cfg: DataSource) -> tuple[str, Any, Any, Any]:
    """(row, prompt, answer, difficulty) of one JSON record; a clear error for a non-object or a missing key (the
    difficulty column is optional: None where it is missing)."""
    if not isinstance(record, dict):
        raise ValueError(f"{path}: {row}: expected a JSON object, got {type(record).__name__}")
    for key, name in ((data_cfg.prompt_key, "data.prompt_key"), (data_cfg.answer_key, "data.answer_key")):
        if key not in record:
            keys = ", ".join(sorted(map(str, record)))[:200]
            raise ValueError(f"{path}: {row}: no key {key!r} ({name}); the row has: {keys}")
    key = difficulty_key(data_cfg)
    return row, record[data_cfg.prompt_key], record[data_cfg.answer_key], record.get(key) if key else None
