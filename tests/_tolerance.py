"""One tolerance table for every kernel test: (atol, rtol) by input dtype, against a float64 reference.

The kernels compute in float32 whatever the input dtype; the reference runs in float64 on the same (already
rounded) inputs. `atol` is relative to the largest entry of the expected tensor, because the float32 errors
that need it come from cancellation (`exp(d) - d - 1`, `1 - exp(d)`, sums of signed terms) and scale with the
size of the terms, not with the result.
"""

from __future__ import annotations

import torch

TOL: dict[torch.dtype, dict[str, tuple[float, float]]] = {
    # float32 math against float64: a few float32 ulps (1.2e-7) of the largest term after cancellation.
    torch.float32: {"value": (1e-6, 1e-5), "grad": (1e-6, 1e-5)},
    # bf16 inputs: values are float32 math on exact bf16 inputs, so as tight as float32. The gradient is returned
    # in bf16 (logp's dtype) after one rounding: half an ulp, 2^-8 = 3.9e-3 relative; rtol allows 2x for the
    # float32 error in front of that rounding, atol covers entries far below the largest.
    torch.bfloat16: {"value": (1e-6, 1e-5), "grad": (4e-3, 8e-3)},
    # fp16 gradient: one rounding to 11 bits of mantissa, 2^-11 = 4.9e-4 relative; rtol allows 2x.
    torch.float16: {"value": (1e-6, 1e-5), "grad": (5e-4, 1e-3)},
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, kind: str) -> None:
    """Compare in float64 with the table's tolerance for `dtype` and `kind` ("value" or "grad")."""
    atol, rtol = TOL[dtype][kind]
    scale = max(expected.detach().abs().max().item(), 1e-30) if expected.numel() else 1.0
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol * scale, rtol=rtol)


# ------------------------------------------------------------------------------------- named comparisons
# The kernel tests that compare against something other than the float64 reference above, or that grew their own
# scale rule, take their tolerance from here by name, so every kernel tolerance lives in this file. The values are
# the ones each test had; each keeps its reason.

PAIR: dict[str, dict[str, float]] = {
    # The same float32 math in another order (chunk sizes, fused vs unfused, the NaN-free rows of a NaN case):
    # a few ulps of the values and the metrics.
    "reorder": {"atol": 1e-6, "rtol": 1e-5},
    # Gradients of the fused vs the unfused GRPO chain (test_linear_grpo): the same reorder, but the per-token
    # gradients are ~1/N_tokens of the loss, so atol is 10x smaller to keep it meaningful.
    "reorder_grad": {"atol": 1e-7, "rtol": 1e-5},
    # linear_grpo_loss against the float64 eager chain: loss and metrics as "reorder"; gradients go through three
    # float32 GEMMs after the log-sum-exp, rtol 1e-4.
    "f64_loss": {"atol": 1e-6, "rtol": 1e-5},
    "f64_grad": {"atol": 1e-6, "rtol": 1e-4},
    # token_logprobs on odd leading shapes against float64: float32 log-sum-exp of a few terms.
    "f64_logprobs": {"atol": 1e-6, "rtol": 1e-6},
    # bf16 hidden and weight, fused vs unfused loss: both round dz to bf16, in different chunk orders.
    "bf16_loss": {"atol": 1e-5, "rtol": 1e-4},
    # SFPO on 2 FSDP2 ranks vs one process, float32 SGD (test_sfpo_fsdp): the two sides differ only in how the
    # minibatch gradient is summed (two half-batch means averaged by a collective vs one matmul over the whole
    # minibatch): a few ulps (~1e-7) relative per gradient. SGD with momentum is linear in the gradients, so over
    # 3 x 2 updates x 2 minibatches at lr 0.1 the parameters (|p| < 1) drift apart by ~1e-7; 1e-5 leaves two orders
    # of margin. (Adam would divide by sqrt(v) and could turn a rounding difference on a near-zero gradient into a
    # visible one, which is why that test uses SGD.)
    "fsdp_sfpo": {"atol": 1e-5, "rtol": 1e-5},
}

REPOSITION: dict[torch.dtype, dict[str, float]] = {
    # float32: the kernels may round the three float32 operations differently from torch (fma contraction, or
    # alpha rounded at another point), so allow about two ulps at the |values| ~ 4 the perturbation reaches.
    torch.float32: {"atol": 1e-6, "rtol": 1e-6},
    # bfloat16: both compute in float32 and round once, to nearest even, at the end (the Triton kernel rounds by
    # hand, `fastslow.kernels._triton.cast_rtne`, so the interpreter agrees with a GPU); those rare 1-ulp float32
    # differences do not survive the cast at these sizes, so exact.
    torch.bfloat16: {"atol": 0.0, "rtol": 0.0},
}
"""`reposition_` on FSDP2 shards against the plain-torch formula (test_reposition_fsdp), by parameter dtype."""

# Relative to the largest |expected| entry (see `assert_within`), token_logprobs against float64 (test_token_logprobs):
# float32 GEMMs and a float32 log-sum-exp: relative ~1e-6 of the terms. bf16 inputs: the GEMMs accumulate in float32
# over exact bf16 products, so logp/entropy stay float32-accurate; the gradients pass through dz rounded to bf16
# (2^-8 relative) and bf16 GEMM outputs, so they are compared at 2e-2 of the largest entry.
TOKEN_LOGPROBS: dict[torch.dtype, dict[str, float]] = {
    torch.float32: {"value": 2e-5, "grad": 2e-5},
    torch.bfloat16: {"value": 2e-5, "grad": 2e-2},
}
REL: dict[str, float] = {
    # bf16 gradients of the fused vs unfused GRPO chain (test_linear_grpo): both round dz to bf16 and sum GEMMs in
    # bf16 outputs, in different chunk orders: a few bf16 ulps of the largest entry.
    "bf16_grad": 2e-2,
    # token_logprobs at logits in the hundreds (cold temperature) against float64: the online log-sum-exp keeps
    # float32 accuracy, relative to the largest |logp|.
    "large_logits": 1e-5,
}
"""Other comparisons relative to the largest |expected| entry (`assert_within`), by name."""


def assert_within(actual: torch.Tensor, expected: torch.Tensor, rel: float, *, floor: float = 1e-30) -> None:
    """Every entry within `rel` times the largest |expected| (errors scale with the terms, not the result).

    `floor` bounds that scale from below: log-probs and entropies are differences of terms of size |lse| ~ log V,
    so their error does not shrink with the result.
    """
    scale = expected.abs().max().clamp(min=floor)
    err = (actual.double() - expected.double()).abs().max()
    assert err <= rel * scale, f"max error {err.item():.3g} > {rel} * {scale.item():.3g}"
