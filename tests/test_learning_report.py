"""bench.learning_report: the held-out curve of a run folder; bench.learning's command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import learning_report as R

ROOT = Path(__file__).resolve().parents[1]


def _run(path: Path, evals: dict[int, float], chunks: list[float], lengths: dict[int, float]) -> Path:
    """A run folder with training rows (2 s a step) and eval rows at the given steps."""
    path.mkdir(parents=True)
    rows = []
    for step in range(len(chunks) + 1):
        if step:
            rows.append({"step": step, "time/step": 2.0, "rollout/chunks": chunks[step - 1]})
        if step in evals:
            rows.append({"step": step, "kind": "eval", "eval/s/avg@4": evals[step], "eval/s/length": lengths[step],
                         "eval/s/level_1/avg@4": 0.0})  # fmt: skip
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_curve_counts_rollouts_and_seconds_up_to_each_eval(tmp_path: Path) -> None:
    run = _run(tmp_path / "r", {0: 0.5, 2: 0.6, 4: 0.8}, [1, 3, 1, 1], {0: 8.0, 2: 9.0, 4: 10.0})
    c = R.curve(run, source="s", prompts_per_step=4, group_size=2)
    assert c.steps == [0, 2, 4] and c.accuracy == [0.5, 0.6, 0.8] and c.length == [8.0, 9.0, 10.0]
    assert c.rollouts == [0.0, 32.0, 48.0]  # (1 + 3) * 4 * 2, then + (1 + 1) * 8
    assert c.wall_s == [0.0, 4.0, 8.0]
    assert R.first_reach(c, 0.6) == (32.0, 4.0) and R.first_reach(c, 0.81) == (None, None)
    with pytest.raises(ValueError, match="eval/t/avg@"):
        R.curve(run, source="t", prompts_per_step=4, group_size=2)


def test_learning_cli_help_and_bad_arguments() -> None:
    run = lambda *a: subprocess.run([sys.executable, "-m", "bench.learning", *a], cwd=ROOT, capture_output=True,
                                    text=True, timeout=120)  # fmt: skip
    out = run("--help")
    assert out.returncode == 0 and "--seeds" in out.stdout and "--algorithms" in out.stdout
    assert run("--algorithms", "sfpo").returncode == 2  # grpo is the target: required
    assert run("--bogus").returncode == 2
