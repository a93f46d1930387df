"""bench.learning_report: rollouts and seconds to GRPO's best, the summary, targets and table, on hand-made runs."""

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


def test_summary_targets_and_table(tmp_path: Path) -> None:
    ev = lambda accs: {2 * i: a for i, a in enumerate(accs)}
    ln = lambda x: {2 * i: x for i in range(4)}
    curves = {
        "grpo": {0: _run(tmp_path / "g0", ev([0.5, 0.6, 0.7, 0.8]), [1] * 6, ln(10.0)),
                 1: _run(tmp_path / "g1", ev([0.5, 0.7, 0.7, 0.7]), [1] * 6, ln(12.0))},
        "sfpo": {0: _run(tmp_path / "s0", ev([0.5, 0.8, 0.8, 0.8]), [1] * 6, ln(10.0)),
                 1: _run(tmp_path / "s1", ev([0.5, 0.6, 0.6, 0.6]), [1] * 6, ln(11.0))},
        "fast_grpo": {0: _run(tmp_path / "f0", ev([0.5, 0.6, 0.7, 0.79]), [2] * 6, ln(6.0)),
                      1: _run(tmp_path / "f1", ev([0.5, 0.7, 0.75, 0.75]), [2] * 6, ln(7.0))},
    }  # fmt: skip
    curves = {a: {s: R.curve(p, source="s", prompts_per_step=1, group_size=1) for s, p in d.items()}
              for a, d in curves.items()}  # fmt: skip
    out = R.summarize(curves, [0, 1])
    assert out["grpo"]["rollouts_to_grpo_best"] == [6.0, 2.0]  # its own best: 0.8 at step 6, 0.7 at step 2
    assert out["sfpo"]["rollouts_to_grpo_best"] == [2.0, None]  # seed 1 never reaches 0.7
    assert out["fast_grpo"]["rollouts_to_grpo_best"] == [None, 4.0]  # 2 chunks a step
    assert out["fast_grpo"]["mean_response_length"] == [6.0, 7.0]
    t = {x["claim"].split(" ")[0] + str(i): x for i, x in enumerate(R.targets(out))}
    assert t["SFPO0"]["measured"] is None and not t["SFPO0"]["holds"]  # median with a never is never
    assert t["FAST-GRPO's1"]["measured"] == pytest.approx(6.5 / 11.0, abs=1e-3) and t["FAST-GRPO's1"]["holds"]
    assert t["FAST-GRPO's2"]["measured"] == pytest.approx(0.77 - 0.75) and t["FAST-GRPO's2"]["holds"]
    result = {"seeds": [0, 1], "algorithms": out, "targets": R.targets(out), "config": "c", "device": "d",
              "date": "x", "source": "s", "metric": "eval/s/avg@4",
              "budget": {"steps": 6, "prompts_per_step": 1, "group_size": 1, "rollouts": 6}}  # fmt: skip
    table = R.markdown(result)
    assert "| sfpo | never [2, never] |" in table  # the median of 2 and never is never; the spread shows the 2
    with pytest.raises(ValueError, match="grpo"):
        R.summarize({"sfpo": curves["sfpo"]}, [0, 1])
    pytest.importorskip("matplotlib")
    assert R.plot(curves, tmp_path / "p.png", title="t").stat().st_size > 0


def test_learning_cli_help_and_bad_arguments() -> None:
    run = lambda *a: subprocess.run([sys.executable, "-m", "bench.learning", *a], cwd=ROOT, capture_output=True,
                                    text=True, timeout=120)  # fmt: skip
    out = run("--help")
    assert out.returncode == 0 and "--seeds" in out.stdout and "--algorithms" in out.stdout
    assert run("--algorithms", "sfpo").returncode == 2  # grpo is the target: required
    assert run("--bogus").returncode == 2
