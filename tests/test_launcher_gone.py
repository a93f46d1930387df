"""A torchrun worker ends within a second or two once its launcher is killed (`trainer.signals.die_with_launcher`).

torchrun starts each worker in a session of its own: a SIGKILL to torchrun (or to its process group) used to leave
the workers waiting in a collective until `parallel.timeout_s`, holding the launcher's stdout open.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_WORKER = """
import os, sys, time
sys.path.insert(0, {root!r})
from trainer.signals import die_with_launcher
die_with_launcher(poll_s=0.1)
open({pidfile!r}, "w").write(str(os.getpid()))
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


@pytest.mark.distributed
def test_worker_exits_when_torchrun_is_killed(tmp_path: Path) -> None:
    pidfile = tmp_path / "worker.pid"
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(root=str(ROOT), pidfile=str(pidfile)))
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = subprocess.Popen(
        [str(torchrun), "--standalone", "--nproc_per_node=1", str(script)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            assert launcher.poll() is None, launcher.stderr.read() if launcher.stderr else ""
            time.sleep(0.1)
        worker = int(pidfile.read_text())
        assert _alive(worker)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=30)
        gone_by = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < gone_by:
            time.sleep(0.05)
        assert not _alive(worker), "the worker outlived its launcher by 10 s"
    finally:
        launcher.kill()
        if pidfile.exists() and pidfile.read_text():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_a_worker_whose_launcher_died_during_its_imports_exits_at_once(tmp_path: Path) -> None:
    """The race that kept a worker alive in the rendezvous: torchrun killed while the worker was still importing.
    Its parent is then no launcher (here: this pytest process, with torchrun's environment faked), and it exits
    with one line instead of asking the kernel to watch a parent it no longer has."""
    pidfile = tmp_path / "worker.pid"
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(root=str(ROOT), pidfile=str(pidfile)))
    env = {**os.environ, "TORCHELASTIC_RUN_ID": "x", "RANK": "1"}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and not pidfile.exists()
    assert out.stderr.strip() == f"rank 1: the launcher (torchrun, pid {os.getpid()}) is gone; exiting"
