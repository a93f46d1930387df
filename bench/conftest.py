"""Benchmark set-up: the device, the session's ceilings, and which providers may run here.

Markers (registered here, so `--strict-markers` accepts them), set on a case by the benchmark modules:
- `gpu_only(reason)`: the provider only runs on CUDA; skipped on a CPU-only machine with that reason.
- `uses_triton`: the provider runs Triton kernels on this device (ours and torch.compile on CUDA). Skipped under
  `TRITON_INTERPRET=1`: the interpreter is not a performance path. (On the CPU, `ours` is forced onto the real
  CPU backend, see `bench._harness.ours_backend`, so the variable cannot change what is measured there.)

torch.compile on the CPU (inductor's C++ backend) was measured on the 2-core development machine: about 35 s for
the first graph on a fresh machine, 4-6 s for each further one, and the whole CPU suite in about a minute with an
empty inductor cache; so the `compiled` provider runs on the CPU too, and is
skipped with the error as its reason if inductor cannot build there (no C++ compiler).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch._dynamo.config

from bench._harness import bench_device, ceilings, device_info, triton_interpreting

# One torch.compile'd function per (provider, shape): shapes are static (`dynamic=False`), so every shape is a
# new graph of the same code object; the default limit of 8 would silently fall back to eager on a GPU's shapes.
for _name in ("recompile_limit", "cache_size_limit"):
    if hasattr(torch._dynamo.config, _name):
        setattr(torch._dynamo.config, _name, 64)
for _name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
    if hasattr(torch._dynamo.config, _name):
        setattr(torch._dynamo.config, _name, max(getattr(torch._dynamo.config, _name), 512))

DEVICE = bench_device()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu_only(reason): provider that only runs on a CUDA device")
    config.addinivalue_line("markers", "uses_triton: provider that runs Triton kernels on this device")
    # liger-kernel's import touches torch.jit.script_method, deprecated in recent torch: noise, not a finding.
    config.addinivalue_line("filterwarnings", "ignore:.*torch.jit.script_method.*:DeprecationWarning")


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("gpu_only")
    if marker is not None and DEVICE.type != "cuda":
        pytest.skip(marker.args[0] if marker.args else "needs a CUDA device")
    if item.get_closest_marker("uses_triton") is not None and triton_interpreting():
        pytest.skip("TRITON_INTERPRET=1 is set: Triton's interpreter is not a performance path; unset it to benchmark")


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """Keep the JSON host-name free and put the device and versions in it."""
    machine_info.pop("node", None)
    machine_info["device_info"] = device_info(DEVICE)


@pytest.fixture(scope="session")
def device() -> torch.device:
    """CUDA when available, else the CPU."""
    return DEVICE


@pytest.fixture(scope="session")
def ceil(device: torch.device) -> dict[str, float]:
    """The device's matmul TFLOP/s and copy GB/s, measured once per session."""
    return ceilings(device)


@pytest.fixture(scope="session")
def dist_info() -> Iterator[Any]:
    """The trainer's process group of one (`trainer.dist.init_distributed`: gloo on the CPU, nccl on CUDA), its
    mesh and device; made on first use, destroyed at the end of the session, the environment put back."""
    from trainer.dist import close, init_distributed

    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    saved = {k: os.environ.get(k) for k in keys}
    info = init_distributed()
    try:
        yield info
    finally:
        close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(autouse=True)
def _seed_and_free(device: torch.device):
    torch.manual_seed(0)
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
