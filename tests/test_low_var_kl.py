"""low_var_kl against the float64 reference: values, gradients under random upstream gradients, clamps."""

from __future__ import annotations

import pytest
import torch
from _tolerance import assert_close
from conftest import DEVICE

from fastslow.kernels import low_var_kl, low_var_kl_ref

SHAPES = [(3, 37), (1,), (1, 1), (2, 3, 5), (4099,)]


def run_both(logp: torch.Tensor, ref: torch.Tensor):
    x = logp.clone().requires_grad_()
    kl = low_var_kl(x, ref)
    g = torch.randn(kl.shape, dtype=torch.float64, device=DEVICE)
    kl.backward(g.float())
    x64 = logp.double().clone().requires_grad_()
    kl64 = low_var_kl_ref(x64, ref.double())
    kl64.backward(g)
    return (kl, x.grad), (kl64, x64.grad)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_matches_reference(backend, dtype, shape):
    logp = (-torch.rand(shape, dtype=torch.float64) * 4 - 0.01).to(dtype).to(DEVICE)
    ref = (logp.double() + 0.5 * torch.randn(shape, dtype=torch.float64, device=DEVICE)).to(dtype)
    (kl, grad), (kl64, grad64) = run_both(logp, ref)
    assert kl.dtype == torch.float32 and kl.shape == logp.shape
    assert grad.dtype == dtype
    assert_close(kl, kl64, dtype, "value")
    assert_close(grad, grad64, dtype, "grad")
    assert torch.all(kl >= 0)


def test_clamps(backend):
    """d beyond +-20 (no overflow) and estimates beyond 10 are clamped to 10, with zero gradient exactly there."""
    logp = -torch.rand(6, dtype=torch.float64, device=DEVICE) - 0.5
    ref = logp + torch.tensor([25.0, -25.0, 3.0, -14.0, 0.1, -0.1], dtype=torch.float64, device=DEVICE)
    (kl, grad), (kl64, grad64) = run_both(logp.float(), ref.float())
    assert_close(kl, kl64, torch.float32, "value")
    assert_close(grad, grad64, torch.float32, "grad")
    # e^20, e^-20 + 19, e^3 - 4 = 16.1 and e^-14 + 13 all exceed 10
    assert torch.all(kl[:4] == 10.0) and torch.all(grad[:4] == 0.0)
    assert torch.all(kl[4:] > 0) and torch.all(kl[4:] < 0.01) and torch.all(grad[4:] != 0)


def test_no_gradient_to_reference(backend):
    logp = -torch.rand(4, 5, device=DEVICE) - 0.1
    ref = (logp + 0.2).requires_grad_()
    x = logp.clone().requires_grad_()
    low_var_kl(x, ref).sum().backward()
    assert ref.grad is None and x.grad is not None


def test_identical_distributions_give_zero(backend):
    logp = -torch.rand(7, 9, device=DEVICE) - 0.1
    x = logp.clone().requires_grad_()
    kl = low_var_kl(x, logp)
    kl.sum().backward()
    assert torch.all(kl == 0) and torch.all(x.grad == 0)


def test_nan_propagates(backend):
    """NaN in logp or ref_logp gives a NaN estimate and gradient exactly there (the clamps once turned NaN into 10
    on the Triton path, and torch.clamp's backward turns it into a zero gradient); other entries are unaffected."""
    nan = float("nan")
    logp = -torch.rand(2, 7, dtype=torch.float64, device=DEVICE) - 0.5
    ref = logp + 0.5 * torch.randn_like(logp)
    logp[0, 1] = nan
    ref[1, 3] = nan
    ref[1, 5] = logp[1, 5] + 25.0  # clamped: zero gradient next to the NaN
    (kl, grad), (kl64, grad64) = run_both(logp.float(), ref.float())
    at = logp.isnan() | ref.isnan()
    assert torch.equal(kl.isnan(), at) and torch.equal(grad.isnan(), at)
    assert torch.equal(kl64.isnan(), at) and torch.equal(grad64.isnan(), at)
    assert_close(kl[~at], kl64[~at], torch.float32, "value")
    assert_close(grad[~at], grad64[~at], torch.float32, "grad")
    assert kl[1, 5] == 10.0 and grad[1, 5] == 0.0
    # the case: low_var_kl(NaN, 0) was 10
    assert low_var_kl(torch.full((1,), nan, device=DEVICE), torch.zeros(1, device=DEVICE)).isnan().all()


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 4)], ids=str)
def test_empty_inputs(backend, shape):
    x = torch.rand(shape, device=DEVICE).requires_grad_()
    kl = low_var_kl(x, torch.rand(shape, device=DEVICE))
    kl.sum().backward()
    assert kl.shape == shape and kl.dtype == torch.float32 and x.grad.shape == shape
