"""Token log-probs and entropy straight from hidden states, chunked so `[N, V]` logits never exist at once.

`logp = log_softmax(hidden @ weight.T / temperature)[target]` and the entropy of that distribution. Tokens go
through in chunks sized to a workspace budget (`kernels._dispatch.workspace_bytes`): for each chunk one GEMM
writes its `[n, V]` logits (float32), then one row kernel makes a single online pass over them (max, sum of
exponentials, sum of `p * z`, the target's logit). The backward recomputes a chunk's logits, turns them in one
pass into `dL/dlogits` (written in the weight's dtype) and hands that to two GEMMs, `dh = dz @ W` and
`dW += dz.T @ h`. GEMMs are cuBLAS (or the CPU BLAS); the row passes are Triton on GPU (or under the
interpreter) and torch otherwise, chosen in `kernels._dispatch`.

For one token with logits `z = hidden @ W.T / temperature`, `p = softmax(z)`, `lse = logsumexp(z)`:
`logp = z_t - lse`, `H = lse - sum(p * z)`, `dlogp/dz = onehot(t) - p`, `dH/dz = -p * (z - lse + H)`.

NaN in, NaN out, as in `token_logprobs_ref`: a NaN logit (from a NaN in `hidden[i]` or in a row of `weight`) makes
the log-prob and entropy of every token whose logits it is in NaN, and the gradients that flow through them; rows
are independent, so a NaN in `hidden[i]` leaves the other tokens' results and `d hidden` untouched (`d weight`
sums over all tokens and is NaN). A position whose target is -100 is selected to 0 (a where, not a product) and
stays 0, but the backward still multiplies its NaN softmax by a zero gradient, so its `d hidden` row is NaN, as
torch's log_softmax backward makes it.
"""

from __future__ import annotations

import torch

from kernels._checks import (
    ValueCheck,
    check_device,
    check_finite_number,
    check_float,
    check_positive_int,
    raise_on_values,
)
from kernels._dispatch import backend_for, workspace_bytes
from kernels._triton import cast_rtne, tl, triton

IGNORE_INDEX = -100
# BLOCK_V=2048 floats per step of a row's vocab loop, 8 warps: one row per program, a memory-bound streaming pass
# over the chunk's logits; not yet tuned on a GPU (bench/ measures the whole op against eager and Liger).
_BLOCK_V = 2048
_NUM_WARPS = 8
_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _row_stats_kernel(
    logits_ptr,  # [n, V] float32 raw logits (before the temperature)
    targets_ptr,  # [n] int
    logp_ptr,  # out [n] float32
    ent_ptr,  # out [n] float32
    lse_ptr,  # out [n] float32 (of the tempered logits)
    V,
    stride_row,
    inv_temp,
    IGNORE: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    target = tl.load(targets_ptr + row).to(tl.int64)
    m = tl.zeros([], dtype=tl.float32) - float("inf")  # running max
    s = tl.zeros([], dtype=tl.float32)  # sum of exp(z - m)
    t = tl.zeros([], dtype=tl.float32)  # sum of exp(z - m) * z
    z_target = tl.zeros([], dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        inb = offs < V
        z = tl.load(base + offs, mask=inb, other=float("-inf")).to(tl.float32) * inv_temp
        # tl.max skips NaN (compiled and interpreted), but a NaN z still reaches s and t through exp(z - m_new),
        # and `s * scale` keeps it through the later blocks: a NaN logit gives NaN lse, logp and entropy.
        m_new = tl.maximum(m, tl.max(z, axis=0))
        scale = tl.exp(m - m_new)
        e = tl.exp(z - m_new)
        s = s * scale + tl.sum(e, axis=0)
        t = t * scale + tl.sum(e * tl.where(inb, z, 0.0), axis=0)  # padding: e = 0, z = -inf
        z_target += tl.sum(tl.where(offs == target, z, 0.0), axis=0)
        m = m_new
    lse = m + tl.log(s)
    valid = target != IGNORE
    tl.store(lse_ptr + row, lse)
    tl.store(logp_ptr + row, tl.where(valid, z_target - lse, 0.0))
    tl.store(ent_ptr + row, tl.where(valid, lse - t / s, 0.0))


@triton.jit
def _row_grad_kernel(
    logits_ptr,  # [n, V] float32 raw logits
    dz_ptr,  # out [n, V] dL/d(raw logits), in the weight's dtype
    targets_ptr,  # [n] int
    lse_ptr,  # [n] float32
    ent_ptr,  # [n] float32
    g_logp_ptr,  # [n] float32 upstream gradient of logp
    g_ent_ptr,  # [n] float32 upstream gradient of the entropy (unused without HAS_ENT)
    V,
    stride_row,
    stride_dz,
    inv_temp,
    HAS_ENT: tl.constexpr,
    IGNORE: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    target = tl.load(targets_ptr + row).to(tl.int64)
    valid = target != IGNORE
    lse = tl.load(lse_ptr + row)
    g_logp = tl.where(valid, tl.load(g_logp_ptr + row), 0.0)
    if HAS_ENT:
        g_ent = tl.where(valid, tl.load(g_ent_ptr + row), 0.0)
        shift = tl.load(ent_ptr + row) - lse  # z - lse + H = z + shift
    for v0 in range(0, V, BLOCK_V):
        offs = v0 + tl.arange(0, BLOCK_V)
        inb = offs < V
        z = tl.load(logits_ptr + row * stride_row + offs, mask=inb, other=0.0).to(tl.float32) * inv_temp
        p = tl.exp(z - lse)
        dz = tl.where(offs == target, g_logp, 0.0) - g_logp * p
        if HAS_ENT:
            dz -= g_ent * p * (z + shift)
        # chain rule through z = logits * inv_temp
        tl.store(dz_ptr + row * stride_dz + offs, cast_rtne(dz * inv_temp, dz_ptr.dtype.element_ty), mask=inb)


def _row_stats(
    logits: torch.Tensor, targets: torch.Tensor, inv_temp: float, with_entropy: bool = True
) -> tuple[torch.Tensor, ...]:
    """(logp, entropy, lse), each `[n]` float32, from a chunk's raw logits `[n, V]`.

    `with_entropy=False` lets the torch path skip the entropy (two more passes over the chunk); it is then zeros.
    The Triton kernel computes it in the same pass either way.
    """
    n, V = logits.shape
    if backend_for(logits.device) == "triton":
        logp, ent, lse = (torch.empty(n, dtype=torch.float32, device=logits.device) for _ in range(3))
        if n:
            _row_stats_kernel[(n,)](
                logits, targets, logp, ent, lse, V, logits.stride(0), inv_temp,
                IGNORE=IGNORE_INDEX, BLOCK_V=_BLOCK_V, num_warps=_NUM_WARPS,
            )  # fmt: skip
        return logp, ent, lse
    # torch's fused log_softmax (one vectorised pass) then one pass for the entropy: at most two chunk-sized
    # temporaries besides the logits (one more when temperature != 1).
    z = logits if inv_temp == 1.0 else logits * inv_temp
    log_p = torch.log_softmax(z, dim=-1)
    lse = z[:, 0] - log_p[:, 0]
    valid = targets != IGNORE_INDEX
    logp = torch.where(valid, log_p.gather(1, targets.clamp(min=0).long()[:, None]).squeeze(1), 0.0)
    if not with_entropy:
        return logp, torch.zeros_like(logp), lse
    ent = torch.where(valid, -log_p.exp().mul_(log_p).sum(-1), 0.0)
    return logp, ent, lse


def _row_grad(
    logits: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    ent: torch.Tensor,
    g_logp: torch.Tensor,
    g_ent: torch.Tensor | None,
    inv_temp: float,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """dL/d(raw logits) `[n, V]` in `out_dtype`, from the chunk's logits and the upstream gradients `[n]`."""
    n, V = logits.shape
    if backend_for(logits.device) == "triton":
        dz = torch.empty(n, V, dtype=out_dtype, device=logits.device)
        if n:
            _row_grad_kernel[(n,)](
                logits, dz, targets, lse, ent, g_logp, g_ent if g_ent is not None else g_logp, V,
                logits.stride(0), dz.stride(0), inv_temp,
                HAS_ENT=g_ent is not None, IGNORE=IGNORE_INDEX, BLOCK_V=_BLOCK_V, num_warps=_NUM_WARPS,
            )  # fmt: skip
        return dz
    # torch's fused softmax, then in-place updates: one or two chunk-sized temporaries besides the logits.
    z = logits if inv_temp == 1.0 else logits * inv_temp
    p = torch.softmax(z, dim=-1)
    valid = targets != IGNORE_INDEX
    g_logp = torch.where(valid, g_logp.float(), 0.0)
    if g_ent is not None:
        g_ent = torch.where(valid, g_ent.float(), 0.0)
        ent_term = (z - (lse - ent)[:, None]).mul_(p).mul_(g_ent[:, None])  # g_H * p * (z - lse + H)
    dz = p.mul_(-g_logp[:, None])
    dz.scatter_add_(1, targets.clamp(min=0).long()[:, None], g_logp[:, None])
    if g_ent is not None:
        dz.sub_(ent_term)
    return (dz if inv_temp == 1.0 else dz.mul_(inv_temp)).to(out_dtype)


_FP32_OUT_MM: dict[str, bool] = {}


def chunk_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Raw logits `[n, V]` in float32 for a chunk of hidden states `[n, H]`.

    bf16/fp16 inputs use the BLAS's float32-output GEMM (`mm(..., out_dtype=float32)`, CUDA in recent torch):
    float32 accumulation and no rounding of the logits. Without it: on the CPU (whose runs are float32 anyway) the
    operands are upcast for this GEMM; on a GPU the logits come out in the input dtype, as eager code has them.
    """
    if hidden.dtype == torch.float32:
        return hidden @ weight.t()
    key = hidden.device.type
    if _FP32_OUT_MM.get(key, True):
        try:
            out = torch.mm(hidden, weight.t(), out_dtype=torch.float32)
            _FP32_OUT_MM[key] = True
            return out
        except (TypeError, RuntimeError):  # RuntimeError covers "no kernel for this backend"
            _FP32_OUT_MM[key] = False
    if key == "cpu":
        return hidden.float() @ weight.float().t()
    return (hidden @ weight.t()).float()


def chunk_rows(n_tokens: int, vocab: int, device: torch.device, chunk_tokens: int | None = None) -> int:
    """Tokens per chunk: `chunk_tokens` (an int > 0) if given, else as many float32 logit rows as the workspace
    holds."""
    if chunk_tokens is not None:
        return check_positive_int("chunk_tokens", chunk_tokens)
    return max(1, min(n_tokens, workspace_bytes(device) // (4 * max(vocab, 1))))


def _forward(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, inv_temp: float, chunk: int, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    N = hidden.shape[0]
    logp, ent, lse = (torch.empty(N, dtype=torch.float32, device=hidden.device) for _ in range(3))
    for n0 in range(0, N, chunk):
        n1 = min(n0 + chunk, N)
        logits = chunk_logits(hidden[n0:n1], weight)
        logp[n0:n1], ent[n0:n1], lse[n0:n1] = _row_stats(logits, targets[n0:n1], inv_temp, with_entropy)
    return logp, ent, lse


def backward_chunk(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    logits: torch.Tensor,
    targets: torch.Tensor,
    lse: torch.Tensor,
    ent: torch.Tensor,
    g_logp: torch.Tensor,
    g_ent: torch.Tensor | None,
    inv_temp: float,
    dh_out: torch.Tensor | None,
    dw_acc: torch.Tensor | None,
) -> None:
    """One chunk's share of the backward: `dh_out[:] = dz @ W` and `dw_acc += dz.T @ hidden`.

    `dw_acc` accumulates in the weight's dtype, as a bf16 trainer's gradient does (each chunk's GEMM sums in
    float32; chunks add in the weight's dtype).
    """
    dz = _row_grad(logits, targets, lse, ent, g_logp, g_ent, inv_temp, weight.dtype)
    if dh_out is not None:
        dh_out.copy_(dz @ weight)
    if dw_acc is not None:
        dw_acc.addmm_(dz.t(), hidden.to(weight.dtype))


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
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each target token (and the entropy) under `softmax(hidden @ weight.T / temperature)`.

    Never builds the `[N, V]` logits: memory beyond inputs, outputs and gradients is one chunk of
    `chunk_tokens x V` float32 logits (default: as many tokens as `kernels._dispatch.workspace_bytes` holds).

    Args:
        hidden: `[..., H]` float32/bf16/fp16 final hidden states (after the last norm).
        weight: `[V, H]` the LM head, same dtype and device as `hidden`. Any V.
        targets: `[...]` int64/int32 token ids in `[0, V)`, or -100 for positions to ignore.
        temperature: runtime float > 0 dividing the logits (sampling temperature).
        with_entropy: also return the entropy of each position's distribution.
        chunk_tokens: override the number of tokens per chunk (an int > 0).

    Returns:
        `logp [...]` float32 (0 where the target is -100), and with `with_entropy` also `entropy [...]` float32
        (0 there too). Both are differentiable w.r.t. `hidden` and `weight`; ignored positions get no gradient.
        Empty inputs (no tokens, or H = 0) work: empty outputs, or those of all-zero logits.
    """
    V, inv_temp = check_logprob_inputs(hidden, weight, targets, temperature)
    lead = targets.shape
    h2d = hidden.reshape(targets.numel(), hidden.shape[-1]).contiguous()  # not -1: H may be 0
    chunk = chunk_rows(h2d.shape[0], V, hidden.device, chunk_tokens)
    logp, ent = TokenLogprobsFunction.apply(
        h2d, weight.contiguous(), targets.reshape(-1).contiguous(), inv_temp, chunk, with_entropy
    )
    if with_entropy:
        return logp.view(lead), ent.view(lead)
    return logp.view(lead)


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
