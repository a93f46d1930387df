"""One rank's failure ends the job in seconds with one line; user code that exits is a failure, never a success.

Each case runs the real trainer under torchrun and the real exception (issue 27): a reward function that raises on
rank 1 only, one that calls `sys.exit(0)` or `os._exit(0)` in-process, a reward module that exits at import, and a
console that goes away (stdout into a closed pipe).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer import failure

ROOT = Path(__file__).resolve().parents[1]

REWARDS = """
import os, sys

def raise_on_rank1(responses, answers, prompts):
    if os.environ.get("RANK") == "1":
        raise ValueError("scorer lost its table")
    return [0.0] * len(responses)

def exit_zero(responses, answers, prompts):
    sys.exit(0)

def hard_exit_zero(responses, answers, prompts):
    os._exit(0)

def exit_zero_on_rank1(responses, answers, prompts):
    if os.environ.get("RANK") == "1":
        sys.exit(0)
    return [0.0] * len(responses)

def out_of_memory(responses, answers, prompts):
    table = bytearray(1 << 60)  # 1 EiB: malloc fails at once, a real MemoryError
    return [float(len(table))] * len(responses)

def generator(responses, answers, prompts):
    return (0.0 for _ in responses)
"""


def _launch(tmp_path: Path, *args: str, nproc: int = 1) -> tuple[subprocess.CompletedProcess, float]:
    from test_trainer_run import SMALL

    (tmp_path / "rewards_mod.py").write_text(REWARDS)
    env = dict(os.environ, TRITON_INTERPRET="0", OMP_NUM_THREADS="1", FASTSLOW_ERROR_FILE=str(tmp_path / "err.txt"))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "trainer.main", f"logging.run_dir={tmp_path / 'run'}", *SMALL, "optim.total_steps=2", *args,
    ]  # fmt: skip
    start = time.monotonic()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    return out, time.monotonic() - start


@pytest.mark.distributed
@pytest.mark.slow
def test_a_reward_that_raises_on_one_rank_ends_the_job_in_seconds(tmp_path: Path) -> None:
    """Before: rank 1 waited in the closing barrier while rank 0 waited in the step's all-reduce, silently, for
    `parallel.timeout_s` (1800 s)."""
    fn = f"reward.function={tmp_path / 'rewards_mod.py'}:raise_on_rank1"
    out, seconds = _launch(tmp_path, fn, "reward.timeout_s=0", "parallel.timeout_s=600", nproc=2)
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("rank 1 failed")]
    assert len(lines) == 1, out.stderr[-3000:]
    assert "at step 1: RewardError: reward function" in lines[0] and "scorer lost its table" in lines[0]
    assert f"(traceback: {tmp_path / 'run' / 'error_rank1.log'})" in lines[0]
    assert "ValueError: scorer lost its table" in (tmp_path / "run" / "error_rank1.log").read_text()
    assert (tmp_path / "err.txt").read_text() == lines[0] + "\n"  # the cause, not a peer's consequence
    assert "trainer/step.py" not in out.stderr  # no traceback on the console
    # The start (two processes importing torch and building the model) dominates; the teardown itself is seconds.
    assert seconds < 60, seconds


@pytest.mark.distributed
@pytest.mark.slow
def test_sys_exit_on_one_rank_ends_the_job_in_seconds(tmp_path: Path) -> None:
    """`sys.exit(0)` in an in-process reward on rank 1 of 2: before, the same silent hang as a raise (rank 1 in the
    closing barrier, rank 0 in the step's all-reduce) until `parallel.timeout_s`."""
    fn = f"reward.function={tmp_path / 'rewards_mod.py'}:exit_zero_on_rank1"
    out, seconds = _launch(tmp_path, fn, "reward.timeout_s=0", "parallel.timeout_s=600", nproc=2)
    assert out.returncode != 0, out.stderr[-3000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("rank 1 failed")]
    assert len(lines) == 1, out.stderr[-3000:]
    assert f"at step 1: RewardError: reward function {tmp_path / 'rewards_mod.py'}:exit_zero_on_rank1" in lines[0]
    assert "called sys.exit(0)" in lines[0], lines[0]
    assert (tmp_path / "err.txt").read_text() == lines[0] + "\n"
    assert "trainer/step.py" not in out.stderr  # no traceback on the console
    assert seconds < 60, seconds  # start-up included; the teardown itself is seconds


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("timeout_s", ["0", "120"], ids=["in_process", "in_a_child"])
@pytest.mark.parametrize(
    ("fn", "what"),
    [
        # SMALL: 4 prompts x 4 responses, one chunk on one rank
        ("out_of_memory", "raised on a chunk of 16 samples: MemoryError; the first sample that raises alone is 0"),
        ("generator", "returned a generator, not a list of 16 numbers (one per response)"),
    ],
)
def test_a_reward_out_of_memory_or_returning_a_generator_is_one_line_exit_1(
    tmp_path: Path, fn: str, what: str, timeout_s: str
) -> None:
    """Before: a 29-line traceback, though the message inside was good."""
    out, _ = _launch(tmp_path, f"reward.function={tmp_path / 'rewards_mod.py'}:{fn}", f"reward.timeout_s={timeout_s}")
    assert "exitcode  : 1" in out.stderr, out.stderr[-3000:]  # `rank R failed`: exit 1 (README, exit codes)
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("rank ")]
    assert len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith(f"rank 0 failed at step 1: RewardError: reward function {tmp_path / 'rewards_mod.py'}")
    assert f":{fn} {what}" in lines[0], lines[0]
    assert str(ROOT / "trainer") not in out.stderr, out.stderr[-3000:]  # no frame of ours (torchrun has its own)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("fn", ["exit_zero", "hard_exit_zero"])
def test_user_code_that_exits_is_a_reward_error_not_a_success(tmp_path: Path, fn: str) -> None:
    out, _ = _launch(tmp_path, f"reward.function={tmp_path / 'rewards_mod.py'}:{fn}", "reward.timeout_s=0")
    assert out.returncode != 0, out.stderr[-3000:]
    line = next(ln for ln in out.stderr.splitlines() if ln.startswith("rank 0 failed"))
    what = "called sys.exit(0)" if fn == "exit_zero" else "called os._exit(0)"
    assert f"RewardError: reward function {tmp_path / 'rewards_mod.py'}:{fn}" in line and what in line, line
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


@pytest.mark.distributed
@pytest.mark.slow
def test_a_reward_module_that_exits_at_import_is_a_bad_input(tmp_path: Path) -> None:
    """Before: `sys.exit(3)` at import ended the run with 3, the "diverged" status, and no line."""
    bad = tmp_path / "exits.py"
    bad.write_text("import sys\nsys.exit(3)\ndef f(r, a, p):\n    return [0.0] * len(r)\n")
    out, _ = _launch(tmp_path, f"reward.function={bad}:f")
    assert "exitcode  : 2" in out.stderr, out.stderr[-3000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("config error:")]
    assert len(lines) == 1 and "reward.function" in lines[0] and "SystemExit" in lines[0], lines


@pytest.mark.distributed
@pytest.mark.slow
def test_a_console_that_goes_away_does_not_end_the_run(tmp_path: Path) -> None:
    """stdout into a pipe whose reader closes after the first line (`make run | head -n 1`): the run finishes and
    saves; before, rank 0's BrokenPipeError hung the job in the closing barrier."""
    from test_trainer_run import SMALL

    env = dict(os.environ, TRITON_INTERPRET="0", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "trainer.main",
        f"logging.run_dir={tmp_path / 'run'}", *SMALL, "optim.total_steps=3", "parallel.timeout_s=600",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()  # the reader goes away
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "kind" not in r] == [1, 2, 3]
    assert (tmp_path / "run" / "checkpoints" / "step_00000003").is_dir()


def test_peer_losses_are_told_apart_from_causes() -> None:
    assert failure.is_peer_loss(RuntimeError("[gloo] Connection closed by peer [127.0.0.1]:1234"))
    assert not failure.is_peer_loss(ValueError("scorer lost its table"))
    assert failure.one_line(SystemExit(0)) == "SystemExit(0) raised by the code being run"
    assert failure.one_line(ValueError("a\nb")) == "ValueError: a"
    assert len(failure.one_line(ValueError("x" * 1000))) == 400


def test_report_failure_writes_the_first_cause_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTSLOW_ERROR_FILE", str(tmp_path / "err"))
    try:
        raise ValueError("boom")
    except ValueError as err:
        line = failure.report_failure(err, rank=1, step=4, run_dir=tmp_path)
    assert line.startswith("rank 1 failed at step 5: ValueError: boom (traceback: ")
    failure.report_failure(RuntimeError("Connection reset by peer"), rank=0, step=4, run_dir=tmp_path)
    failure.report_failure(KeyError("later"), rank=0, step=4, run_dir=None)
    assert (tmp_path / "err").read_text() == line + "\n"
    assert "ValueError: boom" in (tmp_path / "error_rank1.log").read_text()
