"""Checksums of the files a run keeps (checkpoint shards, the warm-start cache): bytes changed in place are found.

DCP keeps no checksums, and a file of the right size whose bytes were zeroed (a bad disk block, a copy that wrote
holes) passes every size check and may even load: a checkpoint with 60 KB of one tensor zeroed resumed silently.
So every checkpoint folder holds `checksums.json`, `{file name: [size, crc32]}` for each file in it, and the
warm-start cache's sidecar JSON holds the cache's. CRC-32 (zlib) reads ~2 GB/s on one core: each rank sums the
shards it wrote, in parallel, while they are still in the page cache; a resume reads every byte once more.
A checkpoint written before checksums existed has no `checksums.json` and is checked by size only, as before.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

CHECKSUMS = "checksums.json"
_CHUNK = 16 << 20


def file_sum(path: Path) -> tuple[int, int]:
    """`(size in bytes, CRC-32)` of the file's contents."""
    crc, size = 0, 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return size, crc


def sums(folder: Path, names: list[str]) -> dict[str, list[int]]:
    """`{name: [size, crc32]}` for the named files of `folder`."""
    return {name: list(file_sum(folder / name)) for name in sorted(names)}


def write(folder: Path, entries: dict[str, list[int]]) -> None:
    """Write `folder/checksums.json` (whole, fsynced, then renamed into place)."""
    tmp = folder / f"{CHECKSUMS}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps({"crc32": entries}, indent=0, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / CHECKSUMS)


def mismatch(path: Path, size: int, crc: int) -> str | None:
    """What differs between the file and its recorded `(size, crc)`, one phrase naming the file; None if equal."""
    if not path.is_file():
        return f"{path} is missing"
    got_size, got_crc = file_sum(path)
    if got_size != size:
        return f"{path} has {got_size} bytes, {size} when written"
    if got_crc != crc:
        return f"{path} does not match its checksum (its bytes changed after it was written)"
    return None


def verify(folder: Path) -> str | None:
    """The first file of `folder` that differs from `checksums.json`, as a phrase; None when all match or there is
    no `checksums.json` (an older checkpoint)."""
    manifest = folder / CHECKSUMS
    if not manifest.exists():
        return None
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))["crc32"]
        items = [(str(name), int(size), int(crc)) for name, (size, crc) in entries.items()]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{manifest} does not read ({type(err).__name__}: {err})"
    for name, size, crc in sorted(items):
        why = mismatch(folder / name, size, crc)
        if why:
            return why
    return None
