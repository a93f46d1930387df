"""The vllm engine on the real vllm-cpu: weight sync checked by log-probs, both modes, the trainer, the evaluation.

Runs in `make test-vllm`'s environment (.venv-vllm, vllm-cpu 0.32.0); everywhere else it skips. Each case starts its
own engine under torchrun (tests/_vllm_cpu_check.py) or its own loopback server, and stops it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.vllm_server import LoopbackServer, vllm_env

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "tests" / "_vllm_cpu_check.py"

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm-cpu: make test-vllm"),
]


def _torchrun(*args: str, nproc: int = 1, timeout: float = 600) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    env = vllm_env(TRITON_INTERPRET="0")
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    return out.stdout


def _check_rounds(result: dict) -> None:
    """Every round: the engine's log-probs of its own samples are the trainer's to 1e-5 (fp32), after each update;
    the samples change with the weights; a skipped sync is caught by the trainer's check."""
    rounds = result["rounds"]
    assert len(rounds) >= 3
    for r in rounds:
        assert r["tokens"] > 0 and r["max_abs"] < 1e-5, result
    assert all(r["changed"] for r in rounds[1:]), result  # generation followed the new weights
    assert result["stale_gap"] > 1e-3 and "other weights than the trainer's" in result["caught"], result


@pytest.mark.parametrize("tie", ["tied", "untied"])
def test_colocated_engine_matches_the_trainer_after_every_update(tmp_path: Path, tie: str) -> None:
    _torchrun(str(CHECK), str(tmp_path), "colocated", tie)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["route"] == "extension"  # every vLLM weight-transfer backend needs CUDA
    _check_rounds(result)


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """A loopback vLLM server (dummy weights, the worker extension, development routes) for `request.param`'s
    model; stopped afterwards."""
    tie = request.param
    folder = tmp_path / "server_model"
    subprocess.run([sys.executable, str(CHECK), "--model-dir", str(folder), tie], cwd=ROOT, check=True)
    running = LoopbackServer(folder, tmp_path / "server.log", max_model_len=256, TRITON_INTERPRET="0")
    try:
        yield running.url, tie
    finally:
        running.stop()


@pytest.mark.parametrize("server", ["tied", "untied"], indirect=True)
def test_server_engine_pushes_over_gloo_and_matches_the_trainer(tmp_path: Path, server: tuple[str, str]) -> None:
    url, tie = server
    _torchrun(str(CHECK), str(tmp_path), "server", tie, url)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["route"] == "extension"
    _check_rounds(result)


def test_built_in_job_trains_on_vllm_and_evaluates(tmp_path: Path) -> None:
    """`make run-vllm`'s job (2 ranks, colocated) for a few steps: the stale-weights check is on (auto, fp32) and
    every step's engine log-probs agree with the trainer's; the in-run evaluation and `python -m trainer.eval` on
    the run both run on the vllm engine and agree."""
    run = tmp_path / "run"
    _torchrun(
        "-m", "trainer.main", "--config", "vllm_cpu", "optim.total_steps=3", "eval.every=3",
        f"logging.run_dir={run}", f"warm_start.cache={ROOT / 'runs' / '.warm_start'}",
        nproc=2, timeout=900,
    )  # fmt: skip
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "rollout/logp_abs_diff" in r]
    assert len(steps) == 3 and all(r["rollout/logp_abs_diff"] < 1e-5 for r in steps), steps
    evals = [r for r in rows if "eval/synthetic/avg@4" in r]
    assert [r["step"] for r in evals] == [0, 3], rows
    out = subprocess.run(
        [sys.executable, "-m", "trainer.eval", str(run), "--json", str(tmp_path / "eval.json")],
        cwd=ROOT, env=vllm_env(TRITON_INTERPRET="0"), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    again = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    assert again["eval/synthetic/avg@4"] == pytest.approx(evals[-1]["eval/synthetic/avg@4"], abs=1e-9)
