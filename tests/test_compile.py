"""Each public op traces under torch.compile(fullgraph=True) (custom ops with fake impls: no graph breaks)."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE

from fastslow.kernels import grpo_loss, low_var_kl, reposition_, snapshot

# aot_eager runs dynamo, fake tensors and AOT autograd (what fullgraph needs the fake impls for) without
# inductor's C++ compile, which would add minutes on a 2-core CI machine and test nothing of ours.
COMPILE_BACKEND = "aot_eager"


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _assert_compiled_grads_match(f, hidden: torch.Tensor, weight: torch.Tensor) -> None:
    """`f(hidden, weight)` (a scalar) gives the same gradients eager and under torch.compile(fullgraph=True)."""
    grads = []
    for fn in (f, torch.compile(f, fullgraph=True, backend=COMPILE_BACKEND)):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        fn(h, w).backward()
        grads.append((h.grad, w.grad))
    torch.testing.assert_close(grads[1], grads[0])


def test_grpo_loss_compiles(backend):
    B, T = 3, 11
    logp = -torch.rand(B, T, device=DEVICE) - 0.1
    old, ref = logp + 0.1 * torch.randn_like(logp), logp + 0.1 * torch.randn_like(logp)
    adv, mask, beta = torch.randn(B, device=DEVICE), torch.rand(B, T, device=DEVICE) > 0.2, torch.rand(B) * 0.01

    def step(x):
        loss, metrics = grpo_loss(x, old, adv, mask, ref_logp=ref, kl_coef=beta.to(DEVICE), dual_clip=3.0)
        return loss, metrics["clip_frac"]

    compiled = torch.compile(step, fullgraph=True, backend=COMPILE_BACKEND)
    x1, x2 = logp.clone().requires_grad_(), logp.clone().requires_grad_()
    (l1, c1), (l2, c2) = step(x1), compiled(x2)
    l1.backward()
    l2.backward()
    torch.testing.assert_close(l2, l1)
    torch.testing.assert_close(c2, c1)
    torch.testing.assert_close(x2.grad, x1.grad)


def test_low_var_kl_compiles(backend):
    logp = -torch.rand(4, 9, device=DEVICE) - 0.1
    ref = logp + 0.3 * torch.randn_like(logp)
    compiled = torch.compile(lambda x: low_var_kl(x, ref).sum(), fullgraph=True, backend=COMPILE_BACKEND)
    x1, x2 = logp.clone().requires_grad_(), logp.clone().requires_grad_()
    low_var_kl(x1, ref).sum().backward()
    out = compiled(x2)
    out.backward()
    torch.testing.assert_close(out, low_var_kl(logp, ref).sum())
    torch.testing.assert_close(x2.grad, x1.grad)


def test_reposition_compiles(backend):
    params = [torch.randn(5, device=DEVICE), torch.randn(3, 4, device=DEVICE).bfloat16()]
    slow = snapshot(params)
    fast = [p + 1.0 for p in params]
    eager = [f.clone() for f in fast]
    reposition_(eager, slow, 0.8)

    def step(ps, ss):
        reposition_(ps, ss, 0.8)

    compiled_params = [f.clone() for f in fast]
    torch.compile(step, fullgraph=True, backend=COMPILE_BACKEND)(compiled_params, list(slow))
    for a, b in zip(compiled_params, eager):
        assert torch.equal(a, b)


def test_custom_ops_pass_opcheck():
    """Schema, fake-tensor and AOT-dispatch checks of the registered ops (torch.library.opcheck)."""
    B, T = 2, 7
    logp = -torch.rand(B, T, device=DEVICE) - 0.1
    ref = logp + 0.2
    row_w = torch.full((B,), 1.0 / (B * T), device=DEVICE)
    args = (logp, logp - 0.1, torch.randn(B, device=DEVICE), torch.ones(B, T, device=DEVICE), ref, None, row_w)
    utils = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(torch.ops.fastslow.grpo_loss_fwd, (*args, 0.01, 0.2, 0.28, 3.0), test_utils=utils)
    torch.library.opcheck(torch.ops.fastslow.low_var_kl_fwd, (logp, ref), test_utils=utils)
    torch.library.opcheck(torch.ops.fastslow.low_var_kl_bwd, (torch.randn_like(logp), logp, ref), test_utils=utils)
    ps = [torch.randn(6, device=DEVICE), torch.randn(3, device=DEVICE)]
    torch.library.opcheck(torch.ops.fastslow.reposition_, (ps, [p + 1 for p in ps], 0.5), test_utils=utils)


def test_token_logprobs_compiles(backend):
    from fastslow.kernels import token_logprobs

    hidden, weight = torch.randn(7, 8, device=DEVICE), torch.randn(30, 8, device=DEVICE)
    targets = torch.randint(0, 30, (7,), device=DEVICE)

    def f(h, w):
        logp, ent = token_logprobs(h, w, targets, temperature=0.9, with_entropy=True, chunk_tokens=3)
        return (logp + 0.1 * ent).sum()

    _assert_compiled_grads_match(f, hidden, weight)


def test_linear_grpo_loss_compiles(backend):
    from fastslow.kernels import linear_grpo_loss

    B, T, H, V = 2, 5, 8, 30
    hidden, weight = torch.randn(B, T, H, device=DEVICE), torch.randn(V, H, device=DEVICE)
    targets = torch.randint(0, V, (B, T), device=DEVICE)
    old = -torch.rand(B, T, device=DEVICE) - 3.0
    adv, mask = torch.randn(B, device=DEVICE), torch.ones(B, T, dtype=torch.bool, device=DEVICE)

    def f(h, w):
        return linear_grpo_loss(h, w, targets, old, adv, mask, entropy_coef=0.01, chunk_tokens=4)[0]

    _assert_compiled_grads_match(f, hidden, weight)


def test_logprob_ops_pass_opcheck():
    N, H, V = 6, 8, 20
    hidden, weight = torch.randn(N, H, device=DEVICE), torch.randn(V, H, device=DEVICE)
    targets = torch.randint(0, V, (N,), device=DEVICE)
    utils = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(torch.ops.fastslow.token_logprobs_fwd, (hidden, weight, targets, 1.0, 4), test_utils=utils)
    lse = torch.logsumexp(hidden @ weight.t(), -1)
    g = torch.randn(N, device=DEVICE)
    args = (hidden, weight, targets, lse, torch.rand(N, device=DEVICE), g, g, 1.0, 4, True, True)
    torch.library.opcheck(torch.ops.fastslow.token_logprobs_bwd, args, test_utils=utils)
