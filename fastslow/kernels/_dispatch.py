"""The one place that decides how a kernel runs: Triton, the native CPU library, or plain torch.

Rules, in order:
1. a backend forced with `force_backend(...)` (tests and benchmarks use this hook);
2. Triton when the tensors are on CUDA, or on any device when `TRITON_INTERPRET=1` (how CI runs the real
   Triton code on a CPU);
3. for ops that have one, the native CPU library (`csrc/`, loaded by `fastslow.kernels._native`) for CPU tensors;
4. the plain torch implementation.
Nothing else in the project asks "am I on CUDA?".
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Literal

import torch

from fastslow.kernels._triton import HAS_TRITON

Backend = Literal["triton", "native", "torch"]
BACKENDS: tuple[Backend, ...] = ("triton", "native", "torch")

_forced: Backend | None = None


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def native_available() -> bool:
    """True when the native CPU library was built and loads."""
    from fastslow.kernels import _native

    return _native.available()


def backend_for(device: torch.device, *, has_native: bool = False) -> Backend:
    """Which implementation runs an op whose tensors live on `device`.

    `has_native` says whether the op has a native CPU implementation (only `reposition_` does).
    """
    if _forced is not None:
        if _forced == "native" and not has_native:
            return "torch"
        return _forced
    if HAS_TRITON and (device.type == "cuda" or interpreting()):
        return "triton"
    if has_native and device.type == "cpu" and native_available():
        return "native"
    return "torch"


@contextlib.contextmanager
def force_backend(name: Backend | None) -> Iterator[None]:
    """Run every kernel in the block on `name` (None restores the automatic choice).

    Forcing "triton" on CPU tensors needs `TRITON_INTERPRET=1` set before `fastslow.kernels` is imported; forcing
    "native" falls back to "torch" for ops that have no native version.
    """
    global _forced
    if name is not None and name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {name!r}")
    if name == "triton" and not HAS_TRITON:
        raise ValueError("backend 'triton' was forced but Triton is not installed")
    if name == "native" and not native_available():
        raise ValueError("backend 'native' was forced but the native CPU library is not built")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous


LogitsGemm = Literal["out_dtype", "upcast", "cast"]
_LOGITS_GEMM: dict[tuple[str, torch.dtype], LogitsGemm] = {}


def logits_gemm(device: torch.device, dtype: torch.dtype) -> LogitsGemm:
    """How a `dtype` (bf16/fp16) GEMM on `device` gives float32 logits, asked once per device type and dtype.

    "out_dtype": the BLAS's float32-output GEMM (`torch.mm(..., out_dtype=torch.float32)`, CUDA in recent torch):
    float32 accumulation, no rounding of the logits. Without it, "upcast" on the CPU (float32 operands: its runs are
    float32 anyway) and "cast" elsewhere (the GEMM in `dtype`, its output cast to float32, as eager code has it).
    """
    key = (device.type, dtype)
    if key not in _LOGITS_GEMM:
        probe = torch.ones(1, 1, dtype=dtype, device=device)
        try:
            torch.mm(probe, probe, out_dtype=torch.float32)
            _LOGITS_GEMM[key] = "out_dtype"
        except (TypeError, RuntimeError):  # RuntimeError covers "no kernel for this backend"
            _LOGITS_GEMM[key] = "upcast" if device.type == "cpu" else "cast"
    return _LOGITS_GEMM[key]


def workspace_bytes(device: torch.device) -> int:
    """Memory a chunked kernel may use for its `[tokens, vocab]` tile of logits on `device`.

    1 GiB on an accelerator (about 1.7k tokens at V=152k in float32: GEMMs that large run at full speed), 64 MiB
    on the CPU. `FASTSLOW_WORKSPACE_BYTES` overrides both.
    """
    override = os.environ.get("FASTSLOW_WORKSPACE_BYTES")
    if override:
        return int(override)
    return (1 << 30) if device.type != "cpu" else (64 << 20)


def flash_attn_available(device: torch.device) -> bool:
    """flash-attn's varlen kernels can serve attention on `device`: a CUDA device with `flash_attn` installed.

    The trainer's attention choice (`trainer.model.attention`, `model.attn_implementation = "auto"`) asks this.
    """
    import importlib.util

    return device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None
