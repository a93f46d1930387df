"""reposition_ and snapshot on plain tensors: the formula in float64, mixed dtypes, many tensors, zero sizes."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, available_backends

from fastslow.kernels import Snapshot, reposition_, reposition_ref, snapshot
from fastslow.kernels._dispatch import force_backend

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Sizes: 1, odd, one over the Triton block (4096), empty, and a 2-D shard.
SIZES = [(1,), (7,), (4096 * 2 + 3,), (0,), (13, 5)]


@pytest.fixture(params=available_backends(native=True))
def any_backend(request: pytest.FixtureRequest):
    with force_backend(request.param):
        yield request.param


def make(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return (torch.randn(shape, device=DEVICE) * 2 + 0.5).to(dtype)


def expected(p: torch.Tensor, s: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The formula in float64 (not rounded), and the size of its terms for the error bound."""
    s64 = s.double().view(p.shape)
    return s64 + alpha * (p.double() - s64), s64.abs() + abs(alpha) * (p.double() - s64).abs()


def check(actual: torch.Tensor, want: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Float32 math (three roundings of at most 2^-24 times the terms) then one rounding to p's dtype."""
    exact, terms = want
    half_ulp = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}[actual.dtype]
    bound = half_ulp * exact.abs() + 3 * 2.0**-24 * terms * (1 + half_ulp) + 1e-45
    err = (actual.double() - exact).abs()
    assert torch.all(err <= bound), f"max error {(err - bound).max().item()} over the bound ({actual.dtype})"


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.8, 1.0, -0.5])
@pytest.mark.parametrize("slow_dtype", ["same", torch.float32])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_formula(any_backend, dtype, slow_dtype, alpha):
    params = [make(shape, dtype) for shape in SIZES]
    sdt = dtype if slow_dtype == "same" else slow_dtype
    slow = [make(shape, sdt) for shape in SIZES]
    want = [expected(p, s, alpha) for p, s in zip(params, slow)]
    reposition_(params, slow, alpha)
    for got, w in zip(params, want):
        check(got, w)
    if alpha == 0.0:  # exactly back to slow
        assert all(torch.equal(p, s.to(p.dtype)) for p, s in zip(params, slow))


def test_mixed_list_and_snapshot(any_backend):
    """One call over fp32, bf16 and fp16 tensors of many sizes, with the slow copy from snapshot()."""
    shapes = [(n,) for n in (1, 3, 0, 4096, 4097, 10000)] + [(3, 7), (0, 4)]
    params = [make(s, DTYPES[i % 3]) for i, s in enumerate(shapes)]
    slow = snapshot(params)
    assert isinstance(slow, Snapshot) and len(slow) == len(params)
    for s, p in zip(slow, params):
        assert s.dtype == p.dtype and s.shape == p.shape and torch.equal(s, p)
        assert s.untyped_storage().data_ptr() == slow.buffer.untyped_storage().data_ptr()  # one flat buffer
        assert s.data_ptr() % 64 == 0
    before = [p.clone() for p in params]
    fast = [p.add_(torch.randn_like(p)).clone() for p in params]
    reposition_(params, slow, 0.8)
    for p, f, b in zip(params, fast, before):
        check(p, expected(f, b, 0.8))


def test_many_small_tensors(any_backend):
    """Hundreds of tensors in one call (a real model's parameter list), including a few large ones."""
    params = [make((i % 17 + 1,), torch.float32) for i in range(300)] + [make((5000,), torch.bfloat16)]
    slow = [make(p.shape, torch.float32) for p in params]
    want = [expected(p, s, 0.6) for p, s in zip(params, slow)]
    reposition_(params, slow, 0.6)
    for got, w in zip(params, want):
        check(got, w)


def test_backends_agree_with_reference_loop(any_backend):
    params = [make((257,), torch.bfloat16), make((33, 3), torch.float32)]
    slow = [make(p.shape, torch.float32) for p in params]
    ref = [p.clone() for p in params]
    reposition_ref(ref, slow, 0.8)
    reposition_(params, slow, 0.8)
    for a, b in zip(params, ref):
        torch.testing.assert_close(a, b, atol=0, rtol=2**-23)  # same float32 math: equal up to fma contraction


def test_parameters_and_autograd(any_backend):
    """nn.Parameters update in place and still train afterwards."""
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)).to(DEVICE)
    slow = snapshot(model.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ptrs = [p.data_ptr() for p in model.parameters()]
    reposition_(model.parameters(), slow, 0.5)
    for p, s in zip(model.parameters(), slow):
        check(p.detach(), expected(s + 1.0, s, 0.5))
    assert ptrs == [p.data_ptr() for p in model.parameters()]
    model(torch.randn(4, 6, device=DEVICE)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_snapshot_copy_from():
    params = [make((10,), torch.float32), make((3, 3), torch.bfloat16)]
    slow = snapshot(params)
    buffer_ptr = slow.buffer.data_ptr()
    for p in params:
        p.mul_(3.0)
    slow.copy_from(params)
    assert slow.buffer.data_ptr() == buffer_ptr
    assert all(torch.equal(s, p) for s, p in zip(slow, params))
    with pytest.raises(ValueError, match="do not match"):
        slow.copy_from(params[:1])


def test_empty_list_is_a_no_op():
    reposition_([], [], 0.5)
    assert len(snapshot([])) == 0
