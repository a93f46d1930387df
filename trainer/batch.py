"""The forms a step's rollouts take, in order: scored `Group`s per prompt, a step's `Rollouts` (what `collect`
returns), and the padded `Batch` of tensors the passes read (`make_batch`). The passes' micro-batches over a batch,
packed rows or padded ones, are `trainer.packing`'s (`PackedRow`, `PaddedRow`, `PackedBatch`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fastslow.kernels import IGNORE_INDEX


@dataclass
class Group:
    """One prompt and its `n` sampled responses, scored."""

    prompt_ids: list[int]
    completions: list[list[int]]
    rewards: torch.Tensor  # [n] float32
    correct: torch.Tensor  # [n] bool
    lengths: torch.Tensor  # [n] float32


@dataclass
class Rollouts:
    """What a step's collection gives the update: this rank's kept groups and the step's rollout metrics (all ranks:
    chunks, kept and filled groups, dry, skipped, staleness, reward errors)."""

    groups: list[Group]
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Batch:
    """One rank's kept rollouts as tensors, group by group (B = groups * n sequences, T = L - 1 positions)."""

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    targets: torch.Tensor  # [B, T], -100 outside responses
    mask: torch.Tensor  # [B, T] bool: response tokens
    rewards: torch.Tensor  # [B]
    correct: torch.Tensor  # [B] bool
    lengths: torch.Tensor  # [B]
    rollout_logp: torch.Tensor | None = None  # [B, T] the engine's log-probs of the response tokens (0 elsewhere)


def make_batch(groups: list[Group], pad_id: int, device: torch.device) -> Batch:
    """Right-padded prompt + response sequences; targets and mask cover the response tokens only."""
    seqs = [(g.prompt_ids, c) for g in groups for c in g.completions]
    L = max(2, max(len(p) + len(c) for p, c in seqs))
    B = len(seqs)
    # One tensor from padded lists, then masks from the lengths: no per-sequence tensor writes (~3 ms at 128 rows)
    input_ids = torch.tensor([[*p, *c, *[pad_id] * (L - len(p) - len(c))] for p, c in seqs], dtype=torch.long)
    input_ids = input_ids.reshape(B, L)
    prompt_len = torch.tensor([len(p) for p, _ in seqs], dtype=torch.long)[:, None]
    total = prompt_len + torch.tensor([len(c) for _, c in seqs], dtype=torch.long)[:, None]
    pos = torch.arange(L)[None]
    attention = (pos < total).long()
    # position t predicts token t + 1: a response's targets sit at positions len(p) - 1 .. len(p) + len(c) - 2
    t = pos[:, : L - 1]
    scored = (t >= prompt_len - 1) & (t < total - 1)
    targets = torch.where(scored, input_ids[:, 1:], IGNORE_INDEX)
    mask = targets != IGNORE_INDEX
    rollout_logp = None
    if seqs and all(getattr(c, "logprobs", None) is not None for _, c in seqs):
        rollout_logp = torch.zeros(B, L - 1, dtype=torch.float32)
        for i, (p, c) in enumerate(seqs):
            if c:
                rollout_logp[i, len(p) - 1 : len(p) - 1 + len(c)] = torch.tensor(c.logprobs, dtype=torch.float32)
        rollout_logp = rollout_logp.to(device)
    cat = lambda name: torch.cat([getattr(g, name) for g in groups])
    return Batch(
        input_ids.to(device), attention.to(device), targets.to(device), mask.to(device),
        cat("rewards").float().to(device), cat("correct").to(device), cat("lengths").float().to(device),
        rollout_logp,
    )  # fmt: skip
