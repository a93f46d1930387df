"""The chunk pieces `token_logprobs` and `linear_grpo_loss` share: one chunk's logits, its row passes, its backward.

For one token with logits `z = hidden @ W.T / temperature`, `p = softmax(z)`, `lse = logsumexp(z)`:
`logp = z_t - lse`, `H = lse - sum(p * z)`, `dlogp/dz = onehot(t) - p`, `dH/dz = -p * (z - lse + H)`.
The row passes (`row_stats`, `row_grad`) are Triton on GPU (or under the interpreter) and torch otherwise, chosen in
`fastslow.kernels._dispatch`; the GEMMs are cuBLAS (or the CPU BLAS). NaN behaviour: see `fastslow.kernels.logprobs`.
"""

from __future__ import annotations

import torch

from fastslow.kernels._checks import check_positive_int
from fastslow.kernels._dispatch import backend_for, logits_gemm, workspace_bytes
from fastslow.kernels._triton import cast_rtne, tl, triton

IGNORE_INDEX = -100
# BLOCK_V=2048 floats per step of a row's vocab loop, 8 warps: one row per program, a memory-bound streaming pass
# over the chunk's logits; not yet tuned on a GPU (bench/ measures the whole op against eager and Liger).
_BLOCK_V = 2048
_NUM_WARPS = 8


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


def row_stats(
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


def row_grad(
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


def chunk_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Raw logits `[n, V]` in float32 for a chunk of hidden states `[n, H]`; bf16/fp16 inputs by the GEMM
    `fastslow.kernels._dispatch.logits_gemm` chooses for their device."""
    if hidden.dtype == torch.float32:
        return hidden @ weight.t()
    how = logits_gemm(hidden.device, hidden.dtype)
    if how == "out_dtype":
        return torch.mm(hidden, weight.t(), out_dtype=torch.float32)
    if how == "upcast":
        return hidden.float() @ weight.float().t()
    return (hidden @ weight.t()).float()


def chunk_rows(n_tokens: int, vocab: int, device: torch.device, chunk_tokens: int | None = None) -> int:
    """Tokens per chunk: `chunk_tokens` (an int > 0) if given, else as many float32 logit rows as the workspace
    holds."""
    if chunk_tokens is not None:
        return check_positive_int("chunk_tokens", chunk_tokens)
    return max(1, min(n_tokens, workspace_bytes(device) // (4 * max(vocab, 1))))


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
    dz = row_grad(logits, targets, lse, ent, g_logp, g_ent, inv_temp, weight.dtype)
    if dh_out is not None:
        dh_out.copy_(dz @ weight)
    if dw_acc is not None:
        dw_acc.addmm_(dz.t(), hidden.to(weight.dtype))
