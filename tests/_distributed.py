"""A 2-rank gloo process group on CPU for distributed tests: spawn, run a worker on each rank, fail on error or hang.

The ranks are spawned, so they import the worker's test module and this one afresh: neither may import
`fastslow.kernels` at the top when a worker must set `TRITON_INTERPRET` first.
"""

from __future__ import annotations

import faulthandler
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD_SIZE = 2


def run_two_ranks(worker_fn: Callable[..., None], *args: Any, timeout_s: float) -> None:
    """Runs `worker_fn(rank, *args)` on ranks 0 and 1 of a gloo group; re-raises a rank's failure here.

    `worker_fn` must be a module-level function (it is pickled by name). Each rank runs with one torch thread (the
    two share a small machine). A rank's exception comes back with its traceback, and the other rank is ended; if
    the ranks are still running after `timeout_s` (a hung collective), both are killed and the test fails.
    """
    port = free_port()
    ctx = mp.start_processes(
        _rank_main, args=(worker_fn, port, args), nprocs=WORLD_SIZE, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout_s
    # join() re-raises a rank's exception (with its traceback) or exit code, and terminates the other rank.
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
                proc.join(timeout=10.0)
            pytest.fail(f"ranks still running after {timeout_s:.0f} s: a hung collective?")


def _rank_main(rank: int, worker_fn: Callable[..., None], port: int, args: tuple[Any, ...]) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)  # two ranks share a small machine
    faulthandler.enable()  # a crash in native code prints the Python stack of every thread
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        worker_fn(rank, *args)
    finally:
        dist.destroy_process_group()
    # A rank that passed ends here, without the interpreter's teardown: about one run in eight, a C++ thread left
    # joinable by torch's own teardown aborted the process ("terminate called without an active exception") after
    # the worker had passed. A failing worker raised above, and the spawn wrapper reports it as before.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
