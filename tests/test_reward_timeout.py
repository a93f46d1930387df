"""`reward.timeout_s`: a user reward function runs in a killable child process; a hang costs at most the limit (an
error under `reward.on_error`), and Ctrl-C stops a run whose reward function hangs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.reward import user as R
from trainer.reward import worker as reward_worker
from trainer.signals import Interrupted, StopFlag

ROOT = Path(__file__).resolve().parents[1]
RESPONSES, ANSWERS, PROMPTS = ["a", "b", "c"], ["1", "2", "3"], ["p", "q", "r"]


@pytest.fixture(autouse=True)
def _no_children_left():
    yield
    reward_worker.shutdown()


def _call(fn, on_error: str = "raise", timeout_s: float = 5.0) -> tuple[torch.Tensor, int]:
    return R.call_reward_fn(fn, RESPONSES, ANSWERS, PROMPTS, name="m:fn", on_error=on_error, timeout_s=timeout_s)


def _hangs(responses, answers, prompts):
    time.sleep(60)
    return [1.0] * len(responses)


def test_in_a_child_the_results_and_checks_are_the_same() -> None:
    for out in ([1, 0.5, True], np.array([1.0, 0.5, 1.0]), torch.tensor([1.0, 0.5, 1.0])):
        rewards, errors = _call(lambda r, a, p, out=out: out)
        assert errors == 0 and rewards.tolist() == [1.0, 0.5, 1.0]
    with pytest.raises(R.RewardError, match=r"returned nan for sample 1 of 3 in this chunk \(response 'b'"):
        _call(lambda r, a, p: [1.0, float("nan"), 1.0])
    assert _call(lambda r, a, p: [1.0, None, 2.0], "zero")[1] == 1
    with pytest.raises(R.RewardError, match="returned 2 rewards for 3 samples"):
        _call(lambda r, a, p: [1.0, 1.0])


def test_in_a_child_an_exception_names_its_type_and_the_first_failing_sample() -> None:
    def strict(responses, answers, prompts):
        if "b" in responses:
            raise KeyError("no b")
        return [1.0] * len(responses)

    with pytest.raises(R.RewardError) as err:
        _call(strict)
    assert "raised on a chunk of 3 samples: KeyError: 'no b'" in str(err.value)
    assert "the first sample that raises alone is 1" in str(err.value)
    assert _call(strict, "zero")[1] == 3


def test_a_hanging_call_is_killed_at_the_limit_and_counts_as_an_error() -> None:
    start = time.monotonic()
    rewards, errors = _call(_hangs, "zero", timeout_s=0.5)
    assert time.monotonic() - start < 10 and errors == 3 and rewards.tolist() == [0.0] * 3
    with pytest.raises(R.RewardError, match=r"reward function m:fn took longer than reward.timeout_s = 0.5 s"):
        _call(_hangs, timeout_s=0.5)
    assert _call(lambda r, a, p: [2.0] * 3)[0].tolist() == [2.0] * 3  # the next call gets a fresh child


def test_a_stop_request_interrupts_a_hanging_call() -> None:
    with StopFlag() as stop:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        previous = signal.signal(signal.SIGALRM, lambda *_: stop._handle(signal.SIGINT, None))
        try:
            start = time.monotonic()
            with pytest.raises(Interrupted):
                reward_worker.run(_hangs, (["a"], ["1"], ["p"]), 30.0)
            assert time.monotonic() - start < 5
        finally:
            signal.signal(signal.SIGALRM, previous)
    assert id(_hangs) not in reward_worker._children  # its child was killed and forgotten


def test_a_negative_timeout_is_a_config_error() -> None:
    from trainer.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"reward.timeout_s = -1.0: must be a number >= 0"):
        load_config(["reward.timeout_s=-1"])


@pytest.mark.slow
def test_ctrl_c_stops_a_run_whose_reward_function_hangs(tmp_path: Path) -> None:
    from test_trainer_run import SMALL

    marker = tmp_path / "called"
    module = tmp_path / "hang_reward.py"
    module.write_text(
        "import pathlib, time\n"
        "def fn(responses, answers, prompts):\n"
        f"    pathlib.Path({str(marker)!r}).write_text('x')\n"
        "    time.sleep(600)\n"
        "    return [0.0] * len(responses)\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="0", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable, "-m", "trainer.main", f"logging.run_dir={tmp_path / 'run'}", *SMALL,
        f"reward.function={module}:fn", "rollout.prompts_per_step=2",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), proc.communicate()[1][-3000:] if proc.poll() is not None else "never called"
    proc.send_signal(signal.SIGINT)
    stopped_at = time.monotonic()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert time.monotonic() - stopped_at < 30  # not the reward's 600 s, nor its 120 s limit
    assert "SIGINT: stopped during step 1/3 while the reward function was running" in out
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or not [
        json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
