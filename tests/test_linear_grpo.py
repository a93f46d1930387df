"""linear_grpo_loss equals grpo_loss(token_logprobs(...)) in value and gradients; memory stays chunk-bounded."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from _tolerance import PAIR, REL, assert_within
from conftest import DEVICE

from fastslow.kernels import IGNORE_INDEX, LOSS_AGGS, linear_grpo_loss, linear_grpo_loss_ref, token_logprobs_ref
from fastslow.kernels.grpo import grpo_loss_ref


def make(B: int, T: int, H: int, V: int, dtype: torch.dtype = torch.float32):
    hidden = torch.randn(B, T, H, device=DEVICE).to(dtype)
    weight = (torch.randn(V, H, device=DEVICE) * H**-0.5 * 2).to(dtype)
    targets = torch.randint(0, V, (B, T), device=DEVICE)
    mask = torch.rand(B, T, device=DEVICE) > 0.25
    mask[0, 0] = True
    targets[~mask] = IGNORE_INDEX
    with torch.no_grad():
        logp = token_logprobs_ref(hidden.double(), weight.double(), targets)[0]
    old = (logp + 0.2 * torch.randn_like(logp)).float()
    ref = (logp + 0.2 * torch.randn_like(logp)).float()
    adv = torch.randn(B, device=DEVICE)
    beta = torch.rand(B, device=DEVICE) * 0.05
    return hidden, weight, targets, old, ref, adv, mask, beta


def run(fn, hidden, weight, *args, **kw):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, metrics = fn(h, w, *args, **kw)
    (loss * 1.3).backward()
    return loss, metrics, h.grad, w.grad


@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
@pytest.mark.parametrize("chunk_tokens", [5, 13, None], ids=["sub-row", "rows", "default"])
def test_equals_unfused_composition(backend, loss_agg, chunk_tokens):
    hidden, weight, targets, old, ref, adv, mask, beta = make(3, 11, 16, 97)
    kw = dict(
        ref_logp=ref, kl_coef=beta, clip_low=0.2, clip_high=0.28, dual_clip=3.0, loss_agg=loss_agg,
        temperature=0.9, entropy_coef=0.01, chunk_tokens=chunk_tokens,
    )  # fmt: skip
    fused = run(linear_grpo_loss, hidden, weight, targets, old, adv, mask, **kw)
    unfused = run(linear_grpo_loss_ref, hidden, weight, targets, old, adv, mask, **kw)
    torch.testing.assert_close(fused[0], unfused[0], **PAIR["reorder"])
    assert set(fused[1]) == set(unfused[1])
    for name in fused[1]:
        torch.testing.assert_close(fused[1][name], unfused[1][name], **PAIR["reorder"])
    torch.testing.assert_close(fused[2], unfused[2], **PAIR["reorder_grad"])
    torch.testing.assert_close(fused[3], unfused[3], **PAIR["reorder_grad"])


def test_against_float64_eager(backend):
    """The whole chain against float64 eager code: full logits, log_softmax, gather, the plain GRPO formulas."""
    hidden, weight, targets, old, ref, adv, mask, _ = make(2, 9, 8, 50)
    kw = dict(ref_logp=ref, kl_coef=0.02, dual_clip=2.0)
    loss, metrics, dh, dw = run(linear_grpo_loss, hidden, weight, targets, old, adv, mask, **kw)
    h64, w64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    logp64 = token_logprobs_ref(h64, w64, targets)[0]
    loss64, metrics64 = grpo_loss_ref(
        logp64, old.double(), adv.double(), mask, ref_logp=ref.double(), kl_coef=0.02, dual_clip=2.0
    )
    (loss64 * 1.3).backward()
    torch.testing.assert_close(loss.double(), loss64, **PAIR["f64_loss"])
    torch.testing.assert_close(dh.double(), h64.grad, **PAIR["f64_grad"])
    torch.testing.assert_close(dw.double(), w64.grad, **PAIR["f64_grad"])
    for name in metrics64:
        torch.testing.assert_close(metrics[name].double(), metrics64[name], **PAIR["f64_loss"])


def test_bf16(backend):
    """bf16 hidden and weight: gradients come back in bf16 and agree with the unfused chain to bf16 rounding."""
    hidden, weight, targets, old, ref, adv, mask, beta = make(2, 7, 16, 64, torch.bfloat16)
    kw = dict(ref_logp=ref, kl_coef=beta)
    fused = run(linear_grpo_loss, hidden, weight, targets, old, adv, mask, **kw)
    unfused = run(linear_grpo_loss_ref, hidden, weight, targets, old, adv, mask, **kw)
    assert fused[2].dtype == torch.bfloat16 and fused[3].dtype == torch.bfloat16
    torch.testing.assert_close(fused[0], unfused[0], **PAIR["bf16_loss"])
    for a, b in ((fused[2], unfused[2]), (fused[3], unfused[3])):
        assert_within(a.float(), b.float(), REL["bf16_grad"])


def test_only_the_needed_gradients(backend):
    """A frozen head (weight without grad) gets no gradient GEMM; hidden still gets its gradient."""
    hidden, weight, targets, old, _, adv, mask, _ = make(2, 5, 8, 30)
    h = hidden.clone().requires_grad_()
    loss, _ = linear_grpo_loss(h, weight, targets, old, adv, mask)
    loss.backward()
    assert h.grad is not None and weight.grad is None


def test_entropy_metric_and_bonus(backend):
    hidden, weight, targets, old, _, adv, mask, _ = make(2, 6, 8, 40)
    base = run(linear_grpo_loss, hidden, weight, targets, old, adv, mask)
    bonus = run(linear_grpo_loss, hidden, weight, targets, old, adv, mask, entropy_coef=0.1)
    torch.testing.assert_close(bonus[0], base[0] - 0.1 * base[1]["entropy"])  # token-mean: the same weights
    assert 0 < base[1]["entropy"] < torch.log(torch.tensor(40.0))


def test_bad_input():
    hidden, weight, targets, old, _, adv, mask, _ = make(2, 5, 8, 30)
    with pytest.raises(ValueError, match="hidden"):
        linear_grpo_loss(hidden[0], weight, targets[0], old, adv, mask)
    with pytest.raises(ValueError, match="old_logp"):
        linear_grpo_loss(hidden, weight, targets, old[:, :3], adv, mask)
    with pytest.raises(ValueError, match="entropy_coef"):
        linear_grpo_loss(hidden, weight, targets, old, adv, mask, entropy_coef=float("inf"))
    with pytest.raises(ValueError, match="ref_logp"):
        linear_grpo_loss(hidden, weight, targets, old, adv, mask, kl_coef=0.1)


def bad_cases() -> dict:
    """Arguments `linear_grpo_loss` used to accept silently, each with the name its error must give."""
    B, T = 2, 5
    return {
        # the case: a loss of 0.207 with zero gradient from tokens that count but have no target
        "all_targets_ignored": (dict(targets=torch.full((B, T), IGNORE_INDEX)), "targets.*mask"),
        "one_counted_target_ignored": (dict(mask=torch.ones(B, T, dtype=torch.bool)), "targets.*mask"),
        "mask_minus_one": (dict(mask=-torch.ones(B, T)), "mask must hold only 0 and 1"),
        "mask_half": (dict(mask=torch.full((B, T), 0.5)), "mask must hold only 0 and 1"),
        "kl_coef_negative": (dict(kl_coef=-0.1), "kl_coef"),
        "kl_coef_row_negative": (dict(kl_coef=torch.tensor([0.1, -0.1])), "kl_coef"),
        "num_tokens_zero": (dict(num_tokens=torch.tensor(0.0)), "num_tokens"),
        "chunk_tokens_zero": (dict(chunk_tokens=0), "chunk_tokens"),
        "target_out_of_vocab": (dict(targets=torch.full((B, T), 30)), "targets"),
    }


@pytest.mark.parametrize("case", bad_cases())
def test_rejects_bad_values(case):
    changes, name = bad_cases()[case]
    hidden, weight, _, old, ref, adv, mask, _ = make(2, 5, 8, 30)
    targets = torch.randint(0, 30, (2, 5), device=DEVICE)
    mask[:] = True
    targets[0, 3] = IGNORE_INDEX  # counted (mask 1) in "one_counted_target_ignored" only
    mask[0, 3] = False
    linear_grpo_loss(hidden, weight, targets, old, adv, mask, ref_logp=ref, kl_coef=0.01)  # the base case is fine
    kw = dict(targets=targets, mask=mask, ref_logp=ref, kl_coef=0.01) | changes
    with pytest.raises(ValueError, match=name):
        linear_grpo_loss(hidden, weight, kw.pop("targets"), old, adv, kw.pop("mask"), **kw)


def run_pair(hidden, weight, targets, old, adv, mask, **kw):
    """(loss, metrics, d hidden, d weight) fused and unfused (token_logprobs then grpo_loss)."""
    fused = run(linear_grpo_loss, hidden, weight, targets, old, adv, mask, **kw)
    unfused = run(linear_grpo_loss_ref, hidden, weight, targets, old, adv, mask, **kw)
    return fused, unfused


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter's numpy warns about the NaN
@pytest.mark.parametrize("name", ["hidden", "weight", "old_logp", "ref_logp", "advantages"])
def test_nan_propagates(backend, name):
    """A NaN in any input: a NaN loss, and NaN gradients exactly where the unfused chain has them (a NaN in
    hidden[b, t]: d hidden NaN in that token's row only, d weight all NaN)."""
    hidden, weight, targets, old, ref, adv, mask, beta = make(2, 6, 8, 40)
    nan = float("nan")
    {
        "hidden": lambda: hidden[1, 2].fill_(nan),
        "weight": lambda: weight[5, 1].fill_(nan),
        "old_logp": lambda: old[0, 0].fill_(nan),
        "ref_logp": lambda: ref[0, 0].fill_(nan),
        "advantages": lambda: adv[1].fill_(nan),
    }[name]()
    mask[1, 2] = True
    targets[1, 2] = 7
    kw = dict(ref_logp=ref, kl_coef=beta, dual_clip=3.0, entropy_coef=0.01, chunk_tokens=5)
    fused, unfused = run_pair(hidden, weight, targets, old, adv, mask, **kw)
    assert fused[0].isnan() and unfused[0].isnan()
    for a, b in ((fused[2], unfused[2]), (fused[3], unfused[3])):
        assert torch.equal(a.isnan(), b.isnan())
        torch.testing.assert_close(a, b, **PAIR["reorder_grad"], equal_nan=True)
    for key in unfused[1]:
        torch.testing.assert_close(fused[1][key], unfused[1][key], **PAIR["reorder"], equal_nan=True)
    if name == "hidden":
        nan_rows = fused[2].isnan().all(-1)
        assert nan_rows[1, 2] and nan_rows.sum() == 1 and not fused[2][~nan_rows].isnan().any()
    assert fused[3].isnan().all()


@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
@pytest.mark.parametrize("B, T, H", [(2, 0, 8), (0, 4, 8), (2, 3, 0), (0, 0, 0)], ids=str)
def test_empty_inputs(backend, B, T, H, loss_agg):
    """No tokens (B or T = 0): a zero loss and zero gradients of the inputs' shapes. H = 0: all-zero logits, a
    finite loss equal to the unfused chain's."""
    V = 11
    hidden = torch.randn(B, T, H, device=DEVICE)
    weight = torch.randn(V, H, device=DEVICE)
    targets = torch.randint(0, V, (B, T), device=DEVICE)
    old = -torch.rand(B, T, device=DEVICE) - 2.0
    adv, mask = torch.randn(B, device=DEVICE), torch.ones(B, T, dtype=torch.bool, device=DEVICE)
    kw = dict(loss_agg=loss_agg, entropy_coef=0.01, chunk_tokens=2)
    fused, unfused = run_pair(hidden, weight, targets, old, adv, mask, **kw)
    assert fused[2].shape == hidden.shape and fused[3].shape == weight.shape
    assert torch.isfinite(fused[0]) and all(torch.isfinite(v) for v in fused[1].values())
    if B * T == 0:
        assert fused[0].item() == 0.0 and fused[1]["tokens"].item() == 0 and torch.all(fused[3] == 0)
    torch.testing.assert_close(fused[0], unfused[0], **PAIR["reorder"])
    for a, b in zip(fused[1:], unfused[1:]):
        torch.testing.assert_close(a, b, **PAIR["reorder_grad"])


MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys, torch
    from fastslow.kernels import token_logprobs, token_logprobs_ref
    torch.manual_seed(0)
    N, H, V = 4096, 64, 32000
    h = torch.randn(N, H, requires_grad=True)
    w = (torch.randn(V, H) * 0.1).requires_grad_()
    t = torch.randint(0, V, (N,))
    g = torch.randn(N)
    token_logprobs(h[:2], w, t[:2], with_entropy=True)[0].sum().backward()  # warm-up, not counted
    h.grad = w.grad = None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if sys.argv[1] == "eager":
        logp, ent = token_logprobs_ref(h, w, t)
    else:
        logp, ent = token_logprobs(h, w, t, with_entropy=True)
    (logp * g + ent).sum().backward()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB is Linux's convention")
def test_chunked_peak_memory_far_below_eager():
    """Peak extra resident memory at N=4096, V=32000, forward+backward: the eager path holds several [N, V]
    float32 tensors (logits, log-softmax, their gradients: 0.5 GB each); the chunked CPU path holds one chunk.

    Each path runs in a fresh process, so the peak (ru_maxrss) belongs to that path alone.
    """
    env = {"TRITON_INTERPRET": "0", "PATH": "/usr/bin:/bin"}
    peaks = {}
    for path in ("eager", "chunked"):
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, path], capture_output=True, text=True, env=env, timeout=300
        )
        assert out.returncode == 0, out.stderr
        peaks[path] = int(out.stdout.strip().splitlines()[-1])
    assert peaks["eager"] > 1 << 30, peaks  # the eager path really materialises [N, V] several times
    assert peaks["eager"] >= 5 * peaks["chunked"], peaks
