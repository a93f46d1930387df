"""Crashes lose nothing: SIGKILL at any point then `--resume auto`, SIGTERM's clean stop, and NaN steps stopping.

The runs are the built-in job at test_trainer_run.py's small settings, 2 processes under torchrun. torchrun starts
each worker in a session of its own, so "the whole job" is torchrun's process group plus every descendant's; the
helpers here find them through /proc (Linux only, as is the kernel's parent-death signal that trainer/signals.py
sets so that killing torchrun alone leaves no worker behind).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from test_trainer_run import ROOT, SMALL

from trainer.checkpoint import find_latest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="finds the job's processes through /proc")

TOTAL = 7
ARGS = (*SMALL, f"optim.total_steps={TOTAL}", "checkpoint.every=1")
ENV = dict(os.environ, TRITON_INTERPRET="0", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
# Metrics that depend on the clock or the machine, not on the computation (as in test_trainer_run's resume test).
SKIP_KEYS = {"time", "tokens_per_s", "sync/seconds"}
TMP_RE = re.compile(r"step_\d+\.tmp")


# --------------------------------------------------------------------------------------------------- helpers
def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, process group) of a live process; None once it is gone (or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid, pgrp = text[text.rindex(")") + 2 :].split()[:3]
    return None if state in "ZX" else (state, int(ppid), int(pgrp))


def _job(root: int) -> set[int]:
    """`root` and all its live descendants."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            parents[int(entry.name)] = st[1]
    found, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [c for c, p in parents.items() if p == pid and c not in found]
        found.update(children)
        frontier.extend(children)
    return found


def _alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if _stat(pid) is not None}


def _wait_gone(pids: set[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(pids), f"processes of the job survived: {_alive(pids)}"


def launch(run_dir: Path, *args: str) -> subprocess.Popen:
    """torchrun with 2 workers in a new session; output goes to run_dir/../<name>.log (no pipe to fill)."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "trainer.main", f"logging.run_dir={run_dir}", *ARGS, *args,
    ]  # fmt: skip
    log = open(run_dir.parent / f"{run_dir.name}.{time.monotonic_ns()}.log", "w")  # noqa: SIM115 (child's)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = Path(log.name)  # type: ignore[attr-defined]
    log.close()
    return proc


def output(proc: subprocess.Popen) -> str:
    return proc.log_path.read_text()  # type: ignore[attr-defined]


def finish(proc: subprocess.Popen, timeout: float = 240) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_job(proc)
        raise


def kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun's process group and each worker's (its own session); none of them may survive."""
    pids = _job(proc.pid)
    groups = {st[2] for pid in pids if (st := _stat(pid)) is not None}
    for group in groups:
        with contextlib.suppress(ProcessLookupError):  # gone already
            os.killpg(group, signal.SIGKILL)
    proc.wait(timeout=30)
    _wait_gone(pids)
    survivors = {int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and (st := _stat(int(e.name)))
                 and st[2] in groups}  # fmt: skip
    assert not survivors, f"processes left in the job's groups: {survivors}"


def wait_until(
    proc: subprocess.Popen, cond: Callable[[], bool], what: str, *, period: float = 0.05, timeout: float = 120
) -> None:
    """Polls `cond` every `period` seconds while the job runs."""
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) before {what}:\n{output(proc)[-4000:]}")
        if time.monotonic() > deadline:
            kill_job(proc)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(period)


def tmp_saves(run_dir: Path) -> list[Path]:
    ckpts = run_dir / "checkpoints"
    return [p for p in ckpts.iterdir() if TMP_RE.fullmatch(p.name)] if ckpts.is_dir() else []


def latest_step(run_dir: Path) -> int:
    pointer = run_dir / "checkpoints" / "latest"
    try:
        return int(pointer.read_text().strip().removeprefix("step_"))
    except (OSError, ValueError):  # not written yet, or caught between its write and its rename
        return 0


def metrics(run_dir: Path) -> list[dict]:
    """The complete lines of metrics.jsonl (a line being written has no newline yet)."""
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().split("\n")[:-1]] if path.exists() else []


def assert_same_metrics(a: dict, b: dict) -> None:
    for k in a:
        if k.startswith(("time", "sys/", "mem")) or k in SKIP_KEYS:
            continue
        assert a[k] == b[k], (k, a[k], b[k])


def sigterm_workers(proc: subprocess.Popen) -> None:
    """SIGTERM to every worker, as a scheduler sends it (torchrun, signalled itself, would forward it)."""
    for pid in _job(proc.pid) - {proc.pid}:
        os.kill(pid, signal.SIGTERM)


# ------------------------------------------------------------------------------------------------------ tests
@pytest.mark.distributed
@pytest.mark.slow
def test_killed_anywhere_or_stopped_then_resumed_matches_the_uninterrupted_run(tmp_path):
    """One run folder taken through every interruption in turn (one test: each torchrun start costs ~10 s)."""
    straight = tmp_path / "straight"
    straight.mkdir()
    proc = launch(straight)
    assert finish(proc) == 0, output(proc)[-6000:]
    uninterrupted = metrics(straight)[-1]
    run_dir = tmp_path / "run"
    run_dir.mkdir()

    # SIGKILL before the first save, to torchrun only: its workers must follow (parent-death signal).
    proc = launch(run_dir)
    wait_until(proc, lambda: (run_dir / "config.toml").exists(), "the trainer started")
    workers = _job(proc.pid) - {proc.pid}
    assert workers, "no worker processes found under torchrun"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    _wait_gone(workers)
    assert find_latest(run_dir) is None

    # SIGKILL during a save (not the first, so an older complete checkpoint exists): the `.tmp` folder stays and
    # is ignored with a warning.
    proc = launch(run_dir, "--resume", "auto")
    # A save of this tiny model takes tens of milliseconds: poll every 2 ms.
    in_save = lambda: any(int(p.name[5:-4]) >= 2 for p in tmp_saves(run_dir))
    wait_until(proc, in_save, "a save in progress", period=0.002)
    kill_job(proc)
    (partial,) = tmp_saves(run_dir)
    with pytest.warns(UserWarning, match="incomplete checkpoint"):
        last = find_latest(run_dir)
    assert last is not None and int(last.name[5:]) < int(partial.name[5:-4])

    # SIGKILL right after a save completed (`latest` moved past the checkpoint this start resumed from).
    resumed_from = int(last.name[5:])
    proc = launch(run_dir, "--resume", "auto")
    wait_until(proc, lambda: latest_step(run_dir) > resumed_from, "a save after resuming", period=0.002)
    kill_job(proc)
    assert not tmp_saves(run_dir)

    # SIGTERM mid-run: the ranks stop after the same step, save there, exit 0 (so torchrun exits 0 too). No
    # periodic saves in this part, so the checkpoint at the step reached is the stop's own.
    resumed_from = latest_step(run_dir)
    proc = launch(run_dir, "checkpoint.every=0", "--resume", "auto")
    wait_until(proc, lambda: metrics(run_dir)[-1]["step"] > resumed_from, "a step after resuming")
    sigterm_workers(proc)
    assert finish(proc, timeout=60) == 0, output(proc)[-6000:]
    reached = metrics(run_dir)[-1]["step"]
    assert resumed_from < reached < TOTAL
    assert latest_step(run_dir) == reached
    assert f"SIGTERM: stopped after step {reached}/{TOTAL}" in output(proc)

    # The resumed run ends where the uninterrupted one did, with the same metrics.
    proc = launch(run_dir, "--resume", "auto")
    assert finish(proc) == 0, output(proc)[-6000:]
    resumed = metrics(run_dir)[-1]
    assert resumed["step"] == TOTAL
    assert_same_metrics(uninterrupted, resumed)


# A run of one process whose GRPO loss turns NaN from step POISON_FROM on (so every gradient is NaN): a test build
# of the step made by patching two names before main() runs, no hook in the trainer. After each step it saves the
# parameters and the AdamW state, to show the skipped steps left both untouched.
NAN_SCRIPT = textwrap.dedent("""
    import sys
    import torch
    import trainer.policy as policy
    import trainer.trainer as trainer_mod
    from trainer.main import main

    out, poison_from = sys.argv[1], int(sys.argv[2])
    real_loss, real_step = policy.linear_grpo_loss, trainer_mod.train_step
    poisoned = [False]

    def local(t):
        return (t.to_local() if hasattr(t, "to_local") else t).detach().clone()

    def loss(*args, **kwargs):
        value, metrics = real_loss(*args, **kwargs)
        return (value * float("nan") if poisoned[0] else value), metrics

    def train_step(ctx, step):
        poisoned[0] = step >= poison_from
        metrics = real_step(ctx, step)
        state = {f"param/{n}": local(p) for n, p in ctx.policy.named_parameters()}
        for n, p in ctx.policy.named_parameters():
            state.update({f"optim/{n}/{k}": local(v) for k, v in ctx.optimizer.state[p].items()})
        torch.save(state, f"{out}/state_{step + 1}.pt")
        return metrics

    policy.linear_grpo_loss = loss
    trainer_mod.train_step = train_step
    sys.exit(main(sys.argv[3:]))
""")
POISON_FROM, MAX_BAD = 2, 3  # poisoned from step 3 on; stop after 3 bad steps (optim.max_bad_steps)


@pytest.mark.slow
def test_nan_steps_skip_updates_then_stop_with_the_last_good_checkpoint(tmp_path):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    run_dir, states = tmp_path / "run", tmp_path / "states"
    states.mkdir()
    stop_at = POISON_FROM + MAX_BAD
    cmd = [
        sys.executable, "-c", NAN_SCRIPT, str(states), str(POISON_FROM), f"logging.run_dir={run_dir}",
        *SMALL, f"optim.total_steps={stop_at + 4}", "checkpoint.every=1", "checkpoint.keep=2",
        f"optim.max_bad_steps={MAX_BAD}",
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=240)
    assert out.returncode == 3, out.stdout[-3000:] + out.stderr[-6000:]

    good = run_dir / "checkpoints" / f"step_{POISON_FROM:08d}"
    assert f"{MAX_BAD} bad steps in a row" in out.stderr and f"last good checkpoint: {good}" in out.stderr
    lines = metrics(run_dir)
    assert [line["bad_steps"] for line in lines] == [0] * POISON_FROM + list(range(1, MAX_BAD + 1))
    assert all(line["actor/skipped_updates"] == 1 for line in lines[POISON_FROM:])

    # Parameters and optimizer state did not move on any skipped step.
    before = torch.load(states / f"state_{POISON_FROM}.pt", weights_only=True)
    for step in range(POISON_FROM + 1, stop_at + 1):
        after = torch.load(states / f"state_{step}.pt", weights_only=True)
        assert after.keys() == before.keys()
        for k in before:
            assert torch.equal(before[k], after[k]), (step, k)

    # Nothing was saved after the good steps; the last good checkpoint is complete and holds those same weights.
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_00000001", good.name]
    assert find_latest(run_dir) == good
    dcp_to_torch_save(good, tmp_path / "good.pt")
    saved = torch.load(tmp_path / "good.pt", weights_only=True)["model"]
    params = {k.removeprefix("param/"): v for k, v in before.items() if k.startswith("param/")}
    assert params.keys() <= saved.keys()
    for k, v in params.items():
        assert torch.equal(saved[k], v), k
    assert torch.load(good / "trainer_state.pt", weights_only=True)["bad_steps"] == 0
