"""trainer.data at scale: a million-prompt JSONL file streams through a byte-offset index, in bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import pytest

from trainer import data

ROOT = Path(__file__).resolve().parents[1]
N_ROWS = 1_000_000
MEMORY_BOUND_MB = 64
"""Peak RSS growth allowed while loading and reading: the index is 8 MB (one int64 offset a row), while a list of
item dicts costs ~400 B a row, ~400 MB for a million (measured below on a slice, so the bound separates the two)."""


class _WordTokenizer:
    """A stand-in tokenizer: one id per white-space separated word (the word's length). A real tokenizer costs
    20-40 us a prompt in the load-time length check (~40 s a million on two cores): its cost, not the data path's;
    this test is about memory and keeps the million rows to ~10 s."""

    chat_template = None

    def __call__(self, texts: str | list[str], add_special_tokens: bool = True) -> dict[str, list]:
        if isinstance(texts, str):
            return {"input_ids": [len(w) for w in texts.split()]}
        return {"input_ids": [[len(w) for w in t.split()] for t in texts]}


def _row(i: int) -> str:
    # Every 97th prompt is long (13 words): skipped with max_prompt_tokens=8, so the index really filters.
    words = "so " * 9 if i % 97 == 0 else ""
    return f'{{"prompt": "{words}{i % 10} + {i // 10 % 10} =", "answer": "{i}"}}\n'


def _usable_row(k: int) -> int:
    """The file row (0-based) of usable item `k`: rows 97m+1 .. 97m+96 survive the length filter."""
    return 97 * (k // 96) + k % 96 + 1


def _cfg(path: Path) -> SimpleNamespace:
    return SimpleNamespace(
        source=str(path),
        prompt_key="prompt",
        answer_key="answer",
        max_prompt_tokens=8,
        on_long_prompt="skip",
        apply_chat_template=True,
    )


# Runs in a fresh interpreter and measures its peak RSS (VmHWM), reset after the imports (writing 5 to
# /proc/self/clear_refs, Linux >= 4.0), so the load alone counts: every allocation, C ones included, at full speed
# (tracemalloc would triple the time).
_CHILD = """
import json, re, sys, time
sys.path.insert(0, sys.argv[2])
from test_trainer_data_scale import _WordTokenizer, _cfg, _usable_row
from trainer import data
from pathlib import Path

def rss_mb(field="VmHWM"):
    return int(re.search(field + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024

try:
    Path("/proc/self/clear_refs").write_text("5")
except OSError:
    print(json.dumps(dict(hwm_reset=False)))
    sys.exit(0)
base = rss_mb("VmRSS")
start = time.perf_counter()
prompts = data.load_prompts(_cfg(Path(sys.argv[1])), _WordTokenizer())
load_s, load_mb = time.perf_counter() - start, rss_mb() - base
n = len(prompts)
picks = [0, 1, 2, n // 2, n // 2 + 1, n - 2, n - 1]
items = [prompts[k] for k in picks] + [prompts[-1]]
start = time.perf_counter()
spread = range(0, n, 997)  # about a thousand reads all over the file
bad = [k for k in spread if prompts[k]["answer"] != str(_usable_row(k))]
access_us = (time.perf_counter() - start) / len(spread) * 1e6
try:
    prompts[n]
    index_error = False
except IndexError:
    index_error = True
print(json.dumps(dict(n=n, skipped=prompts.skipped, source=prompts.source, picks=picks, items=items, bad=bad,
                      index_error=index_error, load_s=load_s, load_mb=load_mb, access_us=access_us,
                      total_mb=rss_mb() - base)))
"""


@pytest.mark.slow
def test_million_prompt_jsonl_streams_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    with path.open("w", encoding="utf-8") as f:
        f.writelines(_row(i) for i in range(N_ROWS))
    file_mb = path.stat().st_size / 2**20

    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(Path(__file__).parent)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    if not got.get("hwm_reset", True):
        pytest.skip("cannot reset the peak RSS here (/proc/self/clear_refs not writable)")

    n_usable = N_ROWS - len(range(0, N_ROWS, 97))
    assert got["n"] == n_usable and got["skipped"] == N_ROWS - n_usable and got["source"] == str(path)
    assert got["bad"] == [] and got["index_error"]
    for k, item in zip([*got["picks"], n_usable - 1], got["items"]):  # start, middle, end, and prompts[-1]
        i = _usable_row(k)
        assert item == {"prompt": f"{i % 10} + {i // 10 % 10} =", "prompt_ids": [1, 1, 1, 1], "answer": str(i)}

    # What an eager list of item dicts costs a row, measured on the first 20k rows of the same file.
    head = tmp_path / "head.jsonl"
    with path.open("rb") as src:
        head.write_bytes(b"".join(src.readline() for _ in range(20_000)))
    sample = data.load_prompts(_cfg(head), _WordTokenizer())
    tracemalloc.start()
    eager = [sample[k] for k in range(len(sample))]
    eager_per_row = tracemalloc.get_traced_memory()[0] / len(eager)
    tracemalloc.stop()

    print(
        f"\n{N_ROWS} rows, {file_mb:.1f} MB file: load {got['load_s']:.1f} s, peak RSS +{got['load_mb']:.1f} MB; "
        f"reads {got['access_us']:.0f} us/item, peak RSS +{got['total_mb']:.1f} MB after them; "
        f"an eager list would hold {eager_per_row:.0f} B/row"
    )
    assert got["load_mb"] < MEMORY_BOUND_MB and got["total_mb"] < MEMORY_BOUND_MB
    assert got["total_mb"] < file_mb / 2  # the file is never held in memory
    assert eager_per_row * n_usable / 2**20 > 4 * MEMORY_BOUND_MB  # a list of dicts would break the bound 4x over
