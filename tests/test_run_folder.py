"""The run folder is safe from the run's own mistakes (issue 27): nothing is deleted before every input has passed,
one run writes into a folder at a time, a cut metrics row is repaired, a damaged warm-start cache is named and
trained again, and a temperature that trains nothing is refused for every engine.

World size 1 in this process (`main([...])`), but for the lock, which needs a second live process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_input_errors import QUICK, _group_of_one  # noqa: F401 (the autouse fixture: a fresh group per main())

from trainer.config import ConfigError, load_config
from trainer.main import main
from trainer.metrics import repair_partial_row

ROOT = Path(__file__).resolve().parents[1]


def _files(run: Path) -> dict[str, bytes]:
    files = [p for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock"]
    return {str(p.relative_to(run)): p.read_bytes() for p in files}


@pytest.mark.slow
def test_overwrite_deletes_nothing_until_every_input_has_passed(tmp_path: Path, capfd) -> None:
    run = tmp_path / "run"
    assert main([f"logging.run_dir={run}", *QUICK]) == 0
    before = _files(run)
    assert "metrics.jsonl" in before and any(k.startswith("checkpoints/") for k in before)
    for bad in (f"data.source={tmp_path / 'typo.jsonl'}", f"model.path={tmp_path / 'no_model'}"):
        capfd.readouterr()
        assert main([f"logging.run_dir={run}", *QUICK, "logging.overwrite=true", bad]) == 2
        assert len(capfd.readouterr().err.strip().splitlines()) == 1
        assert _files(run) == before, bad  # before the fix: checkpoints, metrics, config gone
    capfd.readouterr()
    assert main([f"logging.run_dir={run}", *QUICK, "logging.overwrite=true", "optim.total_steps=2"]) == 0
    out = capfd.readouterr().out
    assert f"logging.overwrite: replaced the run in {run} (metrics.jsonl, checkpoints)" in out
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.slow
def test_a_start_that_never_trained_leaves_no_run_behind(tmp_path: Path, capfd) -> None:
    """A config.toml and an empty metrics.jsonl (a start that failed before its first row) do not hold a run."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text("seed = 0\n")
    (run / "metrics.jsonl").write_text("")
    (run / "error_rank0.log").write_text("Traceback ...\n")
    assert main([f"logging.run_dir={run}", *QUICK]) == 0
    assert not (run / "error_rank0.log").exists()
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1]


_HOLD = """
import sys, time
sys.path.insert(0, {root!r})
from trainer import run_lock
from pathlib import Path
lock = run_lock.acquire(Path({run!r}))
print("locked", flush=True)
time.sleep(120)
"""


def test_one_run_at_a_time_in_a_folder(tmp_path: Path, capfd) -> None:
    """A second run into a folder another live process holds is refused with one line; once that process is gone
    (SIGKILL: no clean release), the next run takes the folder over and says whose lock it was."""
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD.format(root=str(ROOT), run=str(run))], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        for extra in ([], ["--resume", "auto"]):
            capfd.readouterr()
            assert main([f"logging.run_dir={run}", *QUICK, *extra]) == 2
            lines = capfd.readouterr().err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"error: logging.run_dir = {str(run)!r} is in use by")
            assert f"(pid {holder.pid} on " in lines[0] and "wait for it to end, or choose another folder" in lines[0]
            assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    capfd.readouterr()
    assert main([f"logging.run_dir={run}", *QUICK]) == 0
    err = capfd.readouterr().err
    assert f"warning: run folder lock: the previous holder (pid {holder.pid} on " in err and "is gone" in err
    assert (run / ".lock").read_text() == ""  # released at a clean end
    capfd.readouterr()
    assert main([f"logging.run_dir={run}", *QUICK, "--resume", "auto", "optim.total_steps=2"]) == 0
    assert "run folder lock" not in capfd.readouterr().err  # a clean end leaves nothing to take over


def test_a_partial_metrics_row_is_cut_on_resume(tmp_path: Path, capfd) -> None:
    run = tmp_path / "run"
    assert main([f"logging.run_dir={run}", *QUICK]) == 0
    metrics = run / "metrics.jsonl"
    whole = metrics.read_bytes()
    metrics.write_bytes(whole + b'{"step": 2, "rew')  # the disk filled mid-row
    capfd.readouterr()
    assert main([f"logging.run_dir={run}", *QUICK, "--resume", "auto", "optim.total_steps=2"]) == 0
    assert "metrics.jsonl: dropped a partial last row (16 bytes" in capfd.readouterr().out
    assert [json.loads(x)["step"] for x in metrics.read_text().splitlines()] == [1, 2]
    from trainer.plot import read_metrics

    read_metrics(metrics)  # before: "metrics.jsonl:5: not a JSON line"


def test_repair_partial_row(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    assert repair_partial_row(path) == 0
    path.write_bytes(b"")
    assert repair_partial_row(path) == 0
    path.write_bytes(b'{"a": 1}\n')
    assert repair_partial_row(path) == 0 and path.read_bytes() == b'{"a": 1}\n'
    path.write_bytes(b"x" * 100_000)  # no newline at all: nothing whole to keep
    assert repair_partial_row(path) == 100_000 and path.read_bytes() == b""
    path.write_bytes(b'{"a": 1}\n' + b"y" * 70_000)  # the newline is more than one read block back
    assert repair_partial_row(path) == 70_000 and path.read_bytes() == b'{"a": 1}\n'


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_a_temperature_that_trains_nothing_is_refused_for_every_engine(engine: str) -> None:
    """Before: `rollout.temperature=1e-30` with the hf engine trained 3 steps with grad norm 0, silently."""
    with pytest.raises(ConfigError, match=r"rollout.temperature = 1e-30: must be 0 \(greedy\) or >= 0.01"):
        load_config([f"rollout.engine={engine}", "rollout.temperature=1e-30"])
    assert load_config(["rollout.temperature=0"]).rollout.temperature == 0
    assert load_config(["rollout.temperature=0.01"]).rollout.temperature == 0.01


@pytest.mark.slow
def test_a_damaged_warm_start_cache_is_named_and_trained_again(tmp_path: Path, capfd) -> None:
    cache = tmp_path / "warm"
    args = [*QUICK, "warm_start.mode=auto", "warm_start.steps=5", f"warm_start.cache={cache}"]
    assert main([f"logging.run_dir={tmp_path / 'a'}", *args]) == 0
    (path,) = cache.glob("*.safetensors")
    assert "crc32" in json.loads(path.with_suffix(".json").read_text())
    size = path.stat().st_size
    with open(path, "r+b") as f:  # zero bytes inside a tensor: the header still reads, the size is the same
        f.seek(size - 5000)
        f.write(bytes(4000))
    capfd.readouterr()
    assert main([f"logging.run_dir={tmp_path / 'b'}", *args]) == 0
    err = capfd.readouterr().err
    assert f"warning: warm start: the cache is damaged ({path} does not match its checksum" in err
    assert "training it again" in err and path.stat().st_size == size
    path.write_bytes(b"\x00" * 64)  # a broken header (before: a 109-line SafetensorError, run after run)
    capfd.readouterr()
    assert main([f"logging.run_dir={tmp_path / 'c'}", *args]) == 0
    assert f"warning: warm start: the cache is damaged ({path}" in capfd.readouterr().err


def test_a_killed_holder_is_seen_as_gone_quickly(tmp_path: Path) -> None:
    """The kernel drops a flock with its process: no waiting, no stale-lock timeout."""
    from trainer import run_lock

    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD.format(root=str(ROOT), run=str(tmp_path))], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    with pytest.raises(run_lock.RunFolderBusy, match=f"pid {holder.pid}"):
        run_lock.acquire(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    start = time.monotonic()
    lock = run_lock.acquire(tmp_path)
    assert time.monotonic() - start < 1 and lock.taken_over and f"pid {holder.pid}" in lock.taken_over
    lock.release()


def test_resume_refuses_a_changed_data_position_by_name(tmp_path: Path, capfd) -> None:
    """Before: every healthy checkpoint was called "does not load (sampler state ...)" and the run exited 2."""
    rows = [{"prompt": f"{i} + 1 =", "answer": str(i + 1)} for i in range(8)]
    source = tmp_path / "d.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    args = [f"logging.run_dir={run}", *QUICK, f"data.source={source}"]
    assert main(args) == 0
    capfd.readouterr()
    assert main([*args, "--resume", "auto", "optim.total_steps=2", "rollout.prompts_per_step=4"]) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "rollout.prompts_per_step = 2 -> 4" in lines[0] and "does not load" not in lines[0]
    with source.open("a") as f:
        f.write(json.dumps({"prompt": "9 + 1 =", "answer": "10"}) + "\n")
    assert main([*args, "--resume", "auto", "optim.total_steps=2"]) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "holds 9 usable prompts now, 8 when" in lines[0] and "(the file changed)" in lines[0]
