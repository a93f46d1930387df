"""The update's objective: the config's loss settings, and each micro-batch's loss arguments and share of the loss.

The loss of a minibatch is one number under `loss_agg`, however its sequences are split into micro-batches (packed
rows or padded ones, `trainer.packing`) and ranks. Each micro-batch's kernel loss is therefore scaled to its share:
"token-mean" divides by the minibatch's global token count inside the kernel (`num_tokens`), the per-sequence modes
weight each micro-batch by its sequences over the minibatch's (`Objective.scale`). FSDP averages gradients over
ranks, so the caller multiplies by the world size too. Dr. GRPO's normaliser is the padded width T, packed or not.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import torch

from fastslow.kernels import LossSettings
from trainer.dist import all_reduce

if TYPE_CHECKING:
    from trainer.packing import Row


@dataclass
class LossArgs:
    """`fastslow.kernels.linear_grpo_loss`'s arguments after `targets`, for one micro-batch or packed row (`[B, T]` or
    `[1, N]`, like its targets)."""

    old_logp: torch.Tensor | None  # [B, T]; None: on-policy (see `fastslow.kernels.grpo_loss`)
    advantages: torch.Tensor  # [B] or [B, T]; packed: [1, N]
    mask: torch.Tensor  # [B, T] bool
    ref_logp: torch.Tensor | None = None  # [B, T]
    kl_coef: float | torch.Tensor = 0.0  # a float, or [B] (per-group KL); packed [1, N]
    settings: LossSettings = field(default_factory=LossSettings)  # clip range, dual clip, loss_agg, entropy, KL
    num_tokens: float | torch.Tensor | None = None  # the global token count ("token-mean")
    norm_len: float | None = None  # Dr. GRPO's normaliser
    seq_ids: torch.Tensor | None = None  # [1, N] packed rows: each token's sequence

    def as_kwargs(self) -> dict[str, Any]:
        """The fields as keyword arguments (the tensors themselves, not copies)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def loss_settings(algorithm: object) -> LossSettings:
    """The `[algorithm]` section's loss knobs as one `LossSettings`, checked once. The config's keys are the
    settings' field names; a stand-in section without one (a test's namespace) gets the settings' default."""
    names = [f.name for f in fields(LossSettings)]
    return LossSettings(**{name: getattr(algorithm, name) for name in names if hasattr(algorithm, name)})


@dataclass(frozen=True)
class Totals:
    """A minibatch's counts over all ranks, the denominators of its micro-batches' shares."""

    tokens: torch.Tensor  # response tokens, at least 1: a minibatch without any has a zero loss, not 0 / 0
    scored: torch.Tensor  # sequences with a response token
    seqs: torch.Tensor  # sequences

    @classmethod
    def of(cls, mask: torch.Tensor, device: torch.device) -> Totals:
        """The totals of the minibatch whose response mask on this rank is `mask [b, T]` (three all-reduces)."""
        tokens = all_reduce(mask.sum().float()).clamp(min=1.0)
        scored = all_reduce(mask.any(-1).sum().float())
        return cls(tokens, scored, all_reduce(torch.tensor(float(mask.shape[0]), device=device)))


@dataclass(frozen=True)
class Objective:
    """One update's loss: the settings, and the batch's padded per-sequence tensors each micro-batch gathers from."""

    settings: LossSettings
    mask: torch.Tensor  # [B, T] bool: response tokens
    advantages: torch.Tensor  # [B] or [B, T]
    old_logp: torch.Tensor | None  # [B, T]; None: on-policy
    ref_logp: torch.Tensor | None  # [B, T]
    kl_coef: torch.Tensor | float  # [B] per group, or one float

    def args(self, row: Row, totals: Totals) -> LossArgs:
        """The loss arguments of the micro-batch `row`, in the minibatch of `totals`."""
        take, agg = row.gather, self.settings.loss_agg
        return LossArgs(
            old_logp=None if self.old_logp is None else take(self.old_logp), advantages=take(self.advantages),
            mask=take(self.mask), ref_logp=None if self.ref_logp is None else take(self.ref_logp),
            kl_coef=take(self.kl_coef) if isinstance(self.kl_coef, torch.Tensor) else self.kl_coef,
            settings=self.settings, num_tokens=totals.tokens if agg == "token-mean" else None,
            norm_len=float(self.mask.shape[1]) if agg == "seq-mean-token-sum-norm" else None, seq_ids=row.seq_ids,
        )  # fmt: skip

    def scale(self, row: Row, totals: Totals) -> float | torch.Tensor:
        """The factor making `row`'s kernel loss its share of the minibatch's: 1 for "token-mean" (its kernel
        divides by the global count already); its scored sequences over the minibatch's for "seq-mean-token-mean";
        its sequences over the minibatch's for Dr. GRPO."""
        if self.settings.loss_agg == "token-mean":
            return 1.0
        if self.settings.loss_agg == "seq-mean-token-mean":
            return row.scored / totals.scored.clamp(min=1.0)
        return row.n_seqs / totals.seqs
