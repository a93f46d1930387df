"""`bench.peer`'s summary and report (pure functions; the runs themselves are `make bench-peer`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench.peer import UNMATCHED, layout_args, report, summarize


def _r(s: float) -> dict[str, float]:
    return {"s_per_step": s, "tok_per_s": 1000 / s}


def test_layouts() -> None:
    assert layout_args("fastslow", 1) == () and layout_args("fastslow-fsdp", 2) == ()
    assert layout_args("fastslow", 2) == ("parallel.replicate=2",)


def test_summary_takes_medians_over_rounds_and_each_round_ratio() -> None:
    s = summarize({
        "fastslow": [_r(0.10), _r(0.30), _r(0.12)], "trl": [_r(0.20), _r(0.20), _r(0.10)],
        "fastslow-fsdp": [_r(0.2), _r(0.2), _r(0.2)],
    })  # fmt: skip
    assert s["fastslow"]["s_per_step"] == 0.12 and s["trl"]["s_per_step"] == 0.20
    assert s["ratio_time"] == pytest.approx(0.6) and s["ratio_time_fsdp"] == pytest.approx(1.0)
    assert s["ratio_rounds"] == pytest.approx([0.5, 1.5, 1.2])
    lines = report({2: s}, list(UNMATCHED), [1.0, 1.2], SimpleNamespace(rounds=3, steps=30))
    text = "\n".join(lines)
    assert "0.60x (rounds 0.50-1.50x)" in text and "FSDP2: the default" in text and "1.00x" in text
    assert "Goal: fastslow / TRL <= 0.75x." in text and all(n in text for n in UNMATCHED)
