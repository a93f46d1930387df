"""A dry online filter never loses the run: `rollout.on_filter_exhausted` = partial / skip / stop and
`rollout.max_dry_steps`, on 2 gloo ranks (the "fill" default is tested in test_trainer_run.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Keeps only groups with accuracy strictly between 0.99 and 1: none, with 4 samples per group, so every step is dry.
NEVER_KEEP = ("algorithm.filter=custom", "algorithm.filter_schedule=1.0:0.99:1.0", "rollout.max_chunks=1")


def _launch(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    from test_trainer_run import SMALL

    env = dict(os.environ, TRITON_INTERPRET="0", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "trainer.main",
        f"logging.run_dir={run_dir}", *SMALL, *args,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _stopping_line(out: subprocess.CompletedProcess) -> str:
    lines = [line for line in out.stderr.splitlines() if line.startswith("stopping:")]
    assert len(lines) == 1, out.stderr[-3000:]
    return lines[0]


@pytest.mark.distributed
@pytest.mark.slow
def test_stop_saves_then_skip_goes_on_until_max_dry_steps(tmp_path: Path) -> None:
    stopped = _launch(tmp_path, *NEVER_KEEP, "rollout.on_filter_exhausted=stop", "checkpoint.every=0")
    assert "exitcode  : 4" in stopped.stderr, stopped.stderr[-3000:]
    line = _stopping_line(stopped)
    assert "the online filter ran dry at step 1" in line and "saved" in line and "--resume auto" in line
    assert (tmp_path / "checkpoints" / "step_00000000").is_dir()  # the run is not lost: it resumes from here

    resumed = _launch(
        tmp_path, *NEVER_KEEP, "--resume", "auto", "rollout.on_filter_exhausted=skip", "rollout.max_dry_steps=2",
        "optim.total_steps=5",
    )  # fmt: skip
    assert "exitcode  : 4" in resumed.stderr, resumed.stderr[-3000:]
    line = _stopping_line(resumed)
    assert "ran dry 2 steps in a row (rollout.max_dry_steps)" in line and "the last at step 2" in line
    assert (tmp_path / "checkpoints" / "step_00000002").is_dir()
    rows = [r for r in _rows(tmp_path) if "eval" not in json.dumps(r)]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:  # skipped: no update ran, nothing was synced, the rollouts' reward is still reported
        assert row["rollout/dry"] == 1.0 and row["rollout/skipped"] == 1.0 and row["sync/bytes"] == 0.0
        assert "actor/pg_loss" not in row and 0.0 <= row["accuracy"] <= 1.0


@pytest.mark.distributed
@pytest.mark.slow
def test_partial_trains_on_the_groups_kept_the_same_count_on_each_rank(tmp_path: Path) -> None:
    from test_trainer_run import SHORT_WARM_START

    warm = (*SHORT_WARM_START, f"warm_start.cache={tmp_path.parent / 'warm'}")
    out = _launch(
        tmp_path, "algorithm.filter=dapo", "rollout.max_chunks=1", "rollout.on_filter_exhausted=partial",
        "optim.total_steps=4", *warm,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rows = _rows(tmp_path)
    assert len(rows) == 4
    for row in rows:
        assert row["rollout/filled_groups"] == 0.0  # never topped up
        assert row["rollout/kept_groups"] == int(row["rollout/kept_groups"])  # the same count on both ranks
        if row["rollout/dry"] and not row["rollout/skipped"]:
            assert 0 < row["rollout/kept_groups"] < 2 and "actor/pg_loss" in row
    assert any(row["rollout/dry"] for row in rows)
