"""Low-variance (k3) KL estimator per token, `exp(d) - d - 1` with `d = ref_logp - logp`, forward and backward.

Clamps follow the seeds' code: `d` to [-20, 20], the estimate to [-10, 10]. Gradients flow to `logp` only; the
reference log-probs are a constant of the loss.

NaN in, NaN out, on every backend and in `low_var_kl_ref`: a NaN in `logp` or `ref_logp` gives a NaN estimate and a
NaN gradient there (the clamps keep NaN; torch.clamp's own backward would turn it into 0, so the reference uses
`clamp_ref`).

The GRPO loss names its estimator (`LossSettings.kl_estimator`, one of `KL_ESTIMATORS`) and takes it from here in
three forms: `_kl_estimate` (Triton), `kl_estimate_torch` (its CPU path) and `kl_estimate_ref` (plain torch). A new
estimator is a name in `KLEstimator` and a branch in each of the three.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from fastslow.kernels._checks import check_device, check_float, check_shape
from fastslow.kernels._dispatch import backend_for
from fastslow.kernels._triton import cast_rtne, tl, triton

KLEstimator = Literal["k3"]
KL_ESTIMATORS: tuple[str, ...] = get_args(KLEstimator)
"""The per-token KL estimators of the GRPO loss: "k3", the low-variance `exp(d) - d - 1` of this file."""

# BLOCK=1024, 4 warps: the usual choice for a memory-bound elementwise kernel; not yet tuned on a GPU.
_BLOCK = 1024
_NUM_WARPS = 4


@triton.jit
def _kl_terms(logp, ref):
    """Float32 k3 estimate and its derivative w.r.t. logp, with torch.clamp's gradient rule (ends included).

    NaN-propagating clamps (tl.minimum/maximum alone drop NaN), and the derivative is selected to 0 only where a
    clamp is known to be active, so a NaN input gives a NaN estimate and a NaN derivative.
    """
    diff = ref - logp
    d = tl.clamp(diff, -20.0, 20.0, propagate_nan=tl.PropagateNan.ALL)
    e = tl.exp(d)
    raw = e - d - 1.0
    kl = tl.clamp(raw, -10.0, 10.0, propagate_nan=tl.PropagateNan.ALL)
    saturated = (diff < -20.0) | (diff > 20.0) | (raw < -10.0) | (raw > 10.0)
    dkl = tl.where(saturated, 0.0, 1.0 - e)
    return kl, dkl


@triton.jit
def _kl_estimate(logp, ref, ESTIMATOR: tl.constexpr):
    """The float32 estimate named `ESTIMATOR` (one of `KL_ESTIMATORS`) and its derivative w.r.t. logp."""
    tl.static_assert(ESTIMATOR == "k3", "unknown KL estimator")
    return _kl_terms(logp, ref)


@triton.jit
def _low_var_kl_fwd_kernel(logp_ptr, ref_ptr, kl_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < n
    logp = tl.load(logp_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    ref = tl.load(ref_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    kl, _ = _kl_terms(logp, ref)
    tl.store(kl_ptr + offs, kl, mask=inb)


@triton.jit
def _low_var_kl_bwd_kernel(grad_ptr, logp_ptr, ref_ptr, dlogp_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < n
    logp = tl.load(logp_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    ref = tl.load(ref_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    g = tl.load(grad_ptr + offs, mask=inb, other=0.0).to(tl.float32)
    _, dkl = _kl_terms(logp, ref)
    tl.store(dlogp_ptr + offs, cast_rtne(g * dkl, dlogp_ptr.dtype.element_ty), mask=inb)


def _launch_fwd(logp: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    kl = torch.empty(logp.shape, dtype=torch.float32, device=logp.device)
    n = logp.numel()
    if n:
        grid = (triton.cdiv(n, _BLOCK),)
        _low_var_kl_fwd_kernel[grid](logp, ref, kl, n, BLOCK=_BLOCK, num_warps=_NUM_WARPS)
    return kl


def _launch_bwd(grad: torch.Tensor, logp: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    dlogp = torch.empty_like(logp)
    n = logp.numel()
    if n:
        grid = (triton.cdiv(n, _BLOCK),)
        _low_var_kl_bwd_kernel[grid](grad, logp, ref, dlogp, n, BLOCK=_BLOCK, num_warps=_NUM_WARPS)
    return dlogp


def _torch_terms(logp: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The CPU path: the same float32 math as `_kl_terms`, in torch."""
    diff = ref.float() - logp.float()
    d = diff.clamp(-20.0, 20.0)
    e = d.exp()
    raw = e - d - 1.0
    saturated = (diff < -20.0) | (diff > 20.0) | (raw < -10.0) | (raw > 10.0)
    return raw.clamp(-10.0, 10.0), torch.where(saturated, 0.0, 1.0 - e)


def kl_estimate_torch(logp: torch.Tensor, ref: torch.Tensor, estimator: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`_kl_estimate` in torch: the float32 estimate named `estimator` and its derivative w.r.t. logp."""
    if estimator != "k3":
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
    return _torch_terms(logp, ref)


@torch.library.custom_op("fastslow::low_var_kl_fwd", mutates_args=())
def _low_var_kl_fwd(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    if backend_for(logp.device) == "triton":
        return _launch_fwd(logp, ref_logp)
    return _torch_terms(logp, ref_logp)[0]


@_low_var_kl_fwd.register_fake
def _(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return logp.new_empty(logp.shape, dtype=torch.float32)


@torch.library.custom_op("fastslow::low_var_kl_bwd", mutates_args=())
def _low_var_kl_bwd(grad: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    if backend_for(logp.device) == "triton":
        return _launch_bwd(grad.contiguous(), logp, ref_logp)
    return (grad.float() * _torch_terms(logp, ref_logp)[1]).to(logp.dtype)


@_low_var_kl_bwd.register_fake
def _(grad: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(logp)


class LowVarKLFunction(torch.autograd.Function):
    """Forward writes the estimate; backward recomputes the derivative from logp and ref (no saved extra)."""

    @staticmethod
    def forward(ctx, logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(logp, ref_logp)
        return torch.ops.fastslow.low_var_kl_fwd(logp, ref_logp)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        logp, ref_logp = ctx.saved_tensors
        return torch.ops.fastslow.low_var_kl_bwd(grad, logp, ref_logp), None


def low_var_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 KL estimate of the policy from the reference, differentiable w.r.t. `logp`.

    Args:
        logp: `[...]` float32/bf16/fp16/fp64 log-probs of the sampled tokens under the policy.
        ref_logp: `[...]` (same shape and device as `logp`) log-probs under the frozen reference.

    Returns:
        `[...]` float32: `clamp(exp(d) - d - 1, -10, 10)` with `d = clamp(ref_logp - logp, -20, 20)`.
        Its gradient w.r.t. `logp` comes back in `logp`'s dtype; `ref_logp` gets none.
    """
    check_float("logp", logp)
    check_float("ref_logp", ref_logp)
    check_shape("ref_logp", ref_logp, logp.shape, like="logp")
    check_device("ref_logp", ref_logp, logp.device, like="logp")
    return LowVarKLFunction.apply(logp.contiguous(), ref_logp.detach().contiguous())


def clamp_ref(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """`x.clamp(lo, hi)` whose gradient is NaN, not 0, where `x` is NaN (the references' clamp, as the kernels').

    torch.clamp's forward keeps NaN, but its backward passes the gradient only where `lo <= x <= hi`, which is
    false for NaN: a NaN input would get a zero gradient.
    """
    return torch.where(x.isnan(), x, x.clamp(lo, hi))


def low_var_kl_ref(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Plain-torch k3 estimator (autograd does the backward); the reference the kernel is tested against."""
    d = clamp_ref(ref_logp - logp, -20.0, 20.0)
    return clamp_ref(d.exp() - d - 1.0, -10.0, 10.0)


def kl_estimate_ref(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Plain-torch estimate named `estimator` (autograd does the backward): the GRPO loss's reference."""
    if estimator != "k3":
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
    return low_var_kl_ref(logp, ref_logp)
