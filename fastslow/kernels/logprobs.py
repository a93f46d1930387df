"""Token log-probs and entropy straight from hidden states, chunked so `[N, V]` logits never exist at once.

`logp = log_softmax(hidden @ weight.T / temperature)[target]` and the entropy of that distribution. Tokens go
through in chunks sized to a workspace budget (`fastslow.kernels._dispatch.workspace_bytes`): for each chunk one GEMM
writes its `[n, V]` logits (float32), then one row kernel makes a single online pass over them (max, sum of
exponentials, sum of `p * z`, the target's logit). The backward recomputes a chunk's logits, turns them in one
pass into `dL/dlogits` (written in the weight's dtype) and hands that to two GEMMs, `dh = dz @ W` and
`dW += dz.T @ h`. Those chunk pieces (GEMM, row passes, chunk backward) live in `fastslow.kernels._chunks`, shared with
`fastslow.kernels.linear_grpo`; this file holds the op that loops over the chunks, its checks and its reference.

NaN in, NaN out, as in `token_logprobs_ref`: a NaN logit (from a NaN in `hidden[i]` or in a row of `weight`) makes
the log-prob and entropy of every token whose logits it is in NaN, and the gradients that flow through them; rows
are independent, so a NaN in `hidden[i]` leaves the other tokens' results and `d hidden` untouched (`d weight`
sums over all tokens and is NaN). A position whose target is -100 is selected to 0 (a where, not a product) and
stays 0, but the backward still multiplies its NaN softmax by a zero gradient, so its `d hidden` row is NaN, as
torch's log_softmax backward makes it.
"""

from __future__ import annotations

import torch

from fastslow.kernels._checks import (
    ValueCheck,
    check_device,
    check_finite_number,
    check_float,
    raise_on_values,
)
from fastslow.kernels._chunks import IGNORE_INDEX, backward_chunk, chunk_logits, chunk_rows, row_stats

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _forward(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, inv_temp: float, chunk: int, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    N = hidden.shape[0]
    logp, ent, lse = (torch.empty(N, dtype=torch.float32, device=hidden.device) for _ in range(3))
    for n0 in range(0, N, chunk):
        n1 = min(n0 + chunk, N)
        logits = chunk_logits(hidden[n0:n1], weight)
        logp[n0:n1], ent[n0:n1], lse[n0:n1] = row_stats(logits, targets[n0:n1], inv_temp, with_entropy)
    return logp, ent, lse


def _backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    ent: torch.Tensor,
    g_logp: torch.Tensor,
    g_ent: torch.Tensor | None,
    inv_temp: float,
    chunk: int,
    need_hidden: bool,
    need_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    N = hidden.shape[0]
    dh = torch.empty_like(hidden) if need_hidden else hidden.new_empty(0)
    dw = torch.zeros_like(weight) if need_weight else weight.new_empty(0)
    for n0 in range(0, N, chunk):
        n1 = min(n0 + chunk, N)
        logits = chunk_logits(hidden[n0:n1], weight)
        backward_chunk(
            hidden[n0:n1], weight, logits, targets[n0:n1], lse[n0:n1], ent[n0:n1], g_logp[n0:n1],
            None if g_ent is None else g_ent[n0:n1], inv_temp,
            dh[n0:n1] if need_hidden else None, dw if need_weight else None,
        )  # fmt: skip
    return dh, dw


@torch.library.custom_op("fastslow::token_logprobs_fwd", mutates_args=())
def _token_logprobs_fwd(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    inv_temp: float,
    chunk: int,
    with_entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logp, entropy, lse), each `[N]` float32, for `hidden [N, H]`, `weight [V, H]`, `targets [N]` (entropy
    zeros on the torch path when `with_entropy` is False)."""
    return _forward(hidden, weight, targets, inv_temp, chunk, with_entropy)


@_token_logprobs_fwd.register_fake
def _(hidden, weight, targets, inv_temp, chunk, with_entropy=True):
    N = hidden.shape[0]
    return tuple(hidden.new_empty(N, dtype=torch.float32) for _ in range(3))


@torch.library.custom_op("fastslow::token_logprobs_bwd", mutates_args=())
def _token_logprobs_bwd(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    ent: torch.Tensor,
    g_logp: torch.Tensor,
    g_ent: torch.Tensor | None,
    inv_temp: float,
    chunk: int,
    need_hidden: bool,
    need_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d hidden `[N, H]` or empty, d weight `[V, H]` or empty)."""
    return _backward(hidden, weight, targets, lse, ent, g_logp, g_ent, inv_temp, chunk, need_hidden, need_weight)


@_token_logprobs_bwd.register_fake
def _(hidden, weight, targets, lse, ent, g_logp, g_ent, inv_temp, chunk, need_hidden, need_weight):
    dh = torch.empty_like(hidden) if need_hidden else hidden.new_empty(0)
    dw = torch.empty_like(weight) if need_weight else weight.new_empty(0)
    return dh, dw


class TokenLogprobsFunction(torch.autograd.Function):
    """Forward keeps only `lse` and the entropy per token; backward recomputes each chunk's logits once."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, inv_temp, chunk, with_entropy):
        logp, ent, lse = torch.ops.fastslow.token_logprobs_fwd(hidden, weight, targets, inv_temp, chunk, with_entropy)
        ctx.save_for_backward(hidden, weight, targets, lse, ent)
        ctx.inv_temp, ctx.chunk, ctx.with_entropy = inv_temp, chunk, with_entropy
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        hidden, weight, targets, lse, ent = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dh, dw = torch.ops.fastslow.token_logprobs_bwd(
            hidden, weight, targets, lse, ent, g_logp.float().contiguous(),
            g_ent.float().contiguous() if ctx.with_entropy else None,
            ctx.inv_temp, ctx.chunk, need_hidden, need_weight,
        )  # fmt: skip
        return (dh if need_hidden else None), (dw if need_weight else None), None, None, None, None


def check_logprob_inputs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    *,
    value_checks: list[ValueCheck] | None = None,
) -> tuple[int, float]:
    """Shared checks of `token_logprobs` and `linear_grpo_loss`; returns (vocab size, 1 / temperature).

    The check on the target ids' values (a device sync) runs here, or is appended to `value_checks` for the
    caller to run with its own in one sync.
    """
    check_float("hidden", hidden, dtypes=_FLOAT_DTYPES)
    check_float("weight", weight, dtypes=_FLOAT_DTYPES)
    if hidden.dim() < 1:
        raise ValueError("hidden must have shape [..., H]")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight must be [V, H] with H = {hidden.shape[-1]} (hidden's last dim), got {tuple(weight.shape)}"
        )
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight has dtype {weight.dtype} but hidden has {hidden.dtype}: use one dtype")
    check_device("weight", weight, hidden.device, like="hidden")
    if not isinstance(targets, torch.Tensor) or targets.dtype not in (torch.int64, torch.int32):
        raise ValueError("targets must be an int64 or int32 tensor of token ids")
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"targets has shape {tuple(targets.shape)}, expected {tuple(hidden.shape[:-1])} (hidden[..., 0])"
        )
    check_device("targets", targets, hidden.device, like="hidden")
    V = weight.shape[0]
    if V == 0:
        raise ValueError("weight has an empty vocabulary (V = 0)")
    temperature = check_finite_number("temperature", temperature)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    bad = lambda: ((targets < 0) & (targets != IGNORE_INDEX)) | (targets >= V)
    message = lambda: f"targets must lie in [0, {V}) or equal {IGNORE_INDEX}; found {targets[bad()][:5].tolist()}"
    check = (bad().any(), message)
    if value_checks is None:
        raise_on_values([check])
    else:
        value_checks.append(check)
    return V, 1.0 / temperature


def token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of each target token (and the entropy) under `softmax(hidden @ weight.T / temperature)`.

    Never builds the `[N, V]` logits: memory beyond inputs, outputs and gradients is one chunk of
    `chunk_tokens x V` float32 logits (default: as many tokens as `fastslow.kernels._dispatch.workspace_bytes` holds).

    Args:
        hidden: `[..., H]` float32/bf16/fp16 final hidden states (after the last norm).
        weight: `[V, H]` the LM head, same dtype and device as `hidden`. Any V.
        targets: `[...]` int64/int32 token ids in `[0, V)`, or -100 for positions to ignore.
        temperature: runtime float > 0 dividing the logits (sampling temperature).
        with_entropy: also compute the entropy of each position's distribution (else it is None: the torch path
            then skips two passes over each chunk).
        chunk_tokens: override the number of tokens per chunk (an int > 0).

    Returns:
        `(logp [...], entropy [...])` float32 (0 where the target is -100), like `token_logprobs_ref`; `entropy`
        is None without `with_entropy`. Both are differentiable w.r.t. `hidden` and `weight`; ignored positions get
        no gradient. Empty inputs (no tokens, or H = 0) work: empty outputs, or those of all-zero logits.
    """
    V, inv_temp = check_logprob_inputs(hidden, weight, targets, temperature)
    lead = targets.shape
    h2d = hidden.reshape(targets.numel(), hidden.shape[-1]).contiguous()  # not -1: H may be 0
    chunk = chunk_rows(h2d.shape[0], V, hidden.device, chunk_tokens)
    logp, ent = TokenLogprobsFunction.apply(
        h2d, weight.contiguous(), targets.reshape(-1).contiguous(), inv_temp, chunk, with_entropy
    )
    return logp.view(lead), (ent.view(lead) if with_entropy else None)


def token_logprobs_ref(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager reference: full logits, log_softmax, gather; returns `(logp [...], entropy [...])`.

    The logits come out of the GEMM in the inputs' dtype; the log-softmax runs in float32, or in float64 for float64
    inputs (a bf16/fp16 softmax would round the log-probs far more than `token_logprobs`' float32 log-sum-exp), and
    the results are in that dtype. Materialises `[N, V]`: use it for tests, as the benchmarks' eager baseline, and
    as the policy's `model.kernels = "reference"` path.
    """
    logits = (hidden @ weight.t()).to(torch.promote_types(hidden.dtype, torch.float32)) / temperature
    logprobs = torch.log_softmax(logits, dim=-1)
    valid = targets != IGNORE_INDEX
    logp = logprobs.gather(-1, targets.clamp(min=0).long().unsqueeze(-1)).squeeze(-1)
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    return torch.where(valid, logp, zero), torch.where(valid, entropy, zero)


__all__ = ["IGNORE_INDEX", "token_logprobs", "token_logprobs_ref"]
