"""Triton import guard: the kernels' modules import `triton`/`tl` from here so they load without Triton.

Triton is a dependency on Linux x86-64 (and comes with every CUDA build of torch). Elsewhere (macOS, Arm CPUs)
the `@triton.jit` functions are defined on a stand-in and never launched: `fastslow.kernels._dispatch` only picks Triton
when `HAS_TRITON` is true.
"""

from __future__ import annotations

from typing import Any

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only on machines without Triton
    HAS_TRITON = False

    class _MissingTriton:
        """Enough of `triton` for kernel definitions to be evaluated (not run) without it."""

        @staticmethod
        def jit(fn: Any = None, **_: Any) -> Any:
            return fn if fn is not None else (lambda f: f)

        @staticmethod
        def cdiv(a: int, b: int) -> int:
            return -(-a // b)

    class _MissingLanguage:
        constexpr = int

        def __getattr__(self, name: str) -> Any:
            raise RuntimeError(f"triton.language.{name} used, but Triton is not installed")

    triton = _MissingTriton()  # type: ignore[assignment]
    tl = _MissingLanguage()  # type: ignore[assignment]


@triton.jit
def cast_rtne(x, DTYPE: tl.constexpr):
    """Cast float32 `x` to DTYPE rounding to nearest-even, as torch's `.to()` does.

    bfloat16 is rounded by hand on the bits: compiled Triton would round to nearest-even by itself, but the
    interpreter truncates, and CI tests the Triton code through the interpreter. A few integer ops per element
    cost nothing in a memory-bound kernel. NaN stays a (quiet) NaN.
    """
    if tl.bfloat16 == DTYPE:
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        out = tl.where(x != x, 0x7FC0, rounded).to(tl.uint16)
        return out.to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DTYPE)


__all__ = ["HAS_TRITON", "cast_rtne", "tl", "triton"]
