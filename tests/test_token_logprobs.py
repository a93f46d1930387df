"""token_logprobs against the float64 eager reference: logp, entropy, gradients w.r.t. hidden and weight."""

from __future__ import annotations

import pytest
import torch
from _tolerance import PAIR, REL, TOKEN_LOGPROBS, assert_within
from conftest import DEVICE

from fastslow.kernels import IGNORE_INDEX, token_logprobs, token_logprobs_ref

# (N, H, V, chunk_tokens): the shapes, a vocab of 7, one token, and a chunk that does not divide N.
CASES = [(37, 32, 1000, 16), (37, 32, 257, None), (5, 16, 7, 2), (1, 8, 50, None), (40, 16, 300, 40)]
TOL = TOKEN_LOGPROBS  # (tests/_tolerance.py: relative to the largest entry, with its reasons)


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
    assert_within(logp, logp64, TOL[dtype]["value"], floor=1.0)
    assert_within(ent, ent64, TOL[dtype]["value"], floor=1.0)
    assert_within(h.grad, h64.grad, TOL[dtype]["grad"])
    assert_within(w.grad, w64.grad, TOL[dtype]["grad"])


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
    """Without entropy its entropy is None; any leading shape works and the gradient flows only through logp."""
    hidden, weight, targets = make(12, 16, 40, torch.float32)
    h = hidden.view(3, 4, 16).clone().requires_grad_()
    logp, ent = token_logprobs(h, weight, targets.view(3, 4))
    assert logp.shape == (3, 4) and ent is None
    logp.sum().backward()
    h64 = hidden.double().requires_grad_()
    token_logprobs_ref(h64, weight.double(), targets)[0].sum().backward()
    assert_within(h.grad.view(12, 16), h64.grad, TOL[torch.float32]["grad"])


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
            torch.testing.assert_close(a, b, **PAIR["reorder"])


def test_large_logits_stay_finite(backend):
    """Logits in the hundreds (cold temperature): the online log-sum-exp must not overflow."""
    hidden, weight, targets = make(6, 8, 100, torch.float32)
    logp, ent = token_logprobs(hidden * 50, weight, targets, temperature=0.1, with_entropy=True)
    ref_logp, _ = token_logprobs_ref((hidden * 50).double(), weight.double(), targets, temperature=0.1)
    assert torch.isfinite(logp).all() and torch.isfinite(ent).all()
    assert_within(logp, ref_logp, REL["large_logits"])


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
        (dict(weight=torch.randn(0, 8)), "weight"),
        (dict(chunk_tokens=0), "chunk_tokens"),
        (dict(chunk_tokens=-2), "chunk_tokens"),
        (dict(chunk_tokens=2.5), "chunk_tokens"),
        (dict(chunk_tokens=True), "chunk_tokens"),
    ],
)
def test_bad_input(change, name):
    kw = dict(hidden=torch.randn(4, 8), weight=torch.randn(10, 8), targets=torch.zeros(4, dtype=torch.int64))
    kw |= change
    options = {k: kw.pop(k) for k in ("temperature", "chunk_tokens") if k in kw}
    with pytest.raises(ValueError, match=name):
        token_logprobs(kw["hidden"], kw["weight"], kw["targets"], **options)


def softmax_stats64(logits: torch.Tensor, targets: torch.Tensor):
    """(logp, entropy, lse) in float64 from raw logits, ignored targets 0, as the row pass defines them."""
    z = logits.double()
    log_p = torch.log_softmax(z, -1)
    valid = targets != IGNORE_INDEX
    logp = torch.where(valid, log_p.gather(1, targets.clamp(min=0)[:, None]).squeeze(1), 0.0)
    ent = torch.where(valid, -(log_p.exp() * log_p).sum(-1), 0.0)
    return logp, ent, torch.logsumexp(z, -1)


# The interpreter runs the row pass in numpy, which warns about the NaN it is given on purpose.
NUMPY_NAN_WARNINGS = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@NUMPY_NAN_WARNINGS
def test_nan_logit_in_row_pass(backend):
    """A NaN logit anywhere in a row (before the running max, in a later vocab block, or everywhere) gives NaN lse,
    logp, entropy and dL/dlogits for that row, whatever the max does with it; the other rows are untouched."""
    from fastslow.kernels._chunks import _BLOCK_V, row_grad, row_stats

    n, V = 5, _BLOCK_V + 5  # two vocab blocks
    logits = torch.randn(n, V, device=DEVICE) * 3
    targets = torch.randint(0, V, (n,), device=DEVICE)
    logits[0, 0] = float("nan")  # first block, before the max
    logits[1, V - 1] = float("nan")  # second block
    logits[2] = float("nan")
    logits[4, 7] = float("nan")
    targets[4] = IGNORE_INDEX  # selected to 0, but its softmax is NaN
    logp, ent, lse = row_stats(logits, targets, 1.0)
    logp64, ent64, lse64 = softmax_stats64(logits, targets)
    bad = torch.tensor([True, True, True, False, True], device=DEVICE)
    assert torch.equal(lse.isnan(), bad) and torch.equal(lse64.isnan(), bad)
    assert torch.equal(logp.isnan(), bad & (targets != IGNORE_INDEX)) and torch.equal(ent.isnan(), logp.isnan())
    assert logp[4] == 0 and ent[4] == 0
    for ours, ref in ((logp, logp64), (ent, ent64), (lse, lse64)):
        assert_within(ours[~bad], ref[~bad], TOL[torch.float32]["value"], floor=1.0)
    g_logp, g_ent = torch.randn(n, device=DEVICE), torch.randn(n, device=DEVICE)
    dz = row_grad(logits, targets, lse, ent, g_logp, g_ent, 1.0, torch.float32)
    assert torch.equal(dz.isnan().all(-1), bad) and not dz[3].isnan().any()


def run_nan(hidden, weight, targets, chunk):
    """(logp, ent, d hidden, d weight) from the kernel and from the float64 reference."""
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    logp, ent = token_logprobs(h, w, targets, with_entropy=True, chunk_tokens=chunk)
    (logp + 0.5 * ent).sum().backward()
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    logp64, ent64 = token_logprobs_ref(h64, w64, targets)
    (logp64 + 0.5 * ent64).sum().backward()
    return (logp, ent, h.grad, w.grad), (logp64, ent64, h64.grad, w64.grad)


@NUMPY_NAN_WARNINGS
def test_nan_hidden_stays_in_its_row(backend):
    """NaN in hidden[2] (and in hidden[5], whose target is ignored): NaN logp and entropy for token 2 only (token 5
    stays 0), NaN d hidden in those rows only, as the reference; d weight sums over tokens and is all NaN. Every
    other token's results equal the clean run's."""
    hidden, weight, targets = make(7, 8, 31, torch.float32)  # targets 1 and 5 ignored
    clean, _ = run_nan(hidden, weight, targets, 3)
    hidden[2, 4] = float("nan")
    hidden[5, 0] = float("nan")
    ours, ref = run_nan(hidden, weight, targets, 3)
    for a, b in zip(ours, ref):
        assert torch.equal(a.isnan(), b.isnan())
    logp, ent, dh, dw = ours
    row = torch.zeros(7, dtype=torch.bool, device=DEVICE)
    row[2] = True
    assert torch.equal(logp.isnan(), row) and torch.equal(ent.isnan(), row) and logp[5] == 0 and ent[5] == 0
    row[5] = True
    assert torch.equal(dh.isnan().all(-1), row) and not dh[~row].isnan().any() and dw.isnan().all()
    for a, b in zip((logp, ent, dh), clean[:3]):
        torch.testing.assert_close(a[~row], b[~row], **PAIR["reorder"])


@NUMPY_NAN_WARNINGS
def test_nan_weight_reaches_every_token(backend):
    """A NaN in one weight entry is one NaN logit in every row: every counted token's logp and entropy is NaN
    (not skipped by the row max), ignored ones stay 0, and both gradients are NaN, as the reference."""
    hidden, weight, targets = make(6, 8, 40, torch.float32)
    weight[11, 3] = float("nan")
    ours, ref = run_nan(hidden, weight, targets, 4)
    for a, b in zip(ours, ref):
        assert torch.equal(a.isnan(), b.isnan())
    logp, ent, dh, dw = ours
    valid = targets != IGNORE_INDEX
    assert logp[valid].isnan().all() and ent[valid].isnan().all()
    assert torch.all(logp[~valid] == 0) and torch.all(ent[~valid] == 0)
    assert dh.isnan().all() and dw.isnan().all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("lead, H", [((0,), 8), ((5,), 0), ((2, 0), 8), ((0,), 0), ((2, 3), 0)], ids=str)
def test_empty_inputs(backend, lead, H, dtype):
    """No tokens, or H = 0 (all-zero logits: logp = -log V, entropy log V): right shapes, values and gradients."""
    V = 9
    hidden = torch.randn(*lead, H, device=DEVICE).to(dtype).requires_grad_()
    weight = torch.randn(V, H, device=DEVICE).to(dtype).requires_grad_()
    targets = torch.randint(0, V, lead, device=DEVICE)
    logp, ent = token_logprobs(hidden, weight, targets, with_entropy=True, chunk_tokens=2)
    (logp + ent).sum().backward()
    assert logp.shape == lead and ent.shape == lead
    assert hidden.grad.shape == hidden.shape and weight.grad.shape == weight.shape
    assert hidden.grad.dtype == dtype and weight.grad.dtype == dtype
    logp64, ent64 = token_logprobs_ref(hidden.detach().double(), weight.detach().double(), targets)
    torch.testing.assert_close(logp.double(), logp64, **PAIR["f64_logprobs"])
    torch.testing.assert_close(ent.double(), ent64, **PAIR["f64_logprobs"])
    if H == 0 and logp.numel():
        torch.testing.assert_close(logp, torch.full(lead, -torch.log(torch.tensor(9.0)).item(), device=DEVICE))
