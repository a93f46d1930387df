"""The GRPO loss formed straight from hidden states: LM head, log-probs, `grpo_loss` and backward in one pass.

For each chunk of tokens the forward computes the chunk's logits once, its log-probs and entropies (the row pass
of `fastslow.kernels._chunks`), the per-token GRPO gradient (the fused op of `fastslow.kernels.grpo`, unchanged),
and right away `dL/dlogits` and the two gradient GEMMs. So the whole forward+backward costs three GEMMs of
`2*N*H*V` FLOPs, and the backward is a scale of the saved `dL/dhidden` and `dL/dweight` by the incoming scalar gradient.

The loss is `grpo_loss(logp, ...) - entropy_coef * agg(entropy)`, where `agg` weights tokens exactly as the
GRPO loss's `loss_agg` does (so an entropy bonus follows the same normalisation); both knobs are `LossSettings`
fields.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from fastslow.kernels._checks import ValueCheck
from fastslow.kernels._chunks import backward_chunk, chunk_logits, chunk_rows, row_stats
from fastslow.kernels.grpo import grpo_loss, grpo_loss_ref
from fastslow.kernels.grpo_args import _N_STATS, GRPOTerms, _row_weights, grpo_metrics, prepare_grpo
from fastslow.kernels.logprobs import check_logprob_inputs, token_logprobs, token_logprobs_ref
from fastslow.kernels.loss_settings import LossSettings, settings_of


def _blocks(B: int, T: int, chunk: int) -> list[tuple[slice, slice]]:
    """Cover the `[B, T]` token grid with contiguous blocks of at most `chunk` tokens.

    Whole rows when a row fits in a chunk (`[r0:r1, :]`), else pieces of one row (`[r, t0:t1]`), so each block
    is one contiguous range of the flattened tokens and a valid argument of the row-structured GRPO op.
    """
    if T == 0 or B == 0:
        return []
    if chunk >= T:
        rows = chunk // T
        return [(slice(r, min(r + rows, B)), slice(0, T)) for r in range(0, B, rows)]
    return [(slice(r, r + 1), slice(t, min(t + chunk, T))) for r in range(B) for t in range(0, T, chunk)]


def _forward_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    terms: GRPOTerms,
    *,
    inv_temp: float,
    entropy_coef: float,
    chunk: int,
    need_hidden: bool,
    need_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (loss [], row stats [B, _N_STATS + 1] with the masked entropy sum last, d hidden, d weight)."""
    B, T = targets.shape
    H = hidden.shape[-1]  # spelled out in the views below, not -1: H may be 0
    h3 = hidden.view(B, T, H)
    dh = torch.empty_like(hidden) if need_hidden else hidden.new_empty(0)
    dh3 = dh.view(B, T, H) if need_hidden else None
    dw = torch.zeros_like(weight) if need_weight else weight.new_empty(0)
    stats = torch.zeros(B, _N_STATS + 1, dtype=torch.float32, device=hidden.device)
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for rows, cols in _blocks(B, T, chunk):
        n_rows, n_cols = targets[rows, cols].shape
        h_blk = h3[rows, cols].reshape(n_rows * n_cols, H)
        t_blk = targets[rows, cols].reshape(-1)
        logits = chunk_logits(h_blk, weight)
        logp, ent, lse = row_stats(logits, t_blk, inv_temp)
        blk_logp = logp.view(n_rows, n_cols)
        blk_loss, blk_stats, g_logp = torch.ops.fastslow.grpo_loss_fwd(blk_logp, *terms.block(rows, cols, blk_logp))
        m = terms.mask[rows, cols].float()
        w = terms.weights(rows, cols)  # [n_rows, 1] or, per token, [n_rows, n_cols]
        ent_sum = (ent.view(n_rows, n_cols) * m).sum(-1)
        loss = loss + blk_loss - entropy_coef * (ent.view(n_rows, n_cols) * m * w).sum()
        stats[rows, :_N_STATS] += blk_stats
        stats[rows, _N_STATS] += ent_sum
        if need_hidden or need_weight:
            g_ent = (-entropy_coef * m * w).reshape(-1) if entropy_coef != 0.0 else None
            backward_chunk(
                h_blk, weight, logits, t_blk, lse, ent, g_logp.reshape(-1), g_ent, inv_temp,
                dh3[rows, cols].reshape(n_rows * n_cols, H) if need_hidden else None, dw if need_weight else None,
            )  # fmt: skip
    return loss, stats, dh, dw


@torch.library.custom_op("fastslow::linear_grpo_fwd", mutates_args=())
def _linear_grpo_fwd(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None,
    beta: torch.Tensor | None,
    row_w: torch.Tensor,  # [B] or [B, T]
    counts: torch.Tensor,
    kl_coef: float,
    clip_low: float,
    clip_high: float,
    dual_clip: float,
    kl_estimator: str,
    inv_temp: float,
    entropy_coef: float,
    chunk: int,
    need_hidden: bool,
    need_weight: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss [], row stats [B, n_stats + 1], d hidden [N, H] or empty, d weight [V, H] or empty).

    A custom op's schema takes tensors and numbers only, so `GRPOTerms`' fields travel one by one, in its order.
    """
    terms = GRPOTerms(
        old_logp, advantages, mask, ref_logp, beta, row_w, counts, kl_coef, clip_low, clip_high, dual_clip,
        kl_estimator,
    )  # fmt: skip
    return _forward_backward(
        hidden, weight, targets, terms, inv_temp=inv_temp, entropy_coef=entropy_coef, chunk=chunk,
        need_hidden=need_hidden, need_weight=need_weight,
    )  # fmt: skip


@_linear_grpo_fwd.register_fake
def _(hidden, weight, targets, *args):
    B, (need_hidden, need_weight) = targets.shape[0], args[-2:]
    return (
        hidden.new_empty((), dtype=torch.float32),
        hidden.new_empty((B, _N_STATS + 1), dtype=torch.float32),
        torch.empty_like(hidden) if need_hidden else hidden.new_empty(0),
        torch.empty_like(weight) if need_weight else weight.new_empty(0),
    )


class LinearGRPOFunction(torch.autograd.Function):
    """Forward does all the work and keeps the two gradients; backward scales them.

    Its arguments are `_linear_grpo_fwd`'s without the two `need_*` flags (autograd says those): `hidden`, `weight`,
    then `args` (targets, the GRPO terms, inv_temp, entropy_coef, chunk), none of which gets a gradient.
    """

    @staticmethod
    def forward(ctx, hidden, weight, *args):
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        loss, stats, dh, dw = torch.ops.fastslow.linear_grpo_fwd(hidden, weight, *args, need_hidden, need_weight)
        ctx.save_for_backward(dh, dw)
        ctx.need = (need_hidden, need_weight)
        ctx.n_args = len(args)
        ctx.mark_non_differentiable(stats)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss, _grad_stats):
        dh, dw = ctx.saved_tensors
        need_hidden, need_weight = ctx.need
        grad_h = (dh * grad_loss).to(dh.dtype) if need_hidden else None
        grad_w = (dw * grad_loss).to(dw.dtype) if need_weight else None
        return grad_h, grad_w, *([None] * ctx.n_args)


def linear_grpo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
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
    temperature: float = 1.0,
    chunk_tokens: int | None = None,
    **knobs: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`grpo_loss(token_logprobs(hidden, weight, targets), ...)` minus an optional entropy bonus, fused.

    Args:
        hidden: `[B, T, H]` float32/bf16/fp16 final hidden states at the positions that predict `targets`.
        weight: `[V, H]` LM head, same dtype and device as `hidden`.
        targets: `[B, T]` int64/int32 sampled token ids (or -100 where `mask` is 0; a -100 where `mask` is 1 is a
            ValueError: that token would count in the loss with a log-prob of 0 and no gradient).
        old_logp, advantages, mask, ref_logp, kl_coef, num_tokens, norm_len, seq_ids: exactly as in
            `fastslow.kernels.grpo_loss` (`[B, T]` token grid; packed rows are `[1, N, H]` hidden with `seq_ids`
            saying where each sequence lies; `old_logp = None`: on-policy, each chunk's own log-probs are the old
            ones, so no separate old-log-prob pass is needed).
        settings, knobs: the `LossSettings`, or its fields one by one, as in `grpo_loss`; here `entropy_coef`
            weights an entropy bonus, subtracted from the loss with the same token weights.
        temperature: runtime float > 0 dividing the logits (the sampling temperature).
        chunk_tokens: override the tokens per chunk (an int > 0; default from the workspace budget).

    Returns:
        `(loss, metrics)`: float32 scalar differentiable w.r.t. `hidden` and `weight`; metrics as `grpo_loss`'s
        plus "entropy" (token mean over masked tokens). NaN and empty inputs behave as in `token_logprobs` and
        `grpo_loss` (a NaN anywhere gives a NaN loss; B, T or H = 0 work).

    All checks on tensor values (`targets`, `mask`, a tensor `kl_coef` or `num_tokens`) cost one device sync.
    """
    settings = settings_of(settings, knobs)
    value_checks: list[ValueCheck] = []
    V, inv_temp = check_logprob_inputs(hidden, weight, targets, temperature, value_checks=value_checks)
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, T, H], got shape {tuple(hidden.shape)}")
    terms = prepare_grpo(
        targets.shape, hidden.device, "targets", old_logp, advantages, mask, ref_logp=ref_logp, kl_coef=kl_coef,
        settings=settings, num_tokens=num_tokens, norm_len=norm_len, seq_ids=seq_ids, targets=targets,
        value_checks=value_checks,
    )  # fmt: skip
    B, T, H = hidden.shape
    chunk = chunk_rows(B * T, V, hidden.device, chunk_tokens)
    loss, stats = LinearGRPOFunction.apply(
        hidden.reshape(B * T, H).contiguous(), weight.contiguous(), targets.contiguous(),
        terms.old_logp, terms.advantages, terms.mask, terms.ref_logp, terms.beta, terms.row_w, terms.counts,
        *terms.scalars, inv_temp, settings.entropy_coef, chunk,
    )  # fmt: skip
    metrics = grpo_metrics(stats[:, :_N_STATS], terms.counts)
    metrics["entropy"] = stats[:, _N_STATS].sum() / terms.counts.sum().clamp(min=1.0)
    return loss, metrics


def linear_grpo_loss_ref(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    settings: LossSettings | None = None,
    temperature: float = 1.0,
    chunk_tokens: int | None = None,
    eager: bool = False,
    **grpo_kwargs: Any,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The unfused composition this op must equal: `token_logprobs` then `grpo_loss` (plus the entropy term).

    With `eager=True` every piece is plain torch instead: `token_logprobs_ref` (the full `[B, T, V]` logits, a
    float32 log-softmax) then `grpo_loss_ref`, autograd doing the backward (`chunk_tokens` is then unused). That is
    the path a policy with `model.kernels = "reference"` trains with. Same arguments and results either way
    (`grpo_kwargs`: `grpo_loss`'s other keywords, and without `settings` its knobs one by one).
    """
    names = {f.name for f in dataclasses.fields(LossSettings)}
    settings = settings_of(settings, {k: grpo_kwargs.pop(k) for k in list(grpo_kwargs) if k in names})
    grpo_kwargs["settings"] = dataclasses.replace(settings, entropy_coef=0.0)  # the entropy term comes below
    if eager:
        logp, ent = token_logprobs_ref(hidden, weight, targets, temperature=temperature)
        loss, metrics = grpo_loss_ref(logp, old_logp, advantages, mask, **grpo_kwargs)
    else:
        logp, ent = token_logprobs(
            hidden, weight, targets, temperature=temperature, with_entropy=True, chunk_tokens=chunk_tokens
        )
        loss, metrics = grpo_loss(logp, old_logp, advantages, mask, **grpo_kwargs)
    row_w, counts = _row_weights(
        mask, settings.loss_agg, grpo_kwargs.get("num_tokens"), grpo_kwargs.get("norm_len"), grpo_kwargs.get("seq_ids")
    )
    ent_rows = (ent * mask.float()).sum(-1)
    w = row_w[:, None] if row_w.dim() == 1 else row_w
    loss = loss - settings.entropy_coef * (ent * mask.float() * w.to(ent.dtype)).sum()
    metrics["entropy"] = (ent_rows.sum() / counts.sum().clamp(min=1.0)).detach()
    return loss, metrics
