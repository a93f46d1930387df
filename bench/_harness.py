"""Measuring for the benchmarks: device facts, the session's ceilings, timing, peak memory, and `run_case`.

GPU timing goes through `triton.testing.do_bench` (CUDA events around each call, the L2 cache flushed between
calls, warm-up first, quantiles over the repeats); pytest-benchmark's own timer is also run, on a function that
ends with `torch.cuda.synchronize()` so that its wall clock waits for the GPU. On the CPU the median comes from
pytest-benchmark's rounds (`time.perf_counter`), and `time_it` does the same by hand.

Peak extra memory is measured on CUDA only (`torch.cuda.max_memory_allocated` above what was allocated before
the call). On the CPU it is None: the claim that the chunked CPU path never holds `[N, V]` is checked by
tests/test_linear_grpo.py, which measures it in subprocesses.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import gc
import platform
import re
import statistics
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import torch

from fastslow.kernels._dispatch import force_backend, interpreting, native_available

MiB = 1 << 20
GiB = 1 << 30

# pytest-benchmark rounds: enough for a median, few on the CPU so the suite stays under 5 minutes.
_ROUNDS = {"cpu": (3, 30, 0.5), "cuda": (5, 20, 1.0)}  # (min rounds, max rounds, seconds of rounds wanted)

_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64"}


def bench_device() -> torch.device:
    """The device the suite measures: the current CUDA device when there is one, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def dtype_name(dtype: torch.dtype) -> str:
    """Short dtype name used in ids and tables ("bf16", "fp32")."""
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def _device_info(kind: str, index: int | None) -> dict[str, Any]:
    if kind == "cuda":
        name = torch.cuda.get_device_name(index)
        detail = {"cuda": torch.version.cuda, "device_count": torch.cuda.device_count()}
    else:
        name = _cpu_model()
        detail = {"cpu_threads": torch.get_num_threads()}
    try:
        import triton

        triton_version: str | None = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": name,
        "device_type": kind,
        **detail,
        "torch": torch.__version__,
        "triton": triton_version,
        "liger_kernel": _version("liger-kernel"),
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def device_info(device: torch.device | None = None) -> dict[str, Any]:
    """Device name, versions (torch, triton, liger-kernel or None) and the UTC date; no host name."""
    device = bench_device() if device is None else torch.device(device)
    return dict(_device_info(device.type, device.index if device.type == "cuda" else None))


def slug(text: str) -> str:
    """Lower-case, with runs of anything but letters and digits turned into one '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


def results_stem(device: torch.device | None = None) -> str:
    """File name (no suffix) for a run's results: the device name slugified and the UTC date and time."""
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H%MZ")
    return f"{slug(device_info(device)['device'])}_{now}"


# ---------------------------------------------------------------------------------------------------- timing


def _gpu_bench(fn: Callable[[], Any], device: torch.device) -> list[float]:
    """`do_bench` with a budget sized to the call: at least ~10 timed calls, median / p20 / p80 in ms."""
    from triton.testing import do_bench

    fn()
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    one_ms = (time.perf_counter() - t0) * 1e3
    warmup = max(25.0, 2.0 * one_ms)
    rep = max(100.0, 10.0 * one_ms)
    out = do_bench(fn, warmup=int(warmup), rep=int(rep), quantiles=[0.5, 0.2, 0.8])
    return [float(x) for x in out]


def _quantiles_ms(seconds: list[float]) -> dict[str, float]:
    data = sorted(seconds)
    if len(data) == 1:
        p20 = p80 = data[0]
    else:
        q = statistics.quantiles(data, n=10, method="inclusive")  # deciles: q[1] = p20, q[7] = p80
        p20, p80 = q[1], q[7]
    return {"median_ms": statistics.median(data) * 1e3, "p20_ms": p20 * 1e3, "p80_ms": p80 * 1e3}


def time_it(fn: Callable[[], Any], device: torch.device, *, repeats: int = 5) -> dict[str, float]:
    """Median, 20th and 80th percentile of one call of `fn`, in milliseconds.

    CUDA: `triton.testing.do_bench` (CUDA events, L2 flushed between calls). CPU: `time.perf_counter` over
    `repeats` calls after one warm-up call.
    """
    if device.type == "cuda":
        median, p20, p80 = _gpu_bench(fn, device)
        return {"median_ms": median, "p20_ms": p20, "p80_ms": p80}
    fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return _quantiles_ms(times)


def peak_extra_bytes(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Bytes `fn` allocates at its peak beyond what was allocated before it ran (CUDA); None on the CPU.

    The benchmarks' functions set the gradients they produce to None before computing new ones, so the previous
    call's gradients are in the baseline and freed during the call: the figure is the memory a call needs beyond
    its inputs and one set of gradients (a fused path that keeps its gradients until backward counts them).
    On the CPU this is not measured here: tests/test_linear_grpo.py checks the chunked path's peak memory
    against the eager path in subprocesses.
    """
    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    _sync(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


def free_memory(device: torch.device) -> None:
    """Collect the models a benchmark dropped (FSDP2's hooks hold reference cycles to their modules) and give the
    device's cached blocks back, before the next model is built."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------- ceilings


def _time_matmul(n: int, dtype: torch.dtype, device: torch.device) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return time_it(lambda: torch.mm(a, b), device)["median_ms"]


def _time_copy(n_bytes: int, device: torch.device) -> float:
    src = torch.full((n_bytes // 4,), 1.0, device=device, dtype=torch.float32)
    dst = torch.empty_like(src)
    return time_it(lambda: dst.copy_(src), device)["median_ms"]


@functools.cache
def _ceilings(kind: str, index: int | None) -> dict[str, float]:
    device = torch.device(kind, index) if index is not None else torch.device(kind)
    if kind == "cuda":
        n, dtype, copy_bytes = 8192, torch.bfloat16, GiB
    else:
        n, dtype, copy_bytes = 1024, torch.float32, 256 * MiB
    mm_ms = _time_matmul(n, dtype, device)
    copy_ms = _time_copy(copy_bytes, device)
    if kind == "cuda":
        torch.cuda.empty_cache()
    return {
        "matmul_tflops": 2.0 * n**3 / (mm_ms * 1e-3) / 1e12,
        "copy_gbps": 2.0 * copy_bytes / (copy_ms * 1e-3) / 1e9,  # read + write
        "matmul_shape": float(n),
        "copy_bytes": float(copy_bytes),
    }


def ceilings(device: torch.device) -> dict[str, float]:
    """The device's measured ceilings, once per session: GEMM TFLOP/s and copy GB/s (read + write bytes).

    CUDA: a bf16 8192^3 `torch.mm` and a 1 GiB `dst.copy_(src)`, timed with `do_bench`.
    CPU: an fp32 1024^3 `torch.mm` and a 256 MiB copy.
    """
    device = torch.device(device)
    return dict(_ceilings(device.type, device.index if device.type == "cuda" else None))


# ---------------------------------------------------------------------------------------------------- backends


def ours_backend(device: torch.device, *, has_native: bool = False) -> contextlib.AbstractContextManager[None]:
    """The context `ours` runs in: automatic dispatch on CUDA (Triton), the real CPU path on the CPU.

    On the CPU the backend is forced ("native" where the op has one and the library is built, else "torch"), so
    that a stray `TRITON_INTERPRET=1` cannot turn the measurement into one of Triton's interpreter.
    """
    if device.type == "cuda":
        return contextlib.nullcontext()
    return force_backend("native" if has_native and native_available() else "torch")


def backend_name(device: torch.device, *, has_native: bool = False) -> str:
    """Which backend `ours` runs on `device` (recorded in each row's extra_info)."""
    from fastslow.kernels._dispatch import backend_for

    with ours_backend(device, has_native=has_native):
        return backend_for(device, has_native=has_native)


def triton_interpreting() -> bool:
    """True when `TRITON_INTERPRET=1`: Triton kernels would run in the interpreter, which is not a perf path."""
    return interpreting()


# ---------------------------------------------------------------------------------------------------- run_case


def _round_count(seconds_per_call: float, device: torch.device) -> int:
    lo, hi, budget = _ROUNDS["cuda" if device.type == "cuda" else "cpu"]
    if seconds_per_call <= 0:
        return hi
    return int(max(lo, min(hi, budget / seconds_per_call)))


def run_case(
    benchmark: Any,
    fn: Callable[[], Any],
    *,
    group: str,
    provider: str,
    shape: str,
    dtype: str,
    mode: str,
    device: torch.device,
    flops: float | None = None,
    bytes_moved: float | None = None,
    check: Callable[[], float] | None = None,
    extra: dict[str, Any] | None = None,
    rounds: int | None = None,
    work: tuple[float | Callable[[], float], str] | None = None,
) -> dict[str, Any]:
    """Benchmark `fn` (one full call of the case, e.g. forward+backward) and fill `benchmark.extra_info`.

    `fn` is called once first (compilation, autotuning, allocator warm-up; its time is kept as `first_call_s`;
    a `compiled` provider that cannot build on the CPU is skipped there), then once more, measured for peak extra
    memory (CUDA), then timed with `do_bench` (CUDA), and run through `benchmark.pedantic` so that pytest-benchmark
    records it too (its function synchronises the GPU). `flops` gives TFLOP/s against the matmul ceiling,
    `bytes_moved` gives GB/s against the copy ceiling. `check`, when given, returns a float (a loss value, a
    checksum) recorded as `check` so that rows of one group can be seen to compute the same thing.

    For calls that take seconds (a whole training step), `rounds` fixes the number of pytest-benchmark rounds
    (no extra warm-up round) and makes them the timer on CUDA too: each round is one call ended by
    `torch.cuda.synchronize()`, timed by the wall clock, with no `do_bench` (its L2 flush and repeats are for
    kernels). `work = (amount, unit)` records a rate with no ceiling, `amount / median seconds` in `unit` (e.g.
    response tokens, "tokens/s"); `amount` may be a function, called after the timing, for work that varies from
    call to call. At most one of `flops`, `bytes_moved`, `work`.
    """
    if sum(x is not None for x in (flops, bytes_moved, work)) > 1:
        raise ValueError("run_case: give at most one of flops, bytes_moved, work")
    benchmark.group = f"{group} {shape} {dtype}"
    t0 = time.perf_counter()
    warm_or_skip(fn, provider, device)
    _sync(device)
    first_s = time.perf_counter() - t0  # includes any compilation
    t0 = time.perf_counter()
    peak = peak_extra_bytes(fn, device)  # CUDA: one call, measured; the CPU: nothing measured, nothing called
    if peak is None:
        fn()
        _sync(device)
    one_s = time.perf_counter() - t0

    gpu_times = time_it(fn, device) if device.type == "cuda" and rounds is None else None

    def fn_synced() -> None:
        fn()
        _sync(device)

    fixed = rounds is not None
    rounds = rounds if rounds is not None else _round_count(one_s, device)
    benchmark.pedantic(fn_synced, rounds=rounds, warmup_rounds=0 if fixed else 1, iterations=1)

    if gpu_times is not None:
        times = gpu_times
        timer = "triton.testing.do_bench"
    elif benchmark.stats is not None:
        times = _quantiles_ms(list(benchmark.stats.stats.data))
        timer = "pytest-benchmark (time.perf_counter" + (", torch.cuda.synchronize)" if device.type == "cuda" else ")")
    else:  # --benchmark-disable: pedantic ran the function once and kept no stats
        times = time_it(fn_synced, torch.device("cpu"), repeats=rounds) if fixed else time_it(fn, device)
        timer = "time.perf_counter"

    ceil = ceilings(device)
    seconds = times["median_ms"] * 1e-3
    info: dict[str, Any] = {
        "provider": provider,
        "group": group,
        "shape": shape,
        "dtype": dtype,
        "mode": mode,
        **{k: round(v, 6) for k, v in times.items()},
        "timer": timer,
        "rounds": rounds,
        "first_call_s": round(first_s, 3),
        "peak_extra_bytes": peak,
        "flops": flops,
        "bytes_moved": bytes_moved,
    }
    if flops is not None:
        rate = flops / seconds / 1e12
        info.update(rate=rate, rate_unit="TFLOP/s", ceiling="matmul", ceiling_rate=ceil["matmul_tflops"])
        info["fraction_of_ceiling"] = rate / ceil["matmul_tflops"]
    elif bytes_moved is not None:
        rate = bytes_moved / seconds / 1e9
        info.update(rate=rate, rate_unit="GB/s", ceiling="copy", ceiling_rate=ceil["copy_gbps"])
        info["fraction_of_ceiling"] = rate / ceil["copy_gbps"]
    elif work is not None:
        amount, unit = work
        amount = float(amount() if callable(amount) else amount)
        info.update(work=amount, rate=amount / seconds, rate_unit=unit)
    if check is not None:
        info["check"] = float(check())
    info["ceilings"] = ceil
    info.update(extra or {})
    info.update(device_info(device))
    benchmark.extra_info.update(info)
    return info


def warm_or_skip(fn: Callable[[], Any], provider: str, device: torch.device) -> None:
    """Call `fn` once; on the CPU, a `compiled` provider whose inductor build fails is skipped with the error.

    On CUDA every failure propagates: a provider that cannot run there is a bug in the benchmark.
    """
    if provider != "compiled" or device.type == "cuda":
        fn()
        return
    try:
        fn()
    except Exception as exc:  # inductor's C++ toolchain missing or broken on this machine
        import pytest

        pytest.skip(f"torch.compile (inductor, C++ backend) cannot build on this CPU: {type(exc).__name__}: {exc}")
