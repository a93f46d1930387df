"""Test set-up: the Triton code runs through its interpreter on CPU-only machines, compiled on a GPU.

`TRITON_INTERPRET` must be set before `triton.jit` decorates the kernels, i.e. before `fastslow.kernels` is imported,
which is why this happens at the top of the first file pytest loads.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # for the subprocesses; this process: below

import pytest
import torch.distributed as dist
from _distributed import free_port

from bench import triton_launches
from fastslow.kernels._dispatch import force_backend, interpreting, native_available
from fastslow.kernels._triton import HAS_TRITON

# One torch thread per test process (`make test` runs two, pytest-xdist): on a shared 2-core machine a second
# OpenMP thread spinning at its barriers made small-tensor work several times slower, not faster.
torch.set_num_threads(1)

# Every interpreted launch is recorded, so tests/test_triton_compile.py compiles what this session launched.
triton_launches.install_recorder()

_LAUNCH_DIR = "FASTSLOW_LAUNCH_DIR"
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The files with the most `slow` tests first (a stable sort: files stay whole and in order otherwise), so that
    under pytest-xdist (`make test`: `-n 2 --dist loadfile`) the long files start at once instead of running last
    on one worker while the other is idle."""
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])


def _xdist_worker(config: pytest.Config) -> str | None:
    return getattr(config, "workerinput", {}).get("workerid")


def pytest_configure(config: pytest.Config) -> None:
    """The process that runs the session (pytest-xdist's controller, or the only one) gives the workers a folder in
    which each leaves its recorded Triton launches (`_check_launches_are_committed`)."""
    if _xdist_worker(config) is None:
        os.environ[_LAUNCH_DIR] = tempfile.mkdtemp(prefix="fastslow_launches_")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """With `FASTSLOW_RECORD_TRITON=FILE`, write the session's recorded Triton launches there. Under pytest-xdist,
    each worker leaves its launches for the controller, which checks them all against the committed recording."""
    path = triton_launches.save_on_exit_path()
    if path is not None:
        triton_launches.save(triton_launches.recorded(), path)
    folder = Path(os.environ.get(_LAUNCH_DIR, ""))
    worker = _xdist_worker(session.config)
    if not folder.is_dir():
        return
    if worker is not None:
        triton_launches.save(triton_launches.recorded(), folder / f"{worker}.json")
        return
    _check_launches_are_committed(session, sorted(folder.glob("*.json")))
    shutil.rmtree(folder, ignore_errors=True)


def _check_launches_are_committed(session: pytest.Session, parts: list[Path]) -> None:
    """tests/test_triton_compile.py compiles the committed recording and its own worker's launches; the launches of
    the other workers are checked here: a kernel launched in this session but absent from tests/triton_launches.json
    fails the session, as that test fails for its own process."""
    if not parts:
        return
    launched = {r["kernel"] for part in parts for r in triton_launches.load(part)}
    missing = sorted(launched - {r["kernel"] for r in triton_launches.load()})
    if missing:
        session.config.get_terminal_writer().line(
            f"launched here but missing from tests/triton_launches.json: {missing}; run `make compile-report` "
            "and commit its two files",
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(params=available_backends())
def backend(request: pytest.FixtureRequest):
    """Runs the test once per backend (Triton and the torch path), forcing the dispatch."""
    with force_backend(request.param):
        yield request.param


@pytest.fixture
def one_rank():
    """The trainer's view of a process group of one on the CPU (gloo, in-memory store) with its mesh."""
    from torch.distributed.device_mesh import init_device_mesh

    from trainer.dist import DistInfo

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield DistInfo(0, 1, 0, torch.device("cpu"), init_device_mesh("cpu", (1,)))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def group_of_one():
    """A gloo process group of one in this process (what trainer/dist.py makes for a plain run)."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
