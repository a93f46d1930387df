"""token_logprobs against the float64 eager reference: logp, entropy, gradients w.r.t. hidden and weight."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE

from kernels import IGNORE_INDEX, token_logprobs, token_logprobs_ref

# (N, H, V, chunk_tokens): the shapes, a vocab of 7, one token, and a chunk that does not divide N.
CASES = [(37, 32, 1000, 16), (37, 32, 257, None), (5, 16, 7, 2), (1, 8, 50, None), (40, 16, 300, 40)]
# float32 GEMMs and a float32 log-sum-exp against float64: relative ~1e-6 of the terms. bf16 inputs: the GEMMs
# accumulate in float32 over exact bf16 products, so logp/entropy stay float32-accurate; the gradients pass through
# dz rounded to bf16 (2^-8 relative) and bf16 GEMM outputs, so they are compared at 2e-2 of the largest entry.
TOL = {torch.float32: {"value": 2e-5, "grad": 2e-5}, torch.bfloat16: {"value": 2e-5, "grad": 2e-2}}


def close(actual: torch.Tensor, expected: torch.Tensor, rel: float, *, floor: float = 1e-30) -> None:
    """Every entry within `rel` times the largest |expected| (errors scale with the terms, not the result).

    `floor` bounds that scale from below: log-probs and entropies are differences of terms of size |lse| ~ log V,
    so their error does not shrink with the result.
    """
    scale = expected.abs().max().clamp(min=floor)
    err = (actual.double() - expected.double()).abs().max()
    assert err <= rel * scale, f"max error {err.item():.3g} > {rel} * {scale.item():.3g}"


def make(N: int, H: int, V: int, dtype: torch.dtype):
    hidden = torch.randn(N, H, dtype=torch.float64, device=DEVICE).to(dtype)
    weight = (torch.randn(V, H, dtype=torch.float64, device=DEVICE) * H**-0.5 * 3).to(dtype)
    targets = torch.randint(0, V, (N,), device=DEVICE)
    if N > 3:
        targets[[1, N - 2]] = IGNORE_INDEX
    return hidden, weight, targets


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_reference(backend, case, dtype, temperature):
    N, H, V, chunk = case
    hidden, weight, targets = make(N, H, V, dtype)
    g_logp = torch.randn(N, dtype=torch.float64, device=DEVICE)
    g_ent = torch.randn(N, dtype=torch.float64, device=DEVICE)

    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logp, ent = token_logprobs(h, w, targets, temperature=temperature, with_entropy=True, chunk_tokens=chunk)
    (logp * g_logp.float() + ent * g_ent.float()).sum().backward()

    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    logp64, ent64 = token_logprobs_ref(h64, w64, targets, temperature=temperature)
    (logp64 * g_logp + ent64 * g_ent).sum().backward()

    assert logp.dtype == torch.float32 and ent.dtype == torch.float32
    assert h.grad.dtype == dtype and w.grad.dtype == dtype
    close(logp, logp64, TOL[dtype]["value"], floor=1.0)
    close(ent, ent64, TOL[dtype]["value"], floor=1.0)
    close(h.grad, h64.grad, TOL[dtype]["grad"])
    close(w.grad, w64.grad, TOL[dtype]["grad"])


def test_ignored_targets(backend):
    hidden, weight, targets = make(9, 8, 31, torch.float32)
    targets[:] = IGNORE_INDEX
    targets[4] = 3
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logp, ent = token_logprobs(h, w, targets, with_entropy=True)
    (logp.sum() + ent.sum()).backward()
    ignored = targets == IGNORE_INDEX
    assert torch.all(logp[ignored] == 0) and torch.all(ent[ignored] == 0)
    assert torch.all(h.grad[ignored] == 0) and torch.any(h.grad[4] != 0)
    # the weight gradient comes from the one counted token only: a rank-limited outer product with hidden[4]
    torch.testing.assert_close(w.grad, torch.outer(w.grad @ hidden[4] / hidden[4].dot(hidden[4]), hidden[4]))


def test_logp_only_and_leading_shape(backend):
    """Without entropy it returns one tensor; any leading shape works and the gradient flows only through logp."""
    hidden, weight, targets = make(12, 16, 40, torch.float32)
    h = hidden.view(3, 4, 16).clone().requires_grad_()
    logp = token_logprobs(h, weight, targets.view(3, 4))
    assert logp.shape == (3, 4)
    logp.sum().backward()
    h64 = hidden.double().requires_grad_()
    token_logprobs_ref(h64, weight.double(), targets)[0].sum().backward()
    close(h.grad.view(12, 16), h64.grad, 2e-5)


def test_chunking_does_not_change_results(backend):
    hidden, weight, targets = make(23, 16, 64, torch.float32)
    results = []
    for chunk in (1, 5, 23, None):
        h = hidden.clone().requires_grad_()
        logp, ent = token_logprobs(h, weight, targets, with_entropy=True, chunk_tokens=chunk)
        (logp + 0.5 * ent).sum().backward()
        results.append((logp, ent, h.grad))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_large_logits_stay_finite(backend):
    """Logits in the hundreds (cold temperature): the online log-sum-exp must not overflow."""
    hidden, weight, targets = make(6, 8, 100, torch.float32)
    logp, ent = token_logprobs(hidden * 50, weight, targets, temperature=0.1, with_entropy=True)
    ref_logp, _ = token_logprobs_ref((hidden * 50).double(), weight.double(), targets, temperature=0.1)
    assert torch.isfinite(logp).all() and torch.isfinite(ent).all()
    close(logp, ref_logp, 1e-5)


@pytest.mark.parametrize(
    "change, name",
    [
        (dict(hidden=torch.ones(4, 8, dtype=torch.int64)), "hidden"),
        (dict(weight=torch.randn(10, 9)), "weight"),
        (dict(weight=torch.randn(10, 8, dtype=torch.float64)), "weight"),
        (dict(weight=torch.randn(10, 8).bfloat16()), "weight"),
        (dict(targets=torch.zeros(4)), "targets"),
        (dict(targets=torch.zeros(5, dtype=torch.int64)), "targets"),
        (dict(targets=torch.full((4,), 10)), "targets"),
        (dict(targets=torch.full((4,), -3)), "targets"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(weight=torch.randn(10, 8, device="meta")), "weight"),
    ],
)
def test_bad_input(change, name):
    kw = dict(hidden=torch.randn(4, 8), weight=torch.randn(10, 8), targets=torch.zeros(4, dtype=torch.int64))
    kw |= change
    temperature = kw.pop("temperature", 1.0)
    with pytest.raises(ValueError, match=name):
        token_logprobs(kw["hidden"], kw["weight"], kw["targets"], temperature=temperature)
