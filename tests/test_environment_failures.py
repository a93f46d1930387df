"""The machine's own failures, each one line (issue 27): a taken MASTER_PORT, a run folder name too long, a read-only
run folder, a full disk during a checkpoint, SIGHUP to torchrun (saves like SIGTERM), SIGTERM during the warm start
(ends at once, not after torchrun's 30 s grace). Real conditions: a bound socket, a tmpfs mounted as root (skipped
with a reason elsewhere), real signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_input_errors import QUICK, _group_of_one  # noqa: F401 (autouse: a fresh group per main())
from test_trainer_run import SMALL

from trainer.main import main

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, TRITON_INTERPRET="0", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _torchrun(run_dir: Path, *args: str, nproc: int = 2) -> subprocess.Popen:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "trainer.main", f"logging.run_dir={run_dir}", *SMALL, *args,
    ]  # fmt: skip
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """`mount_tmpfs(size)` mounts a tmpfs of that size (root only; skipped with a reason elsewhere), unmounted after
    the test."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
        if out.returncode:
            pytest.skip("mount -t tmpfs is not permitted here")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_master_port_in_use_is_one_line(tmp_path: Path, capfd, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("MASTER_PORT", str(port))
        assert main([f"logging.run_dir={tmp_path / 'run'}", *QUICK]) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert lines == [f"error: MASTER_PORT={port}: the address is already in use (another job on this machine?): "
                     "unset MASTER_PORT, or export a free port"]  # fmt: skip


def test_a_run_folder_name_too_long_is_one_line(tmp_path: Path, capfd) -> None:
    run = tmp_path / ("x" * 300)
    assert main([f"logging.run_dir={run}", *QUICK]) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert lines == [f"error: logging.run_dir = {str(run)!r}: cannot use it (File name too long)"]


def test_a_read_only_run_folder_on_resume_is_one_line(mount_tmpfs, capfd) -> None:
    fs = mount_tmpfs("64m")
    run = fs / "run"
    assert main([f"logging.run_dir={run}", *QUICK]) == 0
    subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
    capfd.readouterr()
    assert main([f"logging.run_dir={run}", *QUICK, "--resume", "auto"]) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert lines == [f"error: logging.run_dir = {str(run)!r}: cannot use it (Read-only file system)"]


@pytest.mark.distributed
@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_is_one_line(mount_tmpfs) -> None:
    """Before: a traceback per rank. The save fails on the rank whose shard did not fit; rank 0 names it. 1.5 MB:
    room for a run folder's first files, not for a checkpoint."""
    proc = _torchrun(mount_tmpfs("1500k") / "run", "optim.total_steps=3", "checkpoint.every=1")
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode != 0
    lines = [ln for ln in out.splitlines() if ln.startswith("rank ")]
    assert len(lines) == 1, out[-3000:]
    # torch's writer says ENOSPC or "unexpected pos" (a short write), by where the disk filled; the line says both
    assert lines[0].startswith("rank 0 failed at step ") and "CheckpointException (rank " in lines[0], lines
    assert "MiB free on the run folder's disk)" in lines[0], lines
    assert "trainer/checkpoint/__init__.py" not in out  # no worker traceback (torchrun prints its own report)


def _wait_for(path: Path, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and what in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{what!r} never appeared in {path}")


@pytest.mark.distributed
@pytest.mark.slow
def test_sighup_to_torchrun_saves_like_sigterm(tmp_path: Path) -> None:
    """torchrun forwards SIGHUP (a closed terminal) to its workers; before, it killed them with nothing saved."""
    run = tmp_path / "run"
    proc = _torchrun(run, "optim.total_steps=200")
    _wait_for(run / "metrics.jsonl", '"step": 2,')
    proc.send_signal(signal.SIGHUP)
    out, _ = proc.communicate(timeout=120)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    reached = rows[-1]["step"]
    assert f"SIGHUP: stopped after step {reached}/200" in out, out[-3000:]
    assert (run / "checkpoints" / f"step_{reached:08d}").is_dir()


@pytest.mark.distributed
@pytest.mark.slow
def test_sigterm_during_the_warm_start_ends_the_job_at_once(tmp_path: Path) -> None:
    """Before: the supervised pass ignored SIGTERM for 80 s, past torchrun's 30 s grace, so the workers were
    SIGKILLed. Now it stops at the next of its steps, writes no cache, and the job ends 0."""
    run, cache = tmp_path / "run", tmp_path / "warm"
    proc = _torchrun(run, "warm_start.mode=auto", "warm_start.steps=3000", f"warm_start.cache={cache}")
    assert proc.stdout is not None
    for line in proc.stdout:  # rank 0 says it starts the pass
        if line.startswith("warm start:"):
            break
    time.sleep(1.0)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert time.monotonic() - start < 15, out[-3000:]
    assert "SIGTERM: stopped while starting (a stop was requested during the warm start" in out, out[-3000:]
    assert not list(cache.glob("*.safetensors"))
