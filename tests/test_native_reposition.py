"""Native CPU reposition (csrc/reposition_cpu.cpp) against the torch formula and a float64 reference."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest
import torch

# Import the submodule directly: it needs nothing else from `fastslow.kernels`.
from fastslow.kernels import _native

if not _native.available():
    pytest.skip("native CPU library not built (python setup.py build_ext --inplace)", allow_module_level=True)

BEST_ISA = _native.isa_level()
ISA_LEVELS = range(BEST_ISA + 1)  # every instruction-set path this CPU can run, baseline first
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DTYPE_IDS = ("f32", "bf16", "f16")
ALPHAS = (0.0, 0.3, 0.8, 1.0)
NUMELS = (1, 7, 1_000_003)  # length 1, odd, and large enough (16 chunks) for several threads

# Agreement with the float64 formula, as a multiple of the output dtype's eps times (|p| + |s|), which
# bounds |p - s| and |result| for alpha in [0, 1]. float32: sub, mul, add and the rounding of alpha each
# cost at most half an eps of that, so 2 eps bounds the worst case. bfloat16 / float16: the final cast's
# half eps dominates the float32 part (2**-16 / 2**-13 of it), so 1 eps. Plus half the subnormal spacing,
# for results that underflow.
F64_TOL = {torch.float32: 2.0, torch.bfloat16: 1.0, torch.float16: 1.0}


@functools.cache
def _base_pair(numel: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random float32 (p, s), cached (never handed out, only copied): s is p plus noise, small (1e-3:
    cancellation in p - s) at even indices and large at odd ones."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.randn(numel, generator=gen)
    scale = torch.where(torch.arange(numel) % 2 == 0, 1e-3, 1.0)
    return p, p + scale * torch.randn(numel, generator=gen)


def _inputs(numel: int, p_dtype: torch.dtype, s_dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, ...]:
    """Fresh copies of the cached pair in the requested dtypes."""
    p, s = _base_pair(numel, seed)
    return p.to(p_dtype, copy=True), s.to(s_dtype, copy=True)


@pytest.fixture(params=ISA_LEVELS, ids=lambda level: _native.ISA_NAMES[level])
def isa(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test on one instruction-set path, then restore the best."""
    assert _native.isa_level(request.param) == request.param
    yield request.param
    _native.isa_level(BEST_ISA)


def _torch_formula(p: torch.Tensor, s: torch.Tensor, alpha: float) -> torch.Tensor:
    return (s.float() + alpha * (p.float() - s.float())).to(p.dtype)


def _assert_bitwise_equal(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Same dtype, same NaN positions, identical bits everywhere else (so -0.0 and 0.0 differ)."""
    assert out.dtype == ref.dtype
    nan = out.isnan()
    assert torch.equal(nan, ref.isnan())
    bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[out.dtype]
    mismatch = (out.view(bits) != ref.view(bits)) & ~nan
    assert not mismatch.any(), f"{int(mismatch.sum())} elements differ, first at {int(mismatch.nonzero()[0])}"


@pytest.mark.parametrize("numel", NUMELS)
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("s_dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("p_dtype", DTYPES, ids=DTYPE_IDS)
def test_matches_torch_formula(p_dtype: torch.dtype, s_dtype: torch.dtype, alpha: float, numel: int) -> None:
    # Exact for every dtype, float32 included: torch runs sub, mul and add as three separately rounded
    # kernels, and the C++ does the same float32 operations with fma contraction switched off.
    p, s = _inputs(numel, p_dtype, s_dtype, seed=numel)
    s_before = s.clone()
    ref = _torch_formula(p, s, alpha)
    _native.reposition_native_([p], [s], alpha)
    _assert_bitwise_equal(p, ref)
    assert torch.equal(s, s_before)


@pytest.mark.parametrize("s_dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("p_dtype", DTYPES, ids=DTYPE_IDS)
def test_every_isa_matches_torch(p_dtype: torch.dtype, s_dtype: torch.dtype, isa: int) -> None:
    """The baseline, AVX2 and AVX-512 loops are separate code; each must give the torch bits."""
    p, s = _inputs(100_003, p_dtype, s_dtype, seed=2)
    ref = _torch_formula(p, s, 0.3)
    _native.reposition_native_([p], [s], 0.3)
    _assert_bitwise_equal(p, ref)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("s_dtype", ["fp32", "same"])
@pytest.mark.parametrize("p_dtype", DTYPES, ids=DTYPE_IDS)
def test_close_to_float64(p_dtype: torch.dtype, s_dtype: str, alpha: float) -> None:
    p, s = _inputs(100_003, p_dtype, torch.float32 if s_dtype == "fp32" else p_dtype, seed=1)
    ref = s.double() + alpha * (p.double() - s.double())
    info = torch.finfo(p_dtype)
    scale = p.double().abs() + s.double().abs()
    bound = F64_TOL[p_dtype] * info.eps * scale + info.smallest_normal * info.eps / 2
    _native.reposition_native_([p], [s], alpha)
    err = (p.double() - ref).abs()
    assert (err <= bound).all(), f"worst error / bound: {float((err / bound).max()):.3f}"


def test_mixed_list_one_call() -> None:
    """Dtypes, shapes, a zero-size tensor and one multi-chunk tensor, all in one call."""
    specs = [
        ((3, 5), torch.bfloat16, torch.float32),
        ((0,), torch.float32, torch.float32),
        ((1,), torch.float16, torch.float16),
        ((300_007,), torch.float32, torch.bfloat16),
        ((0, 4), torch.bfloat16, torch.bfloat16),
        ((7, 11, 13), torch.float16, torch.float32),
        ((129,), torch.bfloat16, torch.float16),
    ]
    pairs = [_inputs(torch.Size(shape).numel(), pd, sd, seed=i) for i, (shape, pd, sd) in enumerate(specs)]
    params = [p.reshape(shape) for (p, _), (shape, _, _) in zip(pairs, specs, strict=True)]
    slow = [s.reshape(shape) for (_, s), (shape, _, _) in zip(pairs, specs, strict=True)]
    refs = [_torch_formula(p, s, 0.8) for p, s in zip(params, slow, strict=True)]
    _native.reposition_native_(params, slow, 0.8)
    for p, ref in zip(params, refs, strict=True):
        _assert_bitwise_equal(p, ref)


@pytest.mark.parametrize("s_dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("p_dtype", DTYPES, ids=DTYPE_IDS)
def test_special_values(p_dtype: torch.dtype, s_dtype: torch.dtype, isa: int) -> None:
    """inf, NaN, signed zeros, subnormals, float16 overflow and rounding ties follow torch exactly."""
    values = [
        float("inf"), float("-inf"), float("nan"), -0.0, 0.0, 1e-40, -3e-39, 6e-8, 3e-5, -6.1e-5,
        65504.0, 65519.0, 65520.0, 1e5, -1e5, 3e38, 1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-11, 2.0**-24,
    ]  # fmt: skip
    grid = torch.tensor(values, dtype=torch.float32)
    p = grid.repeat_interleave(len(values)).to(p_dtype)  # every (p, s) pair
    s = grid.repeat(len(values)).to(s_dtype)
    for alpha in (*ALPHAS, 0.5):
        out = p.clone()
        _native.reposition_native_([out], [s], alpha)
        _assert_bitwise_equal(out, _torch_formula(p, s, alpha))


def test_thread_counts_agree() -> None:
    """One huge tensor and many small ones balance across threads; the result never depends on the count."""
    pairs = [_inputs(n, torch.bfloat16, torch.float32, seed=n) for n in (1_000_003, *range(1, 200))]
    results = []
    for threads in (1, 2, 5):
        params = [p.clone() for p, _ in pairs]
        _native.reposition_native_(params, [s for _, s in pairs], 0.3, num_threads=threads)
        results.append(params)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            _assert_bitwise_equal(a, b)


def test_unsupported_dtype_writes_nothing() -> None:
    p_ok, s_ok = _inputs(10, torch.float32, torch.float32, seed=0)
    p_bad = torch.randn(10, dtype=torch.float64)
    before = [p_ok.clone(), p_bad.clone()]
    with pytest.raises(RuntimeError, match="unsupported dtype"):
        _native.reposition_native_([p_ok, p_bad], [s_ok, torch.randn(10)], 0.5)
    assert torch.equal(p_ok, before[0]) and torch.equal(p_bad, before[1])


def test_rejects_unsafe_layouts() -> None:
    p = torch.randn(4, 6)
    with pytest.raises(ValueError, match="contiguous"):
        _native.reposition_native_([p.t()], [torch.randn(6, 4)], 0.5)
    with pytest.raises(ValueError, match="numel"):
        _native.reposition_native_([p], [torch.randn(23)], 0.5)
    with pytest.raises(ValueError, match="same length"):
        _native.reposition_native_([p], [], 0.5)


def test_bumps_version_counter() -> None:
    p, s = _inputs(16, torch.float32, torch.float32, seed=0)
    version = p._version
    _native.reposition_native_([p], [s], 0.5)
    assert p._version > version


def test_env_var_disables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTSLOW_NO_NATIVE", "1")
    _native._library.cache_clear()
    try:
        assert not _native.available()
        with pytest.raises(RuntimeError, match="not available"):
            _native.reposition_native_([torch.randn(2)], [torch.randn(2)], 0.5)
    finally:
        monkeypatch.undo()
        _native._library.cache_clear()
    assert _native.available()
