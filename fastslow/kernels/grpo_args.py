"""The GRPO loss's arguments: checked, laid out for the fused op, and its metrics (shared by `grpo_loss` and
`linear_grpo_loss`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fastslow.kernels._checks import (
    ValueCheck,
    check_device,
    check_finite_number,
    check_float,
    check_shape,
    raise_on_values,
)
from fastslow.kernels.logprobs import IGNORE_INDEX
from fastslow.kernels.loss_settings import LossSettings

# Per-row partial sums the fused op returns, in this order (all over masked tokens, mask-weighted).
_STATS = ("loss", "pg_loss", "kl", "ratio", "clip_frac", "dual_clip_frac")
_N_STATS = len(_STATS)


def _row_weights(
    mask: torch.Tensor,
    loss_agg: str,
    num_tokens: float | torch.Tensor | None,
    norm_len: float | None,
    seq_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The aggregation weight (float32) and the row token counts `[B]`.

    The weight is one per row `[B]`, except for "seq-mean-token-mean" with `seq_ids`, where it is one per token
    `[B, T]`: `1 / (n_seqs * tokens of the token's sequence)`, however the sequences are laid out in rows.
    """
    B, T = mask.shape
    counts = mask.sum(-1, dtype=torch.float32)
    if loss_agg == "token-mean":
        denom = counts.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=torch.float32)
        w = (1.0 / denom.to(mask.device).clamp(min=1.0)).expand(B)
    elif loss_agg == "seq-mean-token-mean" and seq_ids is not None:
        seq_counts, idx = _per_sequence(seq_ids, mask.float())
        n_seqs = (seq_counts[:-1] > 0).sum().clamp(min=1).float()
        w = (1.0 / (seq_counts[idx].clamp(min=1.0) * n_seqs)).view(B, T)
    elif loss_agg == "seq-mean-token-mean":
        has_tokens = counts > 0
        n_rows = has_tokens.sum().clamp(min=1).float()
        w = torch.where(has_tokens, 1.0 / (counts.clamp(min=1.0) * n_rows), 0.0)
    else:
        # norm_len defaults to T; with T = 0 there are no tokens, and 1 keeps the weight finite (loss 0, not 0/0).
        norm = max(T, 1) if norm_len is None else norm_len
        if seq_ids is None:
            n_seqs = torch.tensor(float(max(B, 1)), device=mask.device)
        else:  # every sequence counts, an empty response too: it has prompt tokens with its id
            present, _ = _per_sequence(seq_ids, torch.ones_like(mask, dtype=torch.float32))
            n_seqs = (present[:-1] > 0).sum().clamp(min=1).float()
        w = (1.0 / (n_seqs * norm)).expand(B)
    return w.contiguous(), counts


def _per_sequence(seq_ids: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of `values [B, T]` per sequence id: `[B*T + 1]` (the last slot collects id -1), and each token's slot.

    No device sync: ids are < B*T (checked), so B*T + 1 slots hold every sequence and the "no sequence" bucket.
    """
    n = seq_ids.numel()
    idx = seq_ids.reshape(-1).long()
    idx = torch.where(idx >= 0, idx, n)
    sums = torch.zeros(n + 1, dtype=torch.float32, device=values.device).scatter_add_(0, idx, values.reshape(-1))
    return sums, idx


def _validate(
    shape: torch.Size,
    device: torch.device,
    like: str,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None,
    kl_coef: float | torch.Tensor,
    loss_agg: str,
    num_tokens: float | torch.Tensor | None,
    targets: torch.Tensor | None,
    seq_ids: torch.Tensor | None = None,
) -> list[ValueCheck]:
    """Check types, shapes and devices now; return the checks on values, for one device sync with the caller's."""
    checks: list[ValueCheck] = []
    for name, t in (("old_logp", old_logp), ("ref_logp", ref_logp)):
        if t is not None:
            check_float(name, t)
            check_shape(name, t, shape, like=like)
            check_device(name, t, device, like=like)
    check_float("advantages", advantages)
    if tuple(advantages.shape) not in (tuple(shape[:1]), tuple(shape)):
        raise ValueError(f"advantages must be [B] or [B, T] with [B, T] = {list(shape)}, got {list(advantages.shape)}")
    check_device("advantages", advantages, device, like=like)
    if not isinstance(mask, torch.Tensor) or mask.is_complex():
        raise ValueError("mask must be a real or bool torch.Tensor of shape [B, T]")
    check_shape("mask", mask, shape, like=like)
    check_device("mask", mask, device, like=like)
    if mask.dtype != torch.bool:
        # A weight other than 0/1 (a -1 flips the loss's sign, a NaN poisons it) is a bug upstream, not a feature.
        off = lambda: (mask != 0) & (mask != 1)
        checks.append((off().any(), lambda: f"mask must hold only 0 and 1, found {mask[off()][:5].tolist()}"))
    if targets is not None:
        # A counted token without a target would add a constant to the loss (logp = 0) and get no gradient.
        ignored = lambda: (mask != 0) & (targets == IGNORE_INDEX)
        message = lambda: (
            f"targets is {IGNORE_INDEX} (ignored) at {int(ignored().sum())} token(s) where mask is 1: "
            "a counted token needs a real target (or mask 0)"
        )
        checks.append((ignored().any(), message))
    if isinstance(kl_coef, torch.Tensor):
        check_float("kl_coef", kl_coef)
        if tuple(kl_coef.shape) not in (tuple(shape[:1]), tuple(shape)):
            raise ValueError(
                f"kl_coef as a tensor must be [B] or [B, T] with [B, T] = {list(shape)}, got {list(kl_coef.shape)}"
            )
        check_device("kl_coef", kl_coef, device, like=like)
        bad = lambda: ~(torch.isfinite(kl_coef) & (kl_coef >= 0))
        checks.append((bad().any(), lambda: f"kl_coef must be finite and >= 0, found {kl_coef[bad()][:5].tolist()}"))
    if seq_ids is not None:
        checks.extend(_check_seq_ids(seq_ids, mask, shape, device, like))
    if num_tokens is not None and loss_agg != "token-mean":
        raise ValueError(f"num_tokens only applies to loss_agg='token-mean', got loss_agg={loss_agg!r}")
    if isinstance(num_tokens, torch.Tensor):
        if num_tokens.numel() != 1 or num_tokens.is_complex() or num_tokens.dtype == torch.bool:
            raise ValueError(f"num_tokens must be a number or a one-element real tensor, got {num_tokens!r}")
        n = num_tokens.reshape(())
        checks.append((~(torch.isfinite(n) & (n > 0)), lambda: f"num_tokens must be > 0, got {n.item()}"))
    elif num_tokens is not None and check_finite_number("num_tokens", num_tokens) <= 0:
        raise ValueError(f"num_tokens must be > 0, got {num_tokens}")
    return checks


def _check_seq_ids(
    seq_ids: torch.Tensor, mask: torch.Tensor, shape: torch.Size, device: torch.device, like: str
) -> list[ValueCheck]:
    """`seq_ids` is an integer `[B, T]` grid of ids in [-1, B*T); a counted token belongs to a sequence (id >= 0)."""
    if not isinstance(seq_ids, torch.Tensor) or seq_ids.dtype.is_floating_point or seq_ids.dtype == torch.bool:
        raise ValueError("seq_ids must be an integer torch.Tensor of shape [B, T]")
    if seq_ids.is_complex():
        raise ValueError("seq_ids must be an integer torch.Tensor of shape [B, T]")
    check_shape("seq_ids", seq_ids, shape, like=like)
    check_device("seq_ids", seq_ids, device, like=like)
    n = seq_ids.numel()
    out = lambda: (seq_ids < -1) | (seq_ids >= n)
    orphan = lambda: (mask != 0) & (seq_ids < 0)
    return [
        (out().any(), lambda: f"seq_ids must be in [-1, {n}) (B*T), found {seq_ids[out()][:5].tolist()}"),
        (orphan().any(), lambda: f"seq_ids is -1 (no sequence) at {int(orphan().sum())} token(s) where mask is 1"),
    ]


@dataclass(frozen=True)
class GRPOTerms:
    """The loss's inputs, checked and laid out for the fused op (shared by `grpo_loss` and `linear_grpo_loss`)."""

    old_logp: torch.Tensor  # [B, T] contiguous, detached; empty: on-policy (the old log-probs are the current ones)
    advantages: torch.Tensor  # [B] or [B, T]
    mask: torch.Tensor  # [B, T]
    ref_logp: torch.Tensor | None  # [B, T]
    beta: torch.Tensor | None  # [B] or [B, T] float32 KL coefficient, or None for the scalar `kl_coef`
    row_w: torch.Tensor  # [B] or [B, T] float32 aggregation weight (per row, or per token)
    counts: torch.Tensor  # [B] float32 masked tokens per row
    # `LossSettings` as the fused ops take it: flat scalars, in this order after `kl_coef`
    kl_coef: float
    clip_low: float
    clip_high: float
    dual_clip: float  # 0.0 when off
    kl_estimator: str

    @property
    def on_policy(self) -> bool:
        """No old log-probs were given: the ratio is 1 (`exp(logp - logp.detach())`), its gradient that of logp."""
        return self.old_logp.numel() == 0 and self.mask.numel() > 0

    def block(self, rows: slice, cols: slice = slice(None), logp: torch.Tensor | None = None) -> tuple:
        """The fused op's arguments after `logp` for the tokens `[rows, cols]` (whole rows, or part of one row);
        `logp` (this block's, detached) stands for the old log-probs when `on_policy`."""
        adv = self.advantages[rows] if self.advantages.dim() == 1 else self.advantages[rows, cols]
        ref = None if self.ref_logp is None else self.ref_logp[rows, cols].contiguous()
        old = logp.detach().contiguous() if self.on_policy and logp is not None else self.old_logp[rows, cols]
        return (
            old.contiguous(), adv.contiguous(), self.mask[rows, cols].contiguous(), ref,
            _part(self.beta, rows, cols), _part(self.row_w, rows, cols), *self.scalars,
        )  # fmt: skip

    @property
    def scalars(self) -> tuple[float, float, float, float, str]:
        """The fused ops' number arguments: `kl_coef`, then the `LossSettings` fields they use, flat."""
        return self.kl_coef, self.clip_low, self.clip_high, self.dual_clip, self.kl_estimator

    def weights(self, rows: slice, cols: slice = slice(None)) -> torch.Tensor:
        """The aggregation weights of the tokens `[rows, cols]`, broadcastable to them (`[n, 1]` or `[n, m]`)."""
        return self.row_w[rows, None] if self.row_w.dim() == 1 else self.row_w[rows, cols]


def _part(x: torch.Tensor | None, rows: slice, cols: slice) -> torch.Tensor | None:
    """The rows (a per-row `[B]` tensor) or tokens (a per-token `[B, T]` one) of a block, contiguous."""
    if x is None:
        return None
    return x[rows].contiguous() if x.dim() == 1 else x[rows, cols].contiguous()


def prepare_grpo(
    shape: torch.Size,
    device: torch.device,
    like: str,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logp: torch.Tensor | None,
    kl_coef: float | torch.Tensor,
    settings: LossSettings,
    num_tokens: float | torch.Tensor | None,
    norm_len: float | None,
    seq_ids: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    value_checks: Sequence[ValueCheck] = (),
) -> GRPOTerms:
    """Check every GRPO argument against the `[B, T]` token grid (`shape`, on `device`, named `like`); `settings`
    checked itself when it was made.

    `seq_ids` (`[B, T]` integer, or None: each row is one sequence) says which sequence each token belongs to, for
    packed rows; `targets` (`linear_grpo_loss`'s token ids, already checked) must not be ignored where `mask` counts
    a token.
    The checks on tensor values (`mask` in {0, 1}, those `targets`, a tensor `kl_coef` >= 0, a tensor `num_tokens`
    > 0) run with the caller's `value_checks` in one device sync.
    """
    loss_agg = settings.loss_agg
    checks = _validate(
        shape, device, like, old_logp, advantages, mask, ref_logp, kl_coef, loss_agg, num_tokens, targets, seq_ids
    )
    beta = None
    coef = 0.0
    if isinstance(kl_coef, torch.Tensor):
        beta = kl_coef.detach().float().contiguous()
    else:
        coef = check_finite_number("kl_coef", kl_coef)
        if coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {coef}")
    if ref_logp is None and (beta is not None or coef != 0.0):
        raise ValueError("ref_logp is required when kl_coef is non-zero")
    if norm_len is not None:
        norm_len = check_finite_number("norm_len", norm_len)
        if norm_len <= 0:
            raise ValueError(f"norm_len must be > 0, got {norm_len}")
    raise_on_values([*checks, *value_checks])
    row_w, counts = _row_weights(mask, loss_agg, num_tokens, norm_len, seq_ids)
    return GRPOTerms(
        # On-policy (None): an empty marker; the fused op then takes each block's own log-probs as the old ones.
        old_logp=mask.new_empty(0, dtype=torch.float32) if old_logp is None else old_logp.detach().contiguous(),
        advantages=advantages.detach().contiguous(),
        mask=mask.detach().contiguous(),
        ref_logp=None if ref_logp is None else ref_logp.detach().contiguous(),
        beta=beta,
        row_w=row_w,
        counts=counts,
        kl_coef=coef,
        clip_low=settings.clip_low,
        clip_high=settings.clip_high,
        dual_clip=0.0 if settings.dual_clip is None else settings.dual_clip,
        kl_estimator=settings.kl_estimator,
    )


def grpo_metrics(stats: torch.Tensor, counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """Token means over masked tokens from the per-row sums `stats [B, n_stats]` and row counts `[B]`."""
    tokens = counts.sum()
    totals = stats.sum(0) / tokens.clamp(min=1.0)
    metrics = {name: totals[i] for i, name in enumerate(_STATS) if name != "loss"}
    metrics["tokens"] = tokens
    return metrics
