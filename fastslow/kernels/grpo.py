"""Clipped GRPO policy loss with clip-higher, dual clip and a per-token KL (k3), fused forward and backward.

One kernel pass over the tokens computes, per token, the loss term `l = pg + beta * kl` and its derivative
w.r.t. `logp` already scaled by the aggregation weight, plus per-row partial sums for the loss and metrics.
The backward is then a single scale of that saved gradient by the incoming scalar gradient.

Every `loss_agg` mode weights token (b, t) by `mask[b, t] * w[b]` with one weight per row, so the weights are
computed from the mask's row sums before the kernel runs (with `seq_ids`, packed rows holding several sequences,
"sequence" below means a sequence id, and "seq-mean-token-mean" weights each token by its sequence's `w`):
- "token-mean":              w[b] = 1 / max(sum(mask), 1), or 1 / num_tokens when given (global denominator);
- "seq-mean-token-mean":     w[b] = 1 / (n_rows * sum_t mask[b]) over rows with any mask, 0 for empty rows;
- "seq-mean-token-sum-norm": w[b] = 1 / (B * norm_len), norm_len defaulting to T (Dr. GRPO). The 1 / B is
  Liger-Kernel's `dr_grpo`; verl's mode of the same name sums over sequences without it, so its loss (and gradient)
  is B times this one.

NaN in, NaN out, on every backend and in `grpo_loss_ref`: a NaN in `logp`, `old_logp`, `ref_logp` or `advantages`
makes that token's loss term and its gradient NaN, hence the loss and the token-mean metrics (the clip fractions
count comparisons, which are false for NaN, and stay finite). A masked-out token is multiplied by its 0 weight, as
torch does it, and `0 * NaN = NaN`: a NaN there poisons the loss as well, and its own gradient entry is NaN.
Empty `[B, 0]` or `[0, T]` inputs give a zero loss and an empty gradient.

The fixed knobs come in one `LossSettings` (`fastslow.kernels.loss_settings`); inside, the fused op takes them as
flat scalars (`GRPOTerms.scalars`), the KL estimator's name a constexpr of the kernel.
"""

from __future__ import annotations

from typing import Any

import torch

from fastslow.kernels._checks import check_float
from fastslow.kernels._dispatch import backend_for
from fastslow.kernels._triton import tl, triton
from fastslow.kernels.grpo_args import _N_STATS, grpo_metrics, prepare_grpo
from fastslow.kernels.kl import _kl_estimate, clamp_ref, kl_estimate_ref, kl_estimate_torch
from fastslow.kernels.loss_settings import LossSettings, settings_of

# BLOCK_T=1024, 4 warps: a tile of one row per program; memory-bound, so any tile >= 512 saturates in theory.
# Not yet tuned on a GPU (bench/ measures it).
_BLOCK_T = 1024
_NUM_WARPS = 4


@triton.jit(do_not_specialize=["T"])
def _grpo_loss_fwd_kernel(
    logp_ptr,  # [B, T]
    old_ptr,  # [B, T]
    adv_ptr,  # [B] or [B, T]
    mask_ptr,  # [B, T] any numeric dtype (bool passed as uint8)
    ref_ptr,  # [B, T] (unused without HAS_REF)
    beta_ptr,  # [B] or [B, T] float32 (unused unless BETA_PER_ROW)
    row_w_ptr,  # [B] float32 aggregation weight per row, or [B, T] per token (W_PER_TOKEN)
    grad_ptr,  # out [B, T] float32 d loss / d logp
    stats_ptr,  # out [B, n_tiles, _N_STATS] float32 partial sums
    T,
    n_tiles,
    kl_coef,
    clip_low,
    clip_high,
    dual_clip,
    ADV_PER_TOKEN: tl.constexpr,
    HAS_REF: tl.constexpr,
    BETA_PER_ROW: tl.constexpr,
    BETA_PER_TOKEN: tl.constexpr,
    W_PER_TOKEN: tl.constexpr,
    DUAL_CLIP: tl.constexpr,
    KL_ESTIMATOR: tl.constexpr,
    N_STATS: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    offs = tile * BLOCK_T + tl.arange(0, BLOCK_T)
    inb = offs < T
    idx = row * T + offs

    logp = tl.load(logp_ptr + idx, mask=inb, other=0.0).to(tl.float32)
    old = tl.load(old_ptr + idx, mask=inb, other=0.0).to(tl.float32)
    m = tl.load(mask_ptr + idx, mask=inb, other=0).to(tl.float32)
    if ADV_PER_TOKEN:
        adv = tl.load(adv_ptr + idx, mask=inb, other=0.0).to(tl.float32)
    else:
        # broadcast to the tile so the comparisons below are tile-shaped, as in the per-token case
        adv = tl.load(adv_ptr + row).to(tl.float32) + tl.zeros([BLOCK_T], dtype=tl.float32)

    # ratio with torch.clamp's gradient rule: the derivative passes where the clamp is inactive (ends included).
    # NaN propagates: the clamps and the max keep it (tl.minimum/maximum default to dropping it), and the
    # derivative is selected to 0 only where a clamp or the clip is known to be active, so a NaN reaches it too.
    log_ratio = logp - old
    ratio = tl.exp(tl.clamp(log_ratio, -20.0, 20.0, propagate_nan=tl.PropagateNan.ALL))
    saturated = (log_ratio < -20.0) | (log_ratio > 20.0)
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * tl.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high, propagate_nan=tl.PropagateNan.ALL)
    # max(): where the two are equal the ratio is inside the clip range and both branches have this derivative.
    pg = tl.maximum(pg_unclipped, pg_clipped, propagate_nan=tl.PropagateNan.ALL)
    dpg = tl.where(saturated | (pg_unclipped < pg_clipped), 0.0, -adv * ratio)
    clipped = (pg_clipped > pg_unclipped).to(tl.float32)
    dual = tl.zeros_like(pg)
    if DUAL_CLIP:
        lower = -adv * dual_clip
        dual_on = (adv < 0.0) & (pg > lower)
        pg = tl.where(dual_on, lower, pg)
        dpg = tl.where(dual_on, 0.0, dpg)
        dual = dual_on.to(tl.float32)

    loss = pg
    dloss = dpg
    kl = tl.zeros_like(pg)
    if HAS_REF:
        ref = tl.load(ref_ptr + idx, mask=inb, other=0.0).to(tl.float32)
        kl, dkl = _kl_estimate(logp, ref, KL_ESTIMATOR)
        if BETA_PER_TOKEN:
            beta = tl.load(beta_ptr + idx, mask=inb, other=0.0)
        elif BETA_PER_ROW:
            beta = tl.load(beta_ptr + row)
        else:
            beta = kl_coef
        loss = loss + beta * kl
        dloss = dloss + beta * dkl

    if W_PER_TOKEN:
        w = tl.load(row_w_ptr + idx, mask=inb, other=0.0)
    else:
        w = tl.load(row_w_ptr + row)
    tl.store(grad_ptr + idx, dloss * m * w, mask=inb)

    out = stats_ptr + (row * n_tiles + tile) * N_STATS
    if W_PER_TOKEN:  # the loss's sum is weighted here, token by token (else by the row's weight on the host)
        tl.store(out + 0, tl.sum(loss * m * w, axis=0))
    else:
        tl.store(out + 0, tl.sum(loss * m, axis=0))
    tl.store(out + 1, tl.sum(pg * m, axis=0))
    tl.store(out + 2, tl.sum(kl * m, axis=0))
    tl.store(out + 3, tl.sum(ratio * m, axis=0))
    tl.store(out + 4, tl.sum(clipped * m, axis=0))
    tl.store(out + 5, tl.sum(dual * m, axis=0))


def _launch(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None,
    beta: torch.Tensor | None,
    row_w: torch.Tensor,
    kl_coef: float,
    clip_low: float,
    clip_high: float,
    dual_clip: float,
    kl_estimator: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    B, T = logp.shape
    n_tiles = max(triton.cdiv(T, _BLOCK_T), 1)
    grad = torch.empty(B, T, dtype=torch.float32, device=logp.device)
    stats = torch.empty(B, n_tiles, _N_STATS, dtype=torch.float32, device=logp.device)
    if B * T:
        _grpo_loss_fwd_kernel[(B, n_tiles)](
            logp, old_logp, adv, mask.view(torch.uint8) if mask.dtype == torch.bool else mask,
            ref_logp if ref_logp is not None else logp,
            beta if beta is not None else row_w,
            row_w, grad, stats, T, n_tiles, kl_coef, clip_low, clip_high, dual_clip,
            ADV_PER_TOKEN=adv.dim() == 2, HAS_REF=ref_logp is not None, BETA_PER_ROW=beta is not None,
            BETA_PER_TOKEN=beta is not None and beta.dim() == 2, W_PER_TOKEN=row_w.dim() == 2,
            DUAL_CLIP=dual_clip > 0.0, KL_ESTIMATOR=kl_estimator, N_STATS=_N_STATS, BLOCK_T=_BLOCK_T,
            num_warps=_NUM_WARPS,
        )  # fmt: skip
    else:
        stats.zero_()
    return grad, stats.sum(1)


def _torch_terms(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None,
    beta: torch.Tensor | None,
    row_w: torch.Tensor,
    kl_coef: float,
    clip_low: float,
    clip_high: float,
    dual_clip: float,
    kl_estimator: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The CPU path: the kernel's float32 math in torch, returning (grad [B, T], row stats [B, _N_STATS]).

    As in the kernel, the loss column of the stats is weighted when `row_w` is per token `[B, T]`.
    """
    logp, m = logp.float(), mask.float()
    adv = adv.float() if adv.dim() == 2 else adv.float()[:, None]
    log_ratio = logp - old_logp.float()
    ratio = log_ratio.clamp(-20.0, 20.0).exp()  # torch.clamp and torch.maximum keep NaN
    saturated = (log_ratio < -20.0) | (log_ratio > 20.0)
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    pg = torch.maximum(pg_unclipped, pg_clipped)
    dpg = torch.where(saturated | (pg_unclipped < pg_clipped), 0.0, -adv * ratio)  # as the kernel: NaN passes
    clipped = (pg_clipped > pg_unclipped).float()
    dual = torch.zeros_like(pg)
    if dual_clip > 0.0:
        lower = -adv * dual_clip
        dual_on = (adv < 0.0) & (pg > lower)
        pg = torch.where(dual_on, lower, pg)
        dpg = torch.where(dual_on, 0.0, dpg)
        dual = dual_on.float()
    loss, dloss, kl = pg, dpg, torch.zeros_like(pg)
    if ref_logp is not None:
        kl, dkl = kl_estimate_torch(logp, ref_logp, kl_estimator)
        b = kl_coef if beta is None else (beta if beta.dim() == 2 else beta[:, None])
        loss, dloss = loss + b * kl, dloss + b * dkl
    w = row_w if row_w.dim() == 2 else row_w[:, None]
    grad = dloss * m * w
    stats = torch.stack([(x * m).sum(-1) for x in (loss, pg, kl, ratio, clipped, dual)], dim=-1)
    if row_w.dim() == 2:
        stats[:, 0] = (loss * m * w).sum(-1)
    return grad, stats


@torch.library.custom_op("fastslow::grpo_loss_fwd", mutates_args=())
def _grpo_loss_fwd(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None,
    beta: torch.Tensor | None,
    row_w: torch.Tensor,
    kl_coef: float,
    clip_low: float,
    clip_high: float,
    dual_clip: float,
    kl_estimator: str = "k3",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (loss [], row stats [B, _N_STATS], d loss / d logp [B, T] float32).

    The numbers after `row_w` are `GRPOTerms.scalars`. The gradient stays float32 until the backward has scaled it,
    so bf16 logp sees one rounding, not two.
    """
    args = (logp, old_logp, advantages, mask, ref_logp, beta, row_w, kl_coef, clip_low, clip_high, dual_clip,
            kl_estimator)  # fmt: skip
    if backend_for(logp.device) == "triton":
        grad, stats = _launch(*args)
    else:
        grad, stats = _torch_terms(*args)
    loss = stats[:, 0].sum() if row_w.dim() == 2 else (stats[:, 0] * row_w).sum()
    return loss, stats, grad


@_grpo_loss_fwd.register_fake
def _(logp, *_args, **_kwargs):
    B = logp.shape[0]
    return (
        logp.new_empty((), dtype=torch.float32),
        logp.new_empty((B, _N_STATS), dtype=torch.float32),
        torch.empty_like(logp, dtype=torch.float32),
    )


class GRPOLossFunction(torch.autograd.Function):
    """Forward runs the fused kernel and keeps its gradient; backward scales it by the incoming gradient."""

    @staticmethod
    def forward(ctx, logp, *args):
        """`args`: `_grpo_loss_fwd`'s after `logp` (`GRPOTerms.block`)."""
        loss, stats, grad = torch.ops.fastslow.grpo_loss_fwd(logp, *args)
        ctx.save_for_backward(grad)
        ctx.logp_dtype = logp.dtype
        ctx.n_args = len(args)
        ctx.mark_non_differentiable(stats)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_stats: torch.Tensor | None):
        (grad,) = ctx.saved_tensors
        return (grad * grad_loss).to(ctx.logp_dtype), *([None] * ctx.n_args)


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float | torch.Tensor = 0.0,
    settings: LossSettings | None = None,
    num_tokens: float | torch.Tensor | None = None,
    norm_len: float | None = None,
    seq_ids: torch.Tensor | None = None,
    **knobs: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped GRPO/PPO policy loss plus a per-token KL estimate (k3), aggregated over masked tokens.

    Per token, with the fields of `settings`: `ratio = exp(clamp(logp - old_logp, -20, 20))`,
    `pg = max(-A * ratio, -A * clamp(ratio, 1 - clip_low, 1 + clip_high))`, and with `dual_clip = c` (c > 1)
    `pg = min(pg, -A * c)` where `A < 0`; `l = pg + beta * kl(logp, ref_logp)`, `kl` the `kl_estimator`
    ("k3": `low_var_kl`); `loss_agg` makes the loss of the `l`s.

    Args:
        logp: `[B, T]` float log-probs of the sampled tokens under the current policy (gets the gradient).
        old_logp: `[B, T]` log-probs under the policy that sampled (no gradient); None when the batch is trained
            on-policy (one optimizer step from the weights that sampled it): the old log-probs are then `logp`'s own
            values, so the ratio is 1 with the gradient of `exp(logp - logp.detach())`, and the separate old-log-prob
            pass can be skipped.
        advantages: `[B]` (one per sequence) or `[B, T]` float advantages.
        mask: `[B, T]` bool or numeric; 1 for response tokens that count, 0 for padding and prompt (any other
            value is a ValueError).
        ref_logp: `[B, T]` reference-model log-probs; required when `kl_coef` is non-zero.
        kl_coef: the KL weight beta >= 0: a float, or a float tensor `[B]` with each sequence's (group's)
            coefficient, or `[B, T]` with each token's (packed rows).
        settings: the fixed knobs, a `LossSettings` (clip_low, clip_high, dual_clip, loss_agg, kl_estimator; its
            entropy_coef must be 0: no entropies here, see `linear_grpo_loss`). None: `LossSettings(**knobs)`.
        num_tokens: for "token-mean", a global token count > 0 replacing `sum(mask)` (shared across
            micro-batches and ranks); a number or a one-element tensor.
        norm_len: for "seq-mean-token-sum-norm", the length normaliser (default T).
        seq_ids: `[B, T]` integer, for packed rows (several sequences per row): the id of each token's sequence,
            in `[0, B*T)`, -1 for tokens of no sequence (padding; their mask must be 0). The per-sequence modes
            then aggregate per id: "seq-mean-token-mean" over ids with a masked token, Dr. GRPO's `1/B` with B the
            number of distinct ids. None: each row is one sequence.
        knobs: `LossSettings`' fields one by one (`clip_high=0.28, loss_agg="seq-mean-token-mean"`), as this
            function took them before `settings`; not together with `settings`.

    The checks on tensor values (`mask`, a tensor `kl_coef` or `num_tokens`) cost one device sync together.

    Returns:
        `(loss, metrics)`: `loss` is a float32 scalar differentiable w.r.t. `logp`; `metrics` holds detached
        float32 scalars, token means over masked tokens: "pg_loss", "kl", "ratio", "clip_frac",
        "dual_clip_frac", and "tokens" (the masked-token count).
    """
    settings = _without_entropy(settings_of(settings, knobs))
    check_float("logp", logp)
    if logp.dim() != 2:
        raise ValueError(f"logp must be [B, T], got shape {tuple(logp.shape)}")
    terms = prepare_grpo(
        logp.shape, logp.device, "logp", old_logp, advantages, mask, ref_logp=ref_logp, kl_coef=kl_coef,
        settings=settings, num_tokens=num_tokens, norm_len=norm_len, seq_ids=seq_ids,
    )  # fmt: skip
    loss, stats = GRPOLossFunction.apply(logp.contiguous(), *terms.block(slice(None), logp=logp))
    return loss, grpo_metrics(stats, terms.counts)


def _without_entropy(settings: LossSettings) -> LossSettings:
    """`settings`, whose entropy bonus must be off: `grpo_loss` sees log-probs, not the entropies it would need."""
    if settings.entropy_coef != 0.0:
        raise ValueError(
            f"grpo_loss has no entropy term, but settings.entropy_coef = {settings.entropy_coef}: use "
            "linear_grpo_loss, which computes the entropies, or entropy_coef = 0"
        )
    return settings


def grpo_loss_ref(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float | torch.Tensor = 0.0,
    settings: LossSettings | None = None,
    num_tokens: float | torch.Tensor | None = None,
    norm_len: float | None = None,
    seq_ids: torch.Tensor | None = None,
    **knobs: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Plain-torch GRPO loss written straight from the formulas (autograd does the backward).

    Same arguments and results as `grpo_loss`; computes in the inputs' dtype (use float64 for a reference).
    """
    s = _without_entropy(settings_of(settings, knobs))
    clip_low, clip_high, dual_clip, loss_agg = s.clip_low, s.clip_high, s.dual_clip, s.loss_agg
    if old_logp is None:  # on-policy: the ratio is exp(logp - logp.detach()), 1 with logp's gradient
        old_logp = logp.detach()
    m = mask.to(logp.dtype)
    adv = advantages if advantages.dim() == 2 else advantages[:, None]
    ratio = clamp_ref(logp - old_logp, -20.0, 20.0).exp()
    pg_unclipped = -adv * ratio
    pg_clipped = -adv * clamp_ref(ratio, 1.0 - clip_low, 1.0 + clip_high)
    pg = torch.maximum(pg_unclipped, pg_clipped)
    dual_on = torch.zeros_like(pg, dtype=torch.bool)
    if dual_clip is not None:
        lower = -adv * dual_clip
        dual_on = (adv < 0) & (pg > lower)
        pg = torch.where(adv < 0, torch.minimum(pg, lower), pg)
    kl = torch.zeros_like(pg) if ref_logp is None else kl_estimate_ref(logp, ref_logp, s.kl_estimator)
    beta = kl_coef[:, None] if isinstance(kl_coef, torch.Tensor) and kl_coef.dim() == 1 else kl_coef
    per_token = pg + beta * kl

    # Masked-out tokens are multiplied by 0, never selected away, so a NaN anywhere gives a NaN loss (0 * NaN = NaN)
    # in every mode, empty rows included.
    counts = m.sum(-1)
    row_sums = (per_token * m).sum(-1)
    if seq_ids is not None and loss_agg != "token-mean":  # one "row" per sequence id, wherever its tokens are
        ids = seq_ids.reshape(-1).long()
        keep = ids >= 0
        uniq, inv = torch.unique(ids[keep], return_inverse=True)
        seq_sum = lambda x: x.new_zeros(len(uniq)).index_add(0, inv, x.reshape(-1)[keep])
        counts_s, sums_s = seq_sum(m), seq_sum(per_token * m)
        loss = (sums_s / counts_s.clamp(min=1.0) * (counts_s > 0)).sum() / (counts_s > 0).sum().clamp(min=1)
        if loss_agg != "seq-mean-token-mean":
            T = max(logp.shape[1], 1) if norm_len is None else norm_len
            loss = (sums_s / T).sum() / max(len(uniq), 1)
    elif loss_agg == "token-mean":
        denom = counts.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=logp.dtype)
        loss = row_sums.sum() / denom.clamp(min=1.0)
    elif loss_agg == "seq-mean-token-mean":
        has = (counts > 0).to(logp.dtype)
        loss = (row_sums / counts.clamp(min=1.0) * has).sum() / has.sum().clamp(min=1.0)
    else:
        T = max(logp.shape[1], 1) if norm_len is None else norm_len
        loss = (row_sums / T).sum() / max(logp.shape[0], 1)

    tokens = counts.sum()
    mean = lambda x: ((x.to(logp.dtype) * m).sum() / tokens.clamp(min=1.0)).detach()
    metrics = {
        "pg_loss": mean(pg),
        "kl": mean(kl),
        "ratio": mean(ratio),
        "clip_frac": mean(pg_clipped > pg_unclipped),
        "dual_clip_frac": mean(dual_on),
        "tokens": tokens.detach(),
    }
    return loss, metrics
