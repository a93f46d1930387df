"""bench.ab's arithmetic: phase medians from a metrics.jsonl (training rows after the first 5), the ratio table."""

from __future__ import annotations

import json
from pathlib import Path

from bench.ab import PHASES, phase_medians, table


def test_phase_medians_skip_warmup_and_eval_rows(tmp_path: Path) -> None:
    rows = [{"step": 0, "kind": "eval", "eval/x": 1.0}]
    rows += [{"step": i, **{p: (100.0 if i <= 5 else float(i)) for p in PHASES}} for i in range(1, 10)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert phase_medians(path) == dict.fromkeys(PHASES, 7.5)  # steps 6-9; the slow first 5 are left out


def test_table_gives_this_tree_over_ref() -> None:
    head = [dict.fromkeys(PHASES, 0.1), dict.fromkeys(PHASES, 0.3)]
    ref = [dict.fromkeys(PHASES, 0.4)]
    lines = table(2, head, ref, "abc123")
    assert lines[0] == "| 2 proc | this tree (ms) | abc123 (ms) | ratio |"
    assert lines[-1] == "| step | 200.0 | 400.0 | 0.50x |" and len(lines) == 2 + len(PHASES)
