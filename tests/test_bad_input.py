"""Bad input to the public kernel functions raises ValueError naming the argument; non-contiguous is handled."""

from __future__ import annotations

import pytest
import torch

from fastslow.kernels import grpo_loss, low_var_kl, reposition_, snapshot

B, T = 3, 5


def good() -> dict:
    logp = -torch.rand(B, T) - 0.1
    return dict(
        logp=logp,
        old_logp=logp + 0.1,
        advantages=torch.randn(B),
        mask=torch.ones(B, T, dtype=torch.bool),
        ref_logp=logp - 0.1,
        kl_coef=0.01,
    )


def call_grpo(**changes):
    kw = good() | changes
    return grpo_loss(kw.pop("logp"), kw.pop("old_logp"), kw.pop("advantages"), kw.pop("mask"), **kw)


META = torch.device("meta")  # a second device on a CPU-only machine

GRPO_CASES = {
    "logp_1d": (dict(logp=torch.rand(B)), "logp"),
    "logp_int": (dict(logp=torch.ones(B, T, dtype=torch.int64)), "logp"),
    "logp_list": (dict(logp=[[0.0] * T] * B), "logp"),
    "old_shape": (dict(old_logp=torch.rand(B, T + 1)), "old_logp"),
    "old_int": (dict(old_logp=torch.ones(B, T, dtype=torch.int32)), "old_logp"),
    "old_device": (dict(old_logp=torch.rand(B, T, device=META)), "old_logp"),
    "ref_shape": (dict(ref_logp=torch.rand(B + 1, T)), "ref_logp"),
    "adv_shape": (dict(advantages=torch.rand(B + 1)), "advantages"),
    "adv_int": (dict(advantages=torch.ones(B, dtype=torch.int64)), "advantages"),
    "adv_device": (dict(advantages=torch.rand(B, device=META)), "advantages"),
    "mask_shape": (dict(mask=torch.ones(B, T - 1)), "mask"),
    "mask_device": (dict(mask=torch.ones(B, T, device=META)), "mask"),
    "coef_shape": (dict(kl_coef=torch.rand(B + 2)), "kl_coef"),
    "coef_int": (dict(kl_coef=torch.ones(B, dtype=torch.int64)), "kl_coef"),
    "coef_nan": (dict(kl_coef=float("nan")), "kl_coef"),
    "coef_without_ref": (dict(ref_logp=None), "ref_logp"),
    "clip_low_zero": (dict(clip_low=0.0), "clip_low"),
    "clip_high_negative": (dict(clip_high=-0.1), "clip_high"),
    "clip_inf": (dict(clip_high=float("inf")), "clip_high"),
    "dual_clip_le_1": (dict(dual_clip=0.9), "dual_clip"),
    "loss_agg": (dict(loss_agg="mean"), "loss_agg"),
    "num_tokens_wrong_mode": (dict(num_tokens=10, loss_agg="seq-mean-token-mean"), "num_tokens"),
    "norm_len": (dict(norm_len=0, loss_agg="seq-mean-token-sum-norm"), "norm_len"),
    # values: a mask other than 0/1 (a -1 multiplied the loss by -10), a count or a coefficient out of range
    "mask_minus_one": (dict(mask=-torch.ones(B, T)), "mask must hold only 0 and 1"),
    "mask_half": (dict(mask=torch.full((B, T), 0.5)), "mask must hold only 0 and 1"),
    "mask_two_int": (dict(mask=torch.full((B, T), 2)), "mask must hold only 0 and 1"),
    "mask_nan": (dict(mask=torch.full((B, T), float("nan"))), "mask must hold only 0 and 1"),
    "num_tokens_zero": (dict(num_tokens=0), "num_tokens"),
    "num_tokens_negative": (dict(num_tokens=-3.0), "num_tokens"),
    "num_tokens_nan": (dict(num_tokens=float("nan")), "num_tokens"),
    "num_tokens_tensor_zero": (dict(num_tokens=torch.tensor(0.0)), "num_tokens"),
    "num_tokens_tensor_inf": (dict(num_tokens=torch.tensor(float("inf"))), "num_tokens"),
    "num_tokens_tensor_shape": (dict(num_tokens=torch.tensor([4.0, 5.0])), "num_tokens"),
    "coef_negative": (dict(kl_coef=-0.01), "kl_coef"),
    "coef_row_negative": (dict(kl_coef=torch.tensor([0.01, -0.01, 0.02])), "kl_coef"),
    "coef_row_nan": (dict(kl_coef=torch.tensor([0.01, float("nan"), 0.02])), "kl_coef"),
}


@pytest.mark.parametrize("case", GRPO_CASES)
def test_grpo_loss_rejects(case):
    changes, name = GRPO_CASES[case]
    with pytest.raises(ValueError, match=name):
        call_grpo(**changes)


def test_grpo_loss_accepts_edge_values():
    """The boundaries of the value checks are fine: a zero coefficient (scalar or per row), a 0/1 float mask."""
    call_grpo(kl_coef=torch.zeros(B), mask=torch.ones(B, T))
    call_grpo(kl_coef=0.0, num_tokens=torch.tensor(1))


def test_value_checks_cost_one_host_read(monkeypatch):
    """All checks on tensor values of one call come back to the host together: one read (one device sync), with
    a float mask, a per-row kl_coef and a tensor num_tokens all to check."""
    from fastslow.kernels import linear_grpo_loss, token_logprobs

    reads = []
    for method in ("tolist", "item", "__bool__"):
        original = getattr(torch.Tensor, method)
        monkeypatch.setattr(torch.Tensor, method, lambda t, *a, _f=original, _m=method: reads.append(_m) or _f(t, *a))
    kw = dict(mask=torch.ones(B, T), kl_coef=torch.full((B,), 0.01), num_tokens=torch.tensor(15.0))
    call_grpo(**kw)
    assert reads == ["tolist"]
    reads.clear()
    hidden, weight, targets = torch.randn(B, T, 4), torch.randn(7, 4), torch.randint(0, 7, (B, T))
    g = good()
    linear_grpo_loss(hidden, weight, targets, g["old_logp"], g["advantages"], ref_logp=g["ref_logp"], **kw)
    assert reads == ["tolist"]
    reads.clear()
    token_logprobs(hidden, weight, targets)
    assert reads == ["tolist"]


def test_raise_on_values_reports_the_first_failure():
    from fastslow.kernels._checks import raise_on_values

    yes, no = torch.tensor(True), torch.tensor(False)
    raise_on_values([])
    raise_on_values([(no, "a"), (no, lambda: 1 / 0)])  # a message callable is only called on failure
    with pytest.raises(ValueError, match=r"^b$"):
        raise_on_values([(no, "a"), (yes, lambda: "b"), (yes, "c")])


@pytest.mark.parametrize(
    "logp, ref, name",
    [
        (torch.rand(3), torch.rand(4), "ref_logp"),
        (torch.ones(3, dtype=torch.int64), torch.rand(3), "logp"),
        (torch.rand(3), torch.ones(3, dtype=torch.int64), "ref_logp"),
        (torch.rand(3), torch.rand(3, device=META), "ref_logp"),
        ("not a tensor", torch.rand(3), "logp"),
    ],
)
def test_low_var_kl_rejects(logp, ref, name):
    with pytest.raises(ValueError, match=name):
        low_var_kl(logp, ref)


REPOSITION_CASES = {
    "length": (lambda p: (p, p[:1], 0.5), "slow"),
    "numel": (lambda p: (p, [torch.rand(4), torch.rand(3)], 0.5), r"slow\[1\]"),
    "alpha_nan": (lambda p: (p, [x.clone() for x in p], float("nan")), "alpha"),
    "alpha_inf": (lambda p: (p, [x.clone() for x in p], float("inf")), "alpha"),
    "alpha_str": (lambda p: (p, [x.clone() for x in p], "0.5"), "alpha"),
    "param_int": (lambda p: ([torch.ones(4, dtype=torch.int32)], [torch.rand(4)], 0.5), r"params\[0\]"),
    "param_f64": (lambda p: ([torch.rand(4, dtype=torch.float64)], [torch.rand(4)], 0.5), r"params\[0\]"),
    "slow_int": (lambda p: (p, [p[0].clone(), torch.ones(5, dtype=torch.int64)], 0.5), r"slow\[1\]"),
    "param_noncontig": (lambda p: ([torch.rand(4, 6)[:, ::2]], [torch.rand(12)], 0.5), r"params\[0\]"),
    "slow_noncontig": (lambda p: ([torch.rand(12)], [torch.rand(4, 6)[:, ::2]], 0.5), r"slow\[0\]"),
    "slow_device": (lambda p: (p, [p[0].clone(), torch.rand(5, device=META)], 0.5), r"slow\[1\]"),
    "mixed_params": (lambda p: ([p[0], torch.rand(5, device=META)], [p[0], p[1]], 0.5), r"params\[1\]"),
    "not_tensor": (lambda p: ([1.0, 2.0], [1.0, 2.0], 0.5), r"params\[0\]"),
}


@pytest.mark.parametrize("case", REPOSITION_CASES)
def test_reposition_rejects(case):
    make, name = REPOSITION_CASES[case]
    params = [torch.rand(4), torch.rand(5)]
    before = [p.clone() for p in params]
    with pytest.raises(ValueError, match=name):
        reposition_(*make(params))
    assert all(torch.equal(a, b) for a, b in zip(params, before)), "a rejected call must not touch params"


def test_snapshot_rejects_mixed_devices():
    with pytest.raises(ValueError, match=r"params\[1\]"):
        snapshot([torch.rand(3), torch.rand(3, device=META)])


def test_non_contiguous_inputs_are_handled(backend):
    """grpo_loss and low_var_kl accept strided views and give the same result as contiguous copies."""
    wide = -torch.rand(B, 2 * T) - 0.1
    logp = wide[:, ::2]
    kw = good()
    x1 = logp.clone().requires_grad_()
    x2 = wide.clone().requires_grad_()
    l1, _ = grpo_loss(x1, kw["old_logp"].t().contiguous().t(), kw["advantages"], kw["mask"], ref_logp=kw["ref_logp"])
    l2, _ = grpo_loss(x2[:, ::2], kw["old_logp"], kw["advantages"], kw["mask"], ref_logp=kw["ref_logp"])
    l1.backward()
    l2.backward()
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(x2.grad[:, ::2], x1.grad)
    assert torch.all(x2.grad[:, 1::2] == 0)
    torch.testing.assert_close(low_var_kl(wide[:, ::2], kw["ref_logp"]), low_var_kl(logp.contiguous(), kw["ref_logp"]))
