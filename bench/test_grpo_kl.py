"""The GRPO loss with per-sequence k3 KL on given log-probs, forward+backward: ours against the baselines.

Providers, on the same inputs (float32 log-probs `[B, T]`, bool mask, one advantage and one KL coefficient per
sequence, clip 0.2/0.28, token-mean):
- `ours`: `fastslow.kernels.grpo_loss` (its KL term is `low_var_kl`'s math, fused in the same pass);
- `eager`: `fastslow.kernels.grpo_loss_ref`, the plain torch chain (autograd does the backward);
- `compiled`: `torch.compile` (default inductor, static shapes) of `grpo_loss_ref`;
- `liger`: Liger's Triton GRPO loss (`liger_kernel.ops.grpo_loss.GrpoLossFunction`, `triton_grpo_loss`) does not
  apply: it takes the logits `[B, T+1, V]` and computes the log-softmax itself, so it cannot be given log-probs, and
  its KL weight is one compile-time constant (no per-sequence coefficient). It is listed and skipped with that
  reason; its fused-linear sibling is measured in bench/test_linear_logprobs.py.

Memory-bound, so the figure is GB/s against the device's copy bandwidth, counting the minimal traffic: read
logp, old_logp, ref_logp (4 bytes each), mask (1), the per-sequence advantages and coefficients, write the float32
gradient w.r.t. logp (4). Shapes: B x T = 256 x 4096 and 64 x 16384 on a GPU, 32 x 1024 on the CPU.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from bench._harness import backend_name, bench_device, ours_backend, run_case
from fastslow.kernels import grpo_loss, grpo_loss_ref

CLIP_LOW = 0.2
CLIP_HIGH = 0.28

DEVICE = bench_device()
ON_GPU = DEVICE.type == "cuda"
SHAPES = [(256, 4096), (64, 16384)] if ON_GPU else [(32, 1024)]

LIGER_SKIP = (
    "Liger's Triton GRPO loss (liger_kernel.ops.grpo_loss) consumes logits [B, T+1, V] and does its own "
    "log-softmax, and takes one constant KL weight: it cannot compute a GRPO loss on given log-probs with a "
    "per-sequence KL coefficient; its fused-linear loss is compared in test_linear_logprobs.py"
)


def _marks(provider: str) -> list[pytest.MarkDecorator]:
    if provider == "liger":
        return [pytest.mark.skip(reason=LIGER_SKIP)]
    if ON_GPU and provider in ("ours", "compiled"):
        return [pytest.mark.uses_triton]
    return []


CASES = [
    pytest.param(p, (B, T), id=f"{p}-B{B}-T{T}-fp32", marks=_marks(p))
    for B, T in SHAPES
    for p in ("ours", "eager", "compiled", "liger")
]


def make_inputs(B: int, T: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Log-probs around -2 with small policy drift; rows masked past a random length; per-row advantage and beta."""
    logp = -2.0 + 0.5 * torch.randn(B, T, device=device)
    lengths = torch.randint(T // 2, T + 1, (B,), device=device)
    return {
        "logp": logp,
        "old_logp": logp + 0.1 * torch.randn(B, T, device=device),
        "ref_logp": logp + 0.2 * torch.randn(B, T, device=device),
        "advantages": torch.randn(B, device=device),
        "mask": torch.arange(T, device=device)[None, :] < lengths[:, None],
        "kl_coef": torch.rand(B, device=device) * 0.1,
    }


def minimal_bytes(B: int, T: int) -> int:
    """Read logp, old, ref (fp32), mask (bool); read advantages and kl_coef (fp32 per row); write grad (fp32)."""
    return B * T * (4 + 4 + 4 + 1 + 4) + B * (4 + 4)


@pytest.mark.parametrize(("provider", "shape"), CASES)
def test_grpo_kl_fwd_bwd(
    benchmark: Any, device: torch.device, ceil: dict, provider: str, shape: tuple[int, int]
) -> None:
    """Forward+backward of the GRPO loss with KL to a reference, per-sequence KL coefficients."""
    B, T = shape
    x = make_inputs(B, T, device)
    logp = x["logp"].requires_grad_(True)
    args = (logp, x["old_logp"], x["advantages"], x["mask"])
    kwargs = {"ref_logp": x["ref_logp"], "kl_coef": x["kl_coef"], "clip_low": CLIP_LOW, "clip_high": CLIP_HIGH}
    extra: dict[str, Any] = {"B": B, "T": T, "loss_agg": "token-mean"}

    if provider == "ours":

        def loss_fn() -> torch.Tensor:
            with ours_backend(device):
                return grpo_loss(*args, **kwargs)[0]

        extra["backend"] = backend_name(device)
    elif provider == "eager":
        loss_fn = lambda: grpo_loss_ref(*args, **kwargs)[0]
    else:
        compiled = torch.compile(grpo_loss_ref, dynamic=False)
        loss_fn = lambda: compiled(*args, **kwargs)[0]

    def step() -> torch.Tensor:
        logp.grad = None
        loss = loss_fn()
        loss.backward()
        return loss.detach()

    run_case(
        benchmark, step, group="grpo_kl", provider=provider, shape=f"B{B}-T{T}", dtype="fp32", mode="fwd+bwd",
        device=device, bytes_moved=minimal_bytes(B, T), check=lambda: float(step()), extra=extra,
    )  # fmt: skip
