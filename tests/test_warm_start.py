"""trainer.model.warm_start: when it applies, what it trains on, that it learns, and the cache that makes it a
one-off."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest
import torch

from trainer.config import ConfigError, from_dict
from trainer.model import warm_start
from trainer.model.load import load_model_and_tokenizer
from trainer.tasks import synthetic as task


def _cfg(**ws):
    return from_dict({"warm_start": {"steps": 30, "batch_size": 32, **ws}})


def test_applies_to_the_built_in_job_only(tmp_path: Path) -> None:
    assert warm_start.applies(from_dict({}))
    assert not warm_start.applies(from_dict({"warm_start": {"mode": "off"}}))
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "1 + 1 =", "answer": "2"}\n')
    assert not warm_start.applies(from_dict({"data": {"source": str(data)}}))
    with pytest.raises(ConfigError, match=r"warm_start\.mode"):
        from_dict({"warm_start": {"mode": "on"}, "data": {"source": str(data)}})
    with pytest.raises(ConfigError, match=r"warm_start\.direct"):
        from_dict({"warm_start": {"direct": 1.5}})


def test_examples_mix_and_use_the_training_split_only() -> None:
    pairs = warm_start.examples(2000, seed=0, direct=0.5, filler=0.5)
    assert all(task.split_of([int(d) for d in p.split()[:-1]]) == "train" for p, _ in pairs)
    assert all(task.check(r, str(sum(int(d) for d in p.split()[:-1]) % 10)).correct for p, r in pairs)
    kinds = Counter("direct" if "<think>" not in r else "think" for _, r in pairs)
    assert abs(kinds["direct"] / 2000 - 0.5) < 0.05
    fillers = [sum(w in task.FILLER for w in r.split()) for _, r in pairs if "<think>" in r]
    assert abs(sum(fillers) / len(fillers) - 1.0) < 0.15  # geometric, mean filler / (1 - filler) = 1
    assert warm_start.examples(50, seed=0, direct=1.0, filler=0.5) == [
        (p, r) for p, r in warm_start.examples(50, seed=0, direct=1.0, filler=0.0)
    ]


def test_supervised_pass_learns() -> None:
    cfg = _cfg(steps=80)
    model, tok = load_model_and_tokenizer(cfg.model, seed=0)
    stats = warm_start.supervised_pass(model, tok, cfg.warm_start)
    assert stats["loss_last"] < 0.5 * stats["loss_first"], stats


def test_cache_is_written_once_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(steps=5)
    run_dir = tmp_path / "runs" / "a"
    model, tok = load_model_and_tokenizer(cfg.model, seed=3)
    first = warm_start.warm_start(model, tok, cfg, run_dir, is_main=True)
    path = warm_start.cache_path(cfg, model, run_dir)
    assert path.is_file() and path.parent == tmp_path / "runs" / ".warm_start" and path.with_suffix(".json").is_file()
    weights = {k: v.clone() for k, v in first.state_dict().items()}

    def no_training(*args, **kwargs):
        raise AssertionError("the cached warm start was trained again")

    monkeypatch.setattr(warm_start, "supervised_pass", no_training)
    other, _ = load_model_and_tokenizer(cfg.model, seed=7)  # another RL seed: the same warm-started weights
    again = warm_start.warm_start(other, tok, cfg, tmp_path / "runs" / "b", is_main=True)
    assert all(torch.equal(weights[k], v) for k, v in again.state_dict().items())
    # Different settings or a different shape: a different file.
    assert warm_start.cache_path(_cfg(steps=6), model, run_dir) != path
    bigger = from_dict({"model": {"hidden_size": 32}})
    small, _ = load_model_and_tokenizer(bigger.model, seed=0)
    assert warm_start.cache_path(cfg, small, run_dir) != path
    custom = dataclasses.replace(cfg, warm_start=dataclasses.replace(cfg.warm_start, cache=str(tmp_path / "c")))
    assert warm_start.cache_path(custom, model, run_dir).parent == tmp_path / "c"


def test_a_rank_that_finds_no_file_says_so(tmp_path: Path) -> None:
    cfg = _cfg(steps=5)
    model, tok = load_model_and_tokenizer(cfg.model, seed=0)
    with pytest.raises(FileNotFoundError, match=r"warm_start\.cache"):
        warm_start.warm_start(model, tok, cfg, tmp_path / "r", is_main=False)
