"""The vllm engine on a GPU: a weight update, then generation whose log-probs match the trainer's; a sleep/wake cycle.

Runs only where CUDA and vllm (the `vllm` extra, vLLM 0.33.0) are installed; everywhere else it skips with the
reason. The engine's CPU-testable parts are in tests/test_vllm_params.py and tests/test_vllm_engine_fake.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.vllm_server import wait_healthy

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm: pip install .[vllm]"),
]


def _routes() -> list[str]:
    from trainer.rollout.vllm_params import has_weight_transfer

    return ["native", "extension"] if has_weight_transfer() else ["extension"]


CHECK = ROOT / "tests" / "_vllm_gpu_check.py"
EXTENSION = "trainer.rollout.vllm_worker.WeightLoaderExtension"


def _run_check(tmp_path: Path, mode: str, *extra: str, gpu: str = "0") -> dict:
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES=gpu)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
        str(CHECK), str(tmp_path), mode, *extra,
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    return json.loads((tmp_path / "result.json").read_text())


def _check_agreement(result: dict) -> None:
    for phase in ("first", "second"):  # bf16 engine vs bf16 trainer forward: same weights, different kernels
        assert result[phase]["tokens"] > 0
        assert result[phase]["mean_abs"] < 0.02 and result[phase]["max_abs"] < 0.5, result
    assert result["tokens_differ"], result  # the second generation used the new weights
    assert result["largest_tensor_bytes"] > result["bucket_bytes"], result  # a tensor larger than the bucket synced


@pytest.mark.parametrize("route", ["native", "extension"])
def test_update_then_generate_matches_the_trainer_and_survives_sleep(tmp_path: Path, route: str) -> None:
    if route not in _routes():
        pytest.skip("the installed vLLM has no native weight-transfer API")
    result = _run_check(tmp_path, route)
    assert result["route"] == route
    _check_agreement(result)
    assert result["freed_by_sleep_bytes"] > 0, result  # level 2: weights and KV cache left the GPU


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="server mode needs two GPUs (NCCL refuses one GPU twice)")
@pytest.mark.parametrize("route", ["native", "extension"])
def test_server_mode_nccl_push_then_generate(tmp_path: Path, route: str) -> None:
    """`vllm serve` on GPU 1 (dummy weights; vLLM's NCCL weight transfer or our worker extension), the trainer on
    GPU 0."""
    if route not in _routes():
        pytest.skip("the installed vLLM has no native weight-transfer API")
    subprocess.run([sys.executable, str(CHECK), "--model-dir", str(tmp_path / "model")], cwd=ROOT, check=True)
    port = 18000 + os.getpid() % 1000
    env = dict(os.environ, VLLM_SERVER_DEV_MODE="1", CUDA_VISIBLE_DEVICES="1")
    server = subprocess.Popen(
        [
            sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(tmp_path / "model"),
            "--port", str(port), "--load-format", "dummy", "--max-model-len", "256", "--enforce-eager",
            "--gpu-memory-utilization", "0.3", "--weight-transfer-config", '{"backend": "nccl"}',
            "--logprobs-mode", "processed_logprobs", "--generation-config", "vllm",
            *(["--worker-extension-cls", EXTENSION] if route == "extension" else []),
        ],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_healthy(url, server, 600):
            pytest.fail(f"vllm serve did not come up: {(server.stderr.read() if server.stderr else '')[-4000:]}")
        result = _run_check(tmp_path, f"server-{route}", url, gpu="0")
        assert result["route"] == f"server-{route}"
        _check_agreement(result)
    finally:
        server.terminate()
        server.wait(timeout=60)
