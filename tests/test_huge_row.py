"""One huge prompt in a data file is found before tokenising (issue 27): a 20 MB row took 55 s and 7 GB to skip, and
a 100 MB one 24 GB and the OOM killer. A prompt longer than any tokenisation of `data.max_prompt_tokens` can hold
(`trainer.data.max_chars_per_token`) is skipped, or refused, by its character count, naming the file and the row."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from trainer import data
from trainer.model.tiny import build_tokenizer

HUGE_CHARS = 20_000_000


def _file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"{i} + 1 =", "answer": str(i + 1)} for i in range(8)]
    rows.insert(5, {"prompt": "1 + " * (HUGE_CHARS // 4), "answer": "0"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(path: Path, on_long: str) -> SimpleNamespace:
    return SimpleNamespace(
        source=str(path), prompt_key="prompt", answer_key="answer", max_prompt_tokens=64, on_long_prompt=on_long,
        apply_chat_template=False,
    )  # fmt: skip


def test_a_huge_row_is_skipped_without_tokenising_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _file(tmp_path)
    tok = build_tokenizer()
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="trainer.data"):
        prompts = data.load_prompts(_cfg(path, "skip"), tok)
    assert time.monotonic() - start < 10  # it reads the row once; tokenising 20 MB took ~55 s
    assert len(prompts) == 8 and prompts.skipped == 1
    warned = [r.getMessage() for r in caplog.records if "characters" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(f"{path}: line 6: the prompt has {HUGE_CHARS:,} characters")
    assert "skipped without tokenising it" in warned[0]


def test_a_huge_row_is_an_error_naming_file_and_row(tmp_path: Path) -> None:
    path = _file(tmp_path)
    with pytest.raises(ValueError, match=rf"^{path}: line 6: the prompt has {HUGE_CHARS:,} characters, far more"):
        data.load_prompts(_cfg(path, "error"), build_tokenizer())


def test_the_bound_never_skips_a_prompt_that_fits() -> None:
    """The cap is a lower bound on the token count: text at the cap still needs more than the limit."""
    tok = build_tokenizer()
    longest = data.max_chars_per_token(tok)
    assert longest == max(len(t) for t in tok.get_vocab())
    text = "9" * 64  # one character per token here: 64 characters fit 64 tokens, far under the cap
    assert len(tok(text, add_special_tokens=False)["input_ids"]) <= 64 < data._LONG_SLACK * longest * 64
