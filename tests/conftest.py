"""Test set-up: the Triton code runs through its interpreter on CPU-only machines, compiled on a GPU.

`TRITON_INTERPRET` must be set before `triton.jit` decorates the kernels, i.e. before `kernels` is imported,
which is why this happens at the top of the first file pytest loads.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch.distributed as dist
from _distributed import free_port

from bench import triton_launches
from kernels._dispatch import force_backend, interpreting, native_available
from kernels._triton import HAS_TRITON

# Every interpreted launch is recorded, so tests/test_triton_compile.py compiles what this session launched.
triton_launches.install_recorder()

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def triton_runs_here() -> bool:
    """Triton kernels can run: compiled on a GPU, or interpreted on the CPU."""
    return HAS_TRITON and (DEVICE.type == "cuda" or interpreting())


def available_backends(*, native: bool = False) -> list[str]:
    """Backends a kernel test should cover on this machine."""
    names = ["torch"]
    if triton_runs_here():
        names.append("triton")
    if native and DEVICE.type == "cpu" and native_available():
        names.append("native")
    return names


def pytest_sessionfinish(session: pytest.Session) -> None:
    """With `FASTSLOW_RECORD_TRITON=FILE`, write the session's recorded Triton launches there."""
    path = triton_launches.save_on_exit_path()
    if path is not None:
        triton_launches.save(triton_launches.recorded(), path)


@pytest.fixture(params=available_backends())
def backend(request: pytest.FixtureRequest):
    """Runs the test once per backend (Triton and the torch path), forcing the dispatch."""
    with force_backend(request.param):
        yield request.param


@pytest.fixture(scope="module")
def group_of_one():
    """A gloo process group of one in this process (what trainer/dist.py makes for a plain run)."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
