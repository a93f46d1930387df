"""Resume at another world size: a run written by 2 processes goes on with 1, then with 2 again (past a damaged
checkpoint), through the same data order: the global count of prompts consumed per step is the uninterrupted
run's, and tests/test_trainer_data.py shows the prompts themselves are the same at any world size. A world size
that does not divide `rollout.prompts_per_step` is refused with one line before anything is read
(tests/test_trainer_run.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_trainer_run import ROOT, SMALL

PROMPTS = 4  # SMALL's rollout.prompts_per_step
ARGS = (*SMALL, "checkpoint.every=1", "checkpoint.keep=10")


def _launch(run_dir: Path, nproc: int, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TRITON_INTERPRET="0", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
        "trainer.main", f"logging.run_dir={run_dir}", *ARGS, *args,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.distributed
def test_two_then_one_then_two_processes_continue_the_same_data_order(tmp_path: Path) -> None:
    """2 processes for steps 1-2, 1 for steps 3-4, then step 4's shard is cut in half: 2 processes fall back to step
    3 (both ranks the same choice) and run steps 4-5."""
    first = _launch(tmp_path, 2, "optim.total_steps=2")
    assert first.returncode == 0, first.stderr[-3000:]
    fewer = _launch(tmp_path, 1, "optim.total_steps=4", "--resume", "auto")
    assert fewer.returncode == 0, fewer.stderr[-3000:]
    ckpts = tmp_path / "checkpoints"
    assert f"resumed from {ckpts / 'step_00000002'} at step 2 (written by 2 processes, now 1)" in fewer.stdout
    shard = ckpts / "step_00000004" / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    more = _launch(tmp_path, 2, "optim.total_steps=5", "--resume", "auto")
    assert more.returncode == 0, more.stderr[-3000:]
    warnings = [line for line in more.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"{shard} is cut short" in warnings[0], more.stderr[-3000:]
    assert f"resumed from {ckpts / 'step_00000003'} at step 3 (written by 1 processes, now 2)" in more.stdout

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 4, 5]  # step 4 again: its checkpoint was lost
    assert [r["rollout/prompts_seen"] for r in rows] == [PROMPTS * r["step"] for r in rows]
    for step in (2, 3, 4, 5):  # one state file, whichever world size wrote it
        folder = ckpts / f"step_{step:08d}"
        assert sorted(p.name for p in folder.glob("trainer_state*")) == ["trainer_state.pt"]
        state = torch.load(folder / "trainer_state.pt", weights_only=True)
        assert state["step"] == step and state["sampler"]["consumed"] == PROMPTS * step and "rng" not in state
    assert [len(list((ckpts / f"step_{s:08d}").glob("*.distcp"))) for s in (2, 3, 4)] == [2, 1, 2]
