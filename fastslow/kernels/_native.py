"""ctypes loader for the native CPU library (csrc/reposition_cpu.cpp): SFPO's reposition lerp on CPU shards.

The library is optional (setup.py builds it when a compiler is there). `available()` says whether it loads;
`reposition_native_` runs p <- s + alpha * (p - s) over a whole list of tensors in one multi-threaded call,
with the same result, bit for bit, as the torch loop `fastslow.kernels.reposition.reposition_ref`. Set
`FASTSLOW_NO_NATIVE=1` to pretend the library is not there.
"""

from __future__ import annotations

import ctypes
import functools
import os
from pathlib import Path

import torch

ABI_VERSION = 1
"""Must equal fs_native_abi_version() in csrc/reposition_cpu.cpp."""

_DTYPE_CODES: dict[torch.dtype, int] = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_ERRORS = {1: "unsupported dtype", 2: "bad arguments", 3: "out of memory"}


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The loaded library, or None when it is disabled, missing, broken or of another ABI version."""
    if os.environ.get("FASTSLOW_NO_NATIVE") == "1":
        return None
    for path in sorted(Path(__file__).parent.glob("_fastslow_cpu*.so")):
        try:
            lib = ctypes.CDLL(str(path))
            lib.fs_native_abi_version.argtypes = []
            lib.fs_native_abi_version.restype = ctypes.c_int
            if lib.fs_native_abi_version() != ABI_VERSION:
                continue
            lib.fs_reposition.argtypes = [
                ctypes.c_int64,  # n_tensors
                ctypes.POINTER(ctypes.c_void_p),  # p_ptrs
                ctypes.POINTER(ctypes.c_void_p),  # s_ptrs
                ctypes.POINTER(ctypes.c_int64),  # numels
                ctypes.POINTER(ctypes.c_int32),  # p_dtypes
                ctypes.POINTER(ctypes.c_int32),  # s_dtypes
                ctypes.c_float,  # alpha
                ctypes.c_int32,  # num_threads
            ]
            lib.fs_reposition.restype = ctypes.c_int
            lib.fs_native_isa.argtypes = [ctypes.c_int32]
            lib.fs_native_isa.restype = ctypes.c_int
            return lib
        except (OSError, AttributeError):  # not loadable, or not our library
            continue
    return None


def available() -> bool:
    """True when the native library is built, loads and has the expected ABI version. Never raises."""
    return _library() is not None


ISA_NAMES = ("baseline", "avx2", "avx512")
"""Instruction-set levels of fs_native_isa, by number: the library picks the best the CPU has at load."""


def isa_level(cap: int | None = None) -> int:
    """The instruction-set level the library uses (an index into ISA_NAMES), or -1 when it is not available.

    With `cap`, first lower the level to at most `cap` (a hook for tests and benchmarks; every level gives
    identical results). A cap above what the CPU has gives the CPU's best.
    """
    lib = _library()
    if lib is None:
        return -1
    return lib.fs_native_isa(-1 if cap is None else max(cap, 0))


def reposition_native_(
    params: list[torch.Tensor], slow: list[torch.Tensor], alpha: float, num_threads: int = 0
) -> None:
    """In place, for each pair: params[i] <- slow[i] + alpha * (params[i] - slow[i]), one native call in all.

    params: CPU, contiguous, float32 / bfloat16 / float16, any shape (local shards, not DTensors).
    slow: CPU, contiguous, float32 / bfloat16 / float16 (may differ from its param's dtype), same numel.
    alpha: the lerp weight, rounded to float32 like a torch scalar.
    num_threads: OpenMP threads; 0 means torch.get_num_threads().

    The checks below only guard memory safety; dtype rules are the caller's (an unsupported dtype is a
    RuntimeError from the library, raised before anything is written).
    """
    lib = _library()
    if lib is None:
        raise RuntimeError("native CPU library not available (not built, broken or FASTSLOW_NO_NATIVE=1)")
    if len(params) != len(slow):
        raise ValueError(f"params and slow must have the same length, got {len(params)} and {len(slow)}")
    for i, (p, s) in enumerate(zip(params, slow, strict=True)):
        if p.device.type != "cpu" or s.device.type != "cpu":
            raise ValueError(f"pair {i}: tensors must be on the CPU, got {p.device} and {s.device}")
        if not (p.is_contiguous() and s.is_contiguous()):
            raise ValueError(f"pair {i}: tensors must be contiguous")
        if p.numel() != s.numel():
            raise ValueError(f"pair {i}: numel differs, {p.numel()} vs {s.numel()}")

    n = len(params)
    p_ptrs = (ctypes.c_void_p * n)(*(p.data_ptr() for p in params))
    s_ptrs = (ctypes.c_void_p * n)(*(s.data_ptr() for s in slow))
    numels = (ctypes.c_int64 * n)(*(p.numel() for p in params))
    p_codes = (ctypes.c_int32 * n)(*(_DTYPE_CODES.get(p.dtype, -1) for p in params))
    s_codes = (ctypes.c_int32 * n)(*(_DTYPE_CODES.get(s.dtype, -1) for s in slow))
    threads = num_threads if num_threads > 0 else torch.get_num_threads()
    rc = lib.fs_reposition(n, p_ptrs, s_ptrs, numels, p_codes, s_codes, alpha, threads)
    if rc != 0:
        dtypes = sorted({str(t.dtype) for t in (*params, *slow)})
        reason = _ERRORS.get(rc, "unknown")
        raise RuntimeError(f"fs_reposition failed with code {rc} ({reason}); dtypes {dtypes}")
    # The writes went around torch; tell autograd, as any in-place torch op would.
    torch.autograd.graph.increment_version(params)
