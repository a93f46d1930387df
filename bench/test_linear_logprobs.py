"""Hidden states to log-probs (forward) and to the GRPO loss (forward+backward): ours against the baselines.

Providers, on the same inputs:
- `ours`: `token_logprobs` (fwd) and `linear_grpo_loss` (fwd+bwd): chunked, never holds `[N, V]` logits.
- `eager`: the full `[N, V]` logits, `log_softmax` in float32 (the float32 log-sum-exp ours computes), `gather`;
  for fwd+bwd that chain feeds `grpo_loss_ref` and autograd does the backward.
- `compiled`: `torch.compile` (default inductor, static shapes) of exactly the eager function.
- `liger`: `liger_kernel.chunked_loss.LigerFusedLinearGRPOLoss` (fwd+bwd only: it has no log-prob-only entry).
  In liger-kernel 0.8.5 it is plain torch (chunked over sequences, then 2048 tokens x 4096 vocab tiles, logits
  recomputed in its backward) with its loss math under `torch.compile`; on the CPU it runs with
  `compiled=False` (inductor's C++ build of its loss would dominate a small CPU run).
  Configured to do our work: `loss_type="bnpo"` (sum over masked tokens / their count = our "token-mean"),
  `beta = kl_coef` with `use_ref_model=True` and the same `ref_per_token_logps` (with `use_ref_model=False` it
  drops the given reference log-probs), the same old log-probs, clip 0.2/0.2, temperature 1. It keeps its default
  `chunk_size=1` (one sequence per chunk), what TRL uses.

Loss settings for every provider: token-mean over the mask, clip_low = clip_high = 0.2, scalar KL coefficient 0.04
with reference log-probs (Liger has no per-sequence coefficient; bench/test_grpo_kl.py measures that), no dual
clip, temperature 1. Each row records the loss value (`check`) so agreement between providers can be seen.

FLOPs: forward 2*N*H*V (one GEMM); forward+backward 3 * 2*N*H*V (logits, d hidden, d weight: the roofline of
issue 3; eager and Liger do more work than that, which is the point). Shapes: the LM heads of Qwen2.5-1.5B
(H=1536, V=151936) and Qwen2.5-7B (H=3584, V=152064) at N in {4096, 16384} tokens, bf16, as B = N/1024 sequences
of T = 1024 for the loss; on the CPU two small fp32 shapes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from bench._harness import backend_name, bench_device, dtype_name, ours_backend, run_case
from fastslow.kernels import grpo_loss_ref, linear_grpo_loss, token_logprobs
from fastslow.kernels._chunks import chunk_rows

KL_COEF = 0.04
CLIP = 0.2
TEMPERATURE = 1.0


@dataclass(frozen=True)
class LinearShape:
    """N tokens of hidden size H against a vocabulary of V; for the loss, B = N / T sequences of T tokens."""

    N: int
    H: int
    V: int
    T: int

    @property
    def B(self) -> int:
        return self.N // self.T

    @property
    def id(self) -> str:
        return f"N{self.N}-H{self.H}-V{self.V}"


DEVICE = bench_device()
ON_GPU = DEVICE.type == "cuda"
DTYPE = torch.bfloat16 if ON_GPU else torch.float32
if ON_GPU:
    SHAPES = [LinearShape(N, H, V, 1024) for H, V in ((1536, 151936), (3584, 152064)) for N in (4096, 16384)]
else:
    SHAPES = [LinearShape(512, 64, 4096, 128), LinearShape(256, 128, 32000, 128)]


def _marks(provider: str) -> list[pytest.MarkDecorator]:
    # On CUDA, ours and inductor's output are Triton kernels; Liger's compiled loss math is too.
    if ON_GPU and provider in ("ours", "compiled", "liger"):
        return [pytest.mark.uses_triton]
    return []


def _cases(providers: tuple[str, ...]) -> list[Any]:
    return [
        pytest.param(p, s, id=f"{p}-{s.id}-{dtype_name(DTYPE)}", marks=_marks(p)) for s in SHAPES for p in providers
    ]


def eager_logp(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Full logits, float32 log_softmax, gather: `[N, H] x [V, H] -> [N]` float32 (temperature 1: no division)."""
    logits = hidden @ weight.t()
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def eager_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor,
) -> torch.Tensor:
    """The eager chain: logits -> log_softmax -> gather -> `grpo_loss_ref`."""
    B, T, H = hidden.shape
    logp = eager_logp(hidden.reshape(B * T, H), weight, targets.reshape(B * T)).view(B, T)
    loss, _ = grpo_loss_ref(
        logp, old_logp, advantages, mask, ref_logp=ref_logp, kl_coef=KL_COEF, clip_low=CLIP, clip_high=CLIP
    )
    return loss


def make_inputs(shape: LinearShape, device: torch.device) -> dict[str, torch.Tensor]:
    """Random head and hidden states (logits ~ N(0, 1)), random targets, old/ref log-probs near the policy's."""
    B, T, H, V = shape.B, shape.T, shape.H, shape.V
    hidden = torch.randn(B, T, H, device=device, dtype=DTYPE)
    weight = (torch.randn(V, H, device=device, dtype=torch.float32) * H**-0.5).to(DTYPE)
    targets = torch.randint(0, V, (B, T), device=device)
    lengths = torch.randint(T // 2, T + 1, (B,), device=device)
    mask = (torch.arange(T, device=device)[None, :] < lengths[:, None]).float()
    with torch.no_grad():  # eager in slices of 2048 tokens: no kernel of ours (nor Triton) runs in the set-up
        h2, t2 = hidden.view(B * T, H), targets.view(B * T)
        logp = torch.cat([eager_logp(h2[i : i + 2048], weight, t2[i : i + 2048]) for i in range(0, B * T, 2048)])
        logp = logp.view(B, T)
    return {
        "hidden": hidden,
        "weight": weight,
        "targets": targets,
        "old_logp": logp + 0.05 * torch.randn_like(logp),
        "ref_logp": logp + 0.1 * torch.randn_like(logp),
        "advantages": torch.randn(B, device=device),
        "mask": mask,
    }


@pytest.mark.parametrize(("provider", "shape"), _cases(("ours", "eager", "compiled")))
def test_logprobs_fwd(benchmark: Any, device: torch.device, ceil: dict, provider: str, shape: LinearShape) -> None:
    """Forward only: per-token log-probs from hidden states (no grad)."""
    x = make_inputs(shape, device)
    hidden = x["hidden"].reshape(shape.N, shape.H)
    weight, targets = x["weight"], x["targets"].reshape(shape.N)
    extra: dict[str, Any] = {"B": shape.B, "T": shape.T}

    if provider == "ours":

        def fwd() -> torch.Tensor:
            with ours_backend(device):
                return token_logprobs(hidden, weight, targets)[0]

        extra.update(backend=backend_name(device), chunk_tokens=chunk_rows(shape.N, shape.V, device))
    elif provider == "eager":
        fwd = lambda: eager_logp(hidden, weight, targets)
    else:
        compiled = torch.compile(eager_logp, dynamic=False)
        fwd = lambda: compiled(hidden, weight, targets)

    def step() -> torch.Tensor:
        with torch.no_grad():
            return fwd()

    run_case(
        benchmark, step, group="logprobs", provider=provider, shape=shape.id, dtype=dtype_name(DTYPE), mode="fwd",
        device=device, flops=2.0 * shape.N * shape.H * shape.V, check=lambda: float(step().sum()), extra=extra,
    )  # fmt: skip


def _liger_loss(device: torch.device) -> Callable[..., tuple[torch.Tensor, Any]]:
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
    except ImportError as exc:  # pragma: no cover - liger-kernel is a bench extra
        pytest.skip(f"liger-kernel is not importable: {exc}")
    return LigerFusedLinearGRPOLoss(
        beta=KL_COEF,
        compiled=device.type == "cuda",
        use_ref_model=True,
        epsilon_low=CLIP,
        epsilon_high=CLIP,
        loss_type="bnpo",
        temperature=TEMPERATURE,
    )


@pytest.mark.parametrize(("provider", "shape"), _cases(("ours", "eager", "compiled", "liger")))
def test_linear_grpo_fwd_bwd(
    benchmark: Any, device: torch.device, ceil: dict, provider: str, shape: LinearShape
) -> None:
    """Forward+backward: hidden states -> GRPO loss (with KL to a reference) -> grads of hidden and weight."""
    x = make_inputs(shape, device)
    hidden = x["hidden"].requires_grad_(True)
    weight = x["weight"].requires_grad_(True)
    targets, old, ref, adv, mask = x["targets"], x["old_logp"], x["ref_logp"], x["advantages"], x["mask"]
    extra: dict[str, Any] = {"B": shape.B, "T": shape.T, "kl_coef": KL_COEF}

    if provider == "ours":

        def loss_fn() -> torch.Tensor:
            with ours_backend(device):
                loss, _ = linear_grpo_loss(
                    hidden, weight, targets, old, adv, mask, ref_logp=ref, kl_coef=KL_COEF, clip_low=CLIP,
                    clip_high=CLIP, temperature=TEMPERATURE,
                )  # fmt: skip
            return loss

        extra.update(backend=backend_name(device), chunk_tokens=chunk_rows(shape.N, shape.V, device))
    elif provider == "eager":
        loss_fn = lambda: eager_loss(hidden, weight, targets, old, adv, mask, ref)
    elif provider == "compiled":
        compiled = torch.compile(eager_loss, dynamic=False)
        loss_fn = lambda: compiled(hidden, weight, targets, old, adv, mask, ref)
    else:
        liger = _liger_loss(device)
        loss_fn = lambda: liger(hidden, weight, targets, mask, adv, ref_per_token_logps=ref, old_per_token_logps=old)[0]
        extra.update(liger_loss_type=liger.loss_type, liger_chunk_size=liger.chunk_size, liger_compiled=liger.compiled)

    def step() -> torch.Tensor:
        hidden.grad = None
        weight.grad = None
        loss = loss_fn()
        loss.backward()
        return loss.detach()

    run_case(
        benchmark, step, group="linear_grpo", provider=provider, shape=shape.id, dtype=dtype_name(DTYPE),
        mode="fwd+bwd", device=device, flops=3 * 2.0 * shape.N * shape.H * shape.V, check=lambda: float(step()),
        extra=extra,
    )  # fmt: skip
