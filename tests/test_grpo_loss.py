"""grpo_loss against the float64 plain-torch reference: values, gradients, metrics, modes, odd shapes."""

from __future__ import annotations

import pytest
import torch
from _tolerance import assert_close
from conftest import DEVICE

from fastslow.kernels import LOSS_AGGS, grpo_loss, grpo_loss_ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (B, T): odd, non-power-of-two, length 1, and one crossing the kernel's 1024-token tile.
SHAPES = [(3, 37), (1, 1), (4, 1), (2, 1030), (5, 17)]


def make_inputs(B: int, T: int, dtype: torch.dtype, *, spread: float = 0.3, per_token_adv: bool = False):
    """Random inputs (never zeros) rounded to `dtype`; the mask has an all-masked row when B > 1."""
    logp = (-torch.rand(B, T, dtype=torch.float64) * 3 - 0.01).to(dtype)
    old = (logp.double() + spread * torch.randn(B, T, dtype=torch.float64)).to(dtype)
    ref = (logp.double() + spread * torch.randn(B, T, dtype=torch.float64)).to(dtype)
    adv_shape = (B, T) if per_token_adv else (B,)
    adv = torch.randn(adv_shape, dtype=torch.float64).to(dtype)
    mask = torch.rand(B, T) > 0.3
    mask[0, 0] = True  # at least one token counts
    if B > 1:
        mask[-1] = False  # an all-masked row
    beta = (torch.rand(B, dtype=torch.float64) * 0.05 + 0.001).float()
    return [t.to(DEVICE) for t in (logp, old, ref, adv, mask, beta)]


def run_both(logp, old, ref, adv, mask, grad_scale: float = 1.0, **kw):
    """(loss, metrics, dlogp) from the kernel and from the float64 reference on the same inputs."""
    x = logp.clone().requires_grad_()
    loss, metrics = grpo_loss(x, old, adv, mask, ref_logp=ref, **kw)
    (loss * grad_scale).backward()
    kw_ref = dict(kw)
    if isinstance(kw.get("kl_coef"), torch.Tensor):
        kw_ref["kl_coef"] = kw["kl_coef"].double()
    x64 = logp.double().clone().requires_grad_()
    loss64, metrics64 = grpo_loss_ref(x64, old.double(), adv.double(), mask, ref_logp=ref.double(), **kw_ref)
    (loss64 * grad_scale).backward()
    return (loss, metrics, x.grad), (loss64, metrics64, x64.grad)


def check(ours, ref, dtype):
    (loss, metrics, grad), (loss64, metrics64, grad64) = ours, ref
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert grad.dtype == dtype
    assert_close(loss, loss64, dtype, "value")
    assert_close(grad, grad64, dtype, "grad")
    assert set(metrics) == set(metrics64)
    for name in metrics:
        assert not metrics[name].requires_grad
        assert_close(metrics[name], metrics64[name], dtype, "value")


@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(backend, dtype, shape, loss_agg):
    logp, old, ref, adv, mask, beta = make_inputs(*shape, dtype)
    kw = dict(kl_coef=beta, clip_low=0.2, clip_high=0.28, dual_clip=3.0, loss_agg=loss_agg)
    check(*run_both(logp, old, ref, adv, mask, grad_scale=1.7, **kw), dtype)


@pytest.mark.parametrize("dual_clip", [None, 1.5])
@pytest.mark.parametrize("kl", ["none", "scalar", "per_seq"])
@pytest.mark.parametrize("per_token_adv", [False, True])
def test_options(backend, dual_clip, kl, per_token_adv):
    logp, old, ref, adv, mask, beta = make_inputs(4, 33, torch.float32, spread=0.8, per_token_adv=per_token_adv)
    kl_coef = {"none": 0.0, "scalar": 0.02, "per_seq": beta}[kl]
    kw = dict(kl_coef=kl_coef, dual_clip=dual_clip)
    ours, ref64 = run_both(logp, old, ref, adv, mask, **kw)
    check(ours, ref64, torch.float32)
    if dual_clip is not None:
        assert ours[1]["dual_clip_frac"] > 0, "spread 0.8 with c=1.5 must trigger the dual clip somewhere"
    else:
        assert ours[1]["dual_clip_frac"] == 0


def test_clamps_and_saturation(backend):
    """Log-ratios and KL differences beyond the +-20 clamps, and KL beyond its +-10 clamp: zero gradient there."""
    logp, old, ref, adv, mask, _ = make_inputs(2, 40, torch.float32)
    old[0, :10] = logp[0, :10] - 25.0  # ratio clamped at exp(20)
    old[0, 10:20] = logp[0, 10:20] + 25.0  # ratio clamped at exp(-20)
    ref[1, :10] = logp[1, :10] + 25.0  # d clamped at 20, kl clamped at 10
    ref[1, 10:20] = logp[1, 10:20] + 3.0  # kl = e^3 - 4 > 10: clamped
    mask[:] = True
    check(*run_both(logp, old, ref, adv, mask, kl_coef=0.1, dual_clip=2.0), torch.float32)


def test_fully_masked_batch(backend):
    logp, old, ref, adv, mask, beta = make_inputs(3, 8, torch.float32)
    mask[:] = False
    for loss_agg in LOSS_AGGS:
        x = logp.clone().requires_grad_()
        loss, metrics = grpo_loss(x, old, adv, mask, ref_logp=ref, kl_coef=beta, loss_agg=loss_agg)
        loss.backward()
        assert loss.item() == 0.0 and torch.all(x.grad == 0)
        assert all(torch.isfinite(v) for v in metrics.values())
        assert metrics["tokens"].item() == 0


def test_single_masked_token(backend):
    """One counted token: every mode reduces to that token's loss (seq-sum-norm divides by B*T)."""
    logp, old, ref, adv, mask, _ = make_inputs(3, 5, torch.float32)
    mask[:] = False
    mask[1, 2] = True
    losses = {}
    for loss_agg in LOSS_AGGS:
        ours, ref64 = run_both(logp, old, ref, adv, mask, kl_coef=0.03, loss_agg=loss_agg)
        check(ours, ref64, torch.float32)
        losses[loss_agg] = ours[0].item()
        assert torch.count_nonzero(ours[2]) <= 1
    assert losses["token-mean"] == pytest.approx(losses["seq-mean-token-mean"], rel=1e-6)
    assert losses["seq-mean-token-sum-norm"] == pytest.approx(losses["token-mean"] / (3 * 5), rel=1e-6)


def test_hand_computed_values(backend):
    """A case worked by hand: ratios e^0.5, e^-0.5, 1, e^0.1 with A = +1, -1, +2, -2 and no KL."""
    logp = torch.tensor([[-1.0, -2.0, -0.5, -0.3]], device=DEVICE)
    old = logp - torch.tensor([[0.5, -0.5, 0.0, 0.1]], device=DEVICE)
    adv = torch.tensor([[1.0, -1.0, 2.0, -2.0]], device=DEVICE)
    mask = torch.ones(1, 4, dtype=torch.bool, device=DEVICE)
    x = logp.clone().requires_grad_()
    loss, metrics = grpo_loss(x, old, adv, mask, clip_low=0.2, clip_high=0.2)
    loss.backward()
    e = torch.tensor([0.5, -0.5, 0.0, 0.1]).exp()
    # token 0: A>0, ratio 1.65 > 1.2 -> clipped: -1.2, no gradient. token 1: A<0, ratio 0.61 < 0.8 -> clipped:
    # 0.8, no gradient. token 2: -2 * 1 = -2, gradient -2. token 3: A<0, ratio 1.105 inside -> 2*1.105, grad 2.21.
    expected = torch.tensor([-1.2, 0.8, -2.0, 2.0 * e[3].item()]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    torch.testing.assert_close(x.grad.cpu(), torch.tensor([[0.0, 0.0, -2.0, 2.0 * e[3].item()]]) / 4)
    assert metrics["clip_frac"].item() == pytest.approx(0.5)
    assert metrics["ratio"].item() == pytest.approx(e.mean().item(), rel=1e-6)
    assert metrics["pg_loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert metrics["kl"].item() == 0.0 and metrics["dual_clip_frac"].item() == 0.0
    assert metrics["tokens"].item() == 4


def test_per_sequence_coef_equal_to_scalar(backend):
    logp, old, ref, adv, mask, _ = make_inputs(4, 21, torch.float32)
    a = grpo_loss(logp.clone().requires_grad_(), old, adv, mask, ref_logp=ref, kl_coef=0.03)
    b = grpo_loss(logp.clone().requires_grad_(), old, adv, mask, ref_logp=ref, kl_coef=torch.full((4,), 0.03))
    torch.testing.assert_close(a[0], b[0], atol=0, rtol=1e-6)
    # and a per-sequence coefficient really is per sequence: raising one row's beta changes only that row
    logp2 = logp.clone().requires_grad_()
    beta = torch.full((4,), 0.03, device=DEVICE)
    beta[0] = 0.5
    grpo_loss(logp2, old, adv, mask, ref_logp=ref, kl_coef=beta)[0].backward()
    logp1 = logp.clone().requires_grad_()
    grpo_loss(logp1, old, adv, mask, ref_logp=ref, kl_coef=0.03)[0].backward()
    assert not torch.allclose(logp1.grad[0], logp2.grad[0])
    torch.testing.assert_close(logp1.grad[1:], logp2.grad[1:])


def test_global_denominator_splits_micro_batches(backend):
    """Two micro-batches with num_tokens = the whole batch's count sum to the whole batch's loss and gradient."""
    logp, old, ref, adv, mask, beta = make_inputs(6, 19, torch.float32)
    full = logp.clone().requires_grad_()
    loss, _ = grpo_loss(full, old, adv, mask, ref_logp=ref, kl_coef=beta)
    loss.backward()
    n = mask.sum()
    parts = logp.clone().requires_grad_()
    total = 0.0
    for rows in (slice(0, 2), slice(2, 6)):
        part, _ = grpo_loss(
            parts[rows], old[rows], adv[rows], mask[rows], ref_logp=ref[rows], kl_coef=beta[rows], num_tokens=n
        )
        part.backward()
        total = total + part
    torch.testing.assert_close(total, loss, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(parts.grad, full.grad)


def test_norm_len(backend):
    logp, old, _, adv, mask, _ = make_inputs(3, 10, torch.float32)
    kw = dict(loss_agg="seq-mean-token-sum-norm")
    default, _ = grpo_loss(logp, old, adv, mask, **kw)
    halved, _ = grpo_loss(logp, old, adv, mask, norm_len=20, **kw)
    torch.testing.assert_close(halved, default / 2)


@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.bfloat16, torch.int64, torch.uint8], ids=str)
def test_numeric_mask_equals_bool(backend, mask_dtype):
    """A 0/1 mask of any numeric dtype gives exactly the bool mask's loss and gradient (other values raise:
    tests/test_bad_input.py)."""
    logp, old, ref, adv, mask, beta = make_inputs(3, 11, torch.float32)
    results = []
    for m in (mask, mask.to(mask_dtype)):
        x = logp.clone().requires_grad_()
        loss, _ = grpo_loss(x, old, adv, m, ref_logp=ref, kl_coef=beta, loss_agg="seq-mean-token-mean")
        loss.backward()
        results.append((loss, x.grad))
    torch.testing.assert_close(results[1], results[0], atol=0, rtol=0)


NAN_INPUTS = ["logp", "old_logp", "ref_logp", "advantages", "advantages_per_token"]


def nan_case(name: str, masked_out: bool, B: int = 3, T: int = 9):
    """Inputs with one NaN in `name`; returns (inputs, bool [B, T] of the tokens the NaN is in).

    The NaN sits at a counted token, or (`masked_out`) at a token of the all-masked last row. The last column's
    ratio is saturated (log-ratio -25): its derivative is a select to 0, which a NaN advantage does not pass.
    """
    logp, old, ref, adv, mask, beta = make_inputs(B, T, torch.float32, per_token_adv=name == "advantages_per_token")
    old[:, -1] = logp[:, -1] + 25.0
    b, t = (B - 1, 4) if masked_out else (0, 0)  # mask[0, 0] is set, the last row is empty
    at = torch.zeros(B, T, dtype=torch.bool, device=DEVICE)
    if name == "advantages":
        adv[b] = float("nan")
        at[b, :-1] = True  # one advantage per row: the whole row, but for the saturated token
    else:
        tensor = {"logp": logp, "old_logp": old, "ref_logp": ref, "advantages_per_token": adv}[name]
        tensor[b, t] = float("nan")
        at[b, t] = True
    return (logp, old, ref, adv, mask, beta), at


@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
@pytest.mark.parametrize("masked_out", [False, True], ids=["counted", "masked-out"])
@pytest.mark.parametrize("name", NAN_INPUTS)
def test_nan_propagates(backend, name, masked_out, loss_agg):
    """A NaN in any input gives a NaN loss and a NaN gradient at its token(s) on every backend, as in the torch
    reference (masked-out tokens too: torch weights them by 0 and 0 * NaN = NaN); every other gradient entry and
    the metrics equal the reference's, NaN where the reference has NaN."""
    (logp, old, ref, adv, mask, beta), at = nan_case(name, masked_out)
    kw = dict(kl_coef=beta, dual_clip=3.0, loss_agg=loss_agg)
    (loss, metrics, grad), (loss64, metrics64, grad64) = run_both(logp, old, ref, adv, mask, **kw)
    assert loss.isnan() and loss64.isnan()
    assert grad[at].isnan().all() and grad64[at].isnan().all()
    assert torch.equal(grad.isnan(), grad64.isnan())
    torch.testing.assert_close(grad.double(), grad64, atol=1e-6, rtol=1e-5, equal_nan=True)
    for key in metrics64:
        torch.testing.assert_close(metrics[key].double(), metrics64[key], atol=1e-6, rtol=1e-5, equal_nan=True)
    reached = {"logp": ("pg_loss", "ratio", "kl"), "old_logp": ("pg_loss", "ratio"), "ref_logp": ("kl",)}
    for key in reached.get(name, ("pg_loss",)):
        assert metrics[key].isnan(), key


def test_nan_old_logp_everywhere(backend):
    """The issue's case: an all-NaN old_logp gave a finite loss (ratio 0) on the Triton path."""
    logp, _, _, adv, mask, _ = make_inputs(2, 6, torch.float32)
    x = logp.clone().requires_grad_()
    loss, metrics = grpo_loss(x, torch.full_like(logp, float("nan")), adv, mask)
    loss.backward()
    assert loss.isnan() and metrics["ratio"].isnan() and metrics["pg_loss"].isnan()
    assert x.grad.isnan().all()


def test_nan_reaches_only_its_tokens(backend):
    """Outside the token a NaN is in, the gradient equals the clean run's (token-mean: weights don't depend on
    values), and the clamp's zero derivative stays a zero where a clamp is active and the NaN is elsewhere."""
    logp, old, _, adv, mask, _ = make_inputs(3, 9, torch.float32, per_token_adv=True)
    old[1, :3] = logp[1, :3] - 25.0  # saturated ratio: zero derivative (no KL term to add one)
    mask[1] = True
    grads = []
    for poison in (False, True):
        o = old.clone()
        if poison:
            o[1, 5] = float("nan")
        x = logp.clone().requires_grad_()
        grpo_loss(x, o, adv, mask, dual_clip=3.0)[0].backward()
        grads.append(x.grad)
    nan_at = grads[1].isnan()
    assert nan_at[1, 5] and nan_at.sum() == 1
    torch.testing.assert_close(grads[1][~nan_at], grads[0][~nan_at], atol=0, rtol=0)
    assert torch.all(grads[1][1, :3] == 0)


@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
@pytest.mark.parametrize("shape", [(3, 0), (0, 5), (0, 0)], ids=str)
def test_empty_inputs(backend, shape, loss_agg):
    """No tokens (T = 0 or B = 0): a zero loss, an empty gradient of logp's shape, finite metrics, as the
    reference gives them."""
    B = shape[0]
    logp, old, ref = (-torch.rand(shape, device=DEVICE) - 0.1 for _ in range(3))
    adv, beta, mask = torch.randn(B, device=DEVICE), torch.rand(B, device=DEVICE), torch.ones(shape, device=DEVICE)
    x = logp.clone().requires_grad_()
    loss, metrics = grpo_loss(x, old, adv, mask, ref_logp=ref, kl_coef=beta, loss_agg=loss_agg)
    loss.backward()
    assert loss.item() == 0.0 and x.grad.shape == shape
    assert all(torch.isfinite(v) for v in metrics.values()) and metrics["tokens"].item() == 0
    x64 = logp.double().requires_grad_()
    loss64, _ = grpo_loss_ref(x64, old.double(), adv.double(), mask, ref_logp=ref.double(), kl_coef=beta.double())
    assert loss64.item() == 0.0


def test_clip_values_are_runtime_arguments():
    """Clip values and coefficients are plain arguments of the kernel, never constexpr: no recompilation."""
    import inspect

    from fastslow.kernels.grpo import _grpo_loss_fwd_kernel

    fn = getattr(_grpo_loss_fwd_kernel, "fn", _grpo_loss_fwd_kernel)
    params = inspect.signature(fn).parameters
    for name in ("kl_coef", "clip_low", "clip_high", "dual_clip"):
        assert "constexpr" not in str(params[name].annotation), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled Triton needs a GPU")
def test_no_recompilation_on_gpu():
    from fastslow.kernels.grpo import _grpo_loss_fwd_kernel

    logp, old, ref, adv, mask, _ = make_inputs(4, 64, torch.float32)
    grpo_loss(logp, old, adv, mask, ref_logp=ref, kl_coef=0.01, clip_low=0.2, clip_high=0.2, dual_clip=3.0)
    compiled = lambda: sum(len(entry[0]) for entry in _grpo_loss_fwd_kernel.device_caches.values())
    before = compiled()
    for c in (0.1, 0.3):
        grpo_loss(logp, old, adv, mask, ref_logp=ref, kl_coef=c / 10, clip_low=c, clip_high=c + 0.1, dual_clip=2 + c)
    assert compiled() == before
