"""Evaluation rows in metrics.jsonl (beside the training rows, through a resume), the console line, and the plots:
evaluation curves in a run's figures, and several runs overlaid."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from trainer.metrics import EVAL_KIND, METRICS_FILE, MetricsLogger, format_eval_line
from trainer.plot import eval_keys, overlay, plot_run, read_metrics
from trainer.plot import main as plot_main

EVAL = {
    "eval/synthetic/avg@4": 0.25, "eval/synthetic/pass@1": 0.25, "eval/synthetic/pass@2": 0.4,
    "eval/synthetic/pass@4": 0.5, "eval/synthetic/maj@4": 0.3, "eval/synthetic/length": 6.5,
    "eval/synthetic/format": 0.125, "eval/synthetic/level_1/avg@4": 0.5, "time/eval": 1.25,
}  # fmt: skip


def _write_run(run_dir: Path, steps: int, scale: float = 1.0) -> None:
    """A run's metrics as the trainer writes them: eval at 0, every 5 steps and at the end, a resumed repeat."""
    with MetricsLogger(run_dir, rank=0, console_every=0, tensorboard=False) as logger:
        logger.log_eval(0, {k: v * 0.5 for k, v in EVAL.items()})
        for step in range(1, steps + 1):
            logger.log(step, {"reward": scale * step / steps, "accuracy": scale * step / steps})
            if step % 5 == 0:
                logger.log_eval(step, {k: min(1.0, v * scale * (1 + step / steps)) for k, v in EVAL.items()})
        logger.log(5, {"reward": 0.99, "accuracy": 0.99})  # step 5 again after a resume: its training row wins
        logger.log_eval(5, {"eval/synthetic/avg@4": 0.77})  # ... and its evaluation row


def test_eval_rows_beside_training_rows(tmp_path: Path) -> None:
    _write_run(tmp_path, 10)
    lines = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    evals = [r for r in lines if r.get("kind") == EVAL_KIND]
    assert [r["step"] for r in evals] == [0, 5, 10, 5] and all("reward" not in r for r in evals)
    assert all("kind" not in r for r in lines if "reward" in r)
    records = read_metrics(tmp_path / METRICS_FILE)
    assert [r["step"] for r in records] == list(range(11))
    assert "kind" not in records[0] and records[0]["eval/synthetic/avg@4"] == 0.125 and "reward" not in records[0]
    assert records[5]["reward"] == 0.99 and records[5]["eval/synthetic/avg@4"] == 0.77
    assert "eval/synthetic/maj@4" not in records[5]  # the repeated evaluation row replaced the first one whole
    assert records[10]["reward"] == 1.0 and records[10]["eval/synthetic/pass@4"] == 1.0
    assert eval_keys(records) == [
        "eval/synthetic/avg@4", "eval/synthetic/maj@4", "eval/synthetic/pass@4", "eval/synthetic/length",
    ]  # fmt: skip


def test_eval_console_line(tmp_path: Path) -> None:
    assert format_eval_line(25, {**EVAL, "eval/synthetic/length_correct": None}) == (
        "eval step 25 | synthetic avg@4 0.250 pass@4 0.500 maj@4 0.300 len 6.5 fmt 0.125 | 1.2 s"
    )
    out = io.StringIO()
    with MetricsLogger(tmp_path, rank=0, console_every=1, tensorboard=False, stream=out) as logger:
        logger.log_eval(3, {"eval/a/avg@2": 1.0, "eval/b/avg@2": float("nan")})
    assert out.getvalue() == "eval step 3 | a avg@2 1.000 | b avg@2 nan\n"
    other = MetricsLogger(tmp_path / "rank1", rank=1, tensorboard=False, stream=out)
    other.log_eval(3, EVAL)  # only rank 0 writes
    assert not (tmp_path / "rank1").exists()


def test_plots_draw_eval_curves_and_overlay_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    _write_run(tmp_path / "grpo", 40)
    _write_run(tmp_path / "sfpo", 30, scale=0.8)
    names = {p.name for p in plot_run(tmp_path / "grpo")}
    assert {"eval_synthetic_avg@4.png", "eval_synthetic_pass@4.png", "accuracy.png", "overview.png"} <= names

    written = overlay([tmp_path / "grpo", tmp_path / "sfpo"], tmp_path / "cmp", keys=["accuracy", "nothing"])
    assert [p.name for p in written] == ["accuracy.png", "overview.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    with pytest.raises(ValueError, match="2 labels for 1 runs"):
        overlay([tmp_path / "grpo"], tmp_path / "x", labels=["a", "b"])

    assert plot_main([str(tmp_path / "grpo"), str(tmp_path / "sfpo"), "--labels", "GRPO", "SFPO"]) == 0
    printed = capsys.readouterr().out.split()
    assert str(tmp_path / "compare" / "eval_synthetic_avg@4.png") in printed
    assert str(tmp_path / "compare" / "reward.png") in printed
    assert plot_main([str(tmp_path / "grpo"), str(tmp_path / "missing")]) == 1
