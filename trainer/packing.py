"""Padding-free passes: a batch's sequences packed into rows of at most a token budget (`optim.packing`).

Each row (one micro-batch, `[1, N]`) concatenates whole sequences, prompt + response, with position ids restarting
at 0 for each; first-fit decreasing fills the rows, and a sequence longer than the budget gets a row of its own. The
batch's tensors stay padded `[B, T]` (old and reference log-probs, advantages, masks): a row gathers its tokens from
them (`PackedRow.gather`) and scatters its log-probs back (`PackedRow.scatter`), so everything outside the forward
passes is the same with packing on or off. With packing off, `PaddedRow`s (a few whole `[b, T]` sequences each) offer
the same interface, so the passes loop over rows either way (`pass_rows`, `update_rows`).

FSDP2 runs collectives in every forward and backward, so every rank must make as many micro-batches as the others:
`pack_minibatches` all-reduces the row count of each minibatch and gives a rank with fewer rows empty ones (one
padding token, nothing scored). Row counts are as few as first-fit decreasing makes them and every rank orders its
rows fullest first, so the micro-batches that run together (the k-th of each rank) are of like size: the ranks wait
on the one with the most tokens, and not longer. (Moving sequences between ranks to even out their tokens would cut
that wait too; it is not done.)

Shapes: B sequences in the batch, L = T + 1 padded positions, N tokens in a row, S sequences in a row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from fastslow.kernels import IGNORE_INDEX
from trainer.dist import all_reduce
from trainer.model import attention

if TYPE_CHECKING:
    from trainer.config.optim import OptimConfig

DEFAULT_ROW_TOKENS = {"cpu": 4096}
"""`optim.micro_batch_tokens = 0` means this per device type; 16384 elsewhere (an accelerator)."""


def row_tokens(budget: int, device: torch.device) -> int:
    """The token budget of a row: `budget` (`optim.micro_batch_tokens`), or the device's default when it is 0."""
    return budget if budget > 0 else DEFAULT_ROW_TOKENS.get(device.type, 16384)


def first_fit_decreasing(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices of `lengths` grouped into rows of at most `budget` tokens (a longer one alone).

    Longest first, each into the first row with room for it. Within a row, indices keep the order they were placed
    in; rows come out in the order they were opened.
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        n = lengths[i]
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(max(budget - n, 0))
    return rows


@dataclass(frozen=True)
class PackedRow:
    """One packed micro-batch: where each of its N tokens comes from in the padded batch."""

    members: list[int]  # the batch indices of its S sequences, in row order
    seq: torch.Tensor  # [N] long: each token's sequence (batch index), -1 for padding
    pos: torch.Tensor  # [N] long: each token's position in its sequence
    seq_ids: torch.Tensor  # [1, N] long: 0..S-1 in row order, -1 for padding (the kernels' `seq_ids`)
    cu_seqlens: torch.Tensor  # [S + 1] int32: sequence starts, then N
    max_len: int  # the longest sequence in the row (1 for an empty row)
    scored: int  # sequences with at least one response token

    @property
    def tokens(self) -> int:
        return self.seq.numel()

    @property
    def n_seqs(self) -> int:
        """The sequences in the row (0 for an empty one)."""
        return len(self.members)

    @property
    def batch_indices(self) -> torch.Tensor:
        """`[S]` long: the batch indices of the row's sequences (`members`)."""
        return torch.tensor(self.members, dtype=torch.long, device=self.seq.device)

    def gather(self, x: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
        """`[1, N]` values of a padded `[B]` (per sequence) or `[B, W]` (per position, any W) tensor; `fill` where
        a token has no value (padding, or a position past W)."""
        if x.dim() == 1:
            out = x[self.seq.clamp(min=0)]
            ok = self.seq >= 0
        else:
            out = x[self.seq.clamp(min=0), self.pos.clamp(max=x.shape[1] - 1)]
            ok = (self.seq >= 0) & (self.pos < x.shape[1])
        return torch.where(ok, out, torch.as_tensor(fill, dtype=x.dtype, device=x.device))[None]

    def scatter(self, out: torch.Tensor, values: torch.Tensor) -> None:
        """Write the row's `[1, N]` values into the padded `out [B, T]` at their (sequence, position)."""
        keep = (self.seq >= 0) & (self.pos < out.shape[1])
        out[self.seq[keep], self.pos[keep]] = values[0][keep].to(out.dtype)

    def model_kwargs(self, impl: str, dtype: torch.dtype) -> dict:
        """The decoder's keyword arguments for this row (`trainer.model.attention.packed_model_kwargs`)."""
        return attention.packed_model_kwargs(impl, self.pos[None], self.cu_seqlens, self.max_len, dtype)

    def inputs(self, policy: Any, batch: Any) -> tuple:
        """`Policy.forward`'s positional arguments for this row of a `trainer.batch.Batch`, then its keywords."""
        kwargs = self.model_kwargs(getattr(policy, "attn", "sdpa"), torch.float32)
        return self.gather(batch.input_ids), None, row_targets(self, batch.targets), {"packed": kwargs}


@dataclass(frozen=True)
class PaddedRow:
    """A padded micro-batch with a packed row's interface: the batch's sequences `idx`, `[b, T]` at the batch's
    width, each in a row of its own (so the kernels need no `seq_ids`)."""

    idx: torch.Tensor  # [b] long: the batch indices of its sequences
    mask: torch.Tensor  # [B, T] bool: the batch's response tokens
    seq_ids: None = None  # one sequence per row: the kernels' default

    @property
    def n_seqs(self) -> int:
        return len(self.idx)

    @property
    def batch_indices(self) -> torch.Tensor:
        """`[b]` long: the batch indices of the micro-batch's sequences (`idx`)."""
        return self.idx

    @property
    def scored(self) -> torch.Tensor:
        """Sequences with at least one response token: a 0-d float tensor (no device sync, unlike a packed row's)."""
        return self.mask[self.idx].any(-1).sum().float()

    def gather(self, x: torch.Tensor, fill: float | int = 0) -> torch.Tensor:
        """The micro-batch's rows of a padded `[B]` or `[B, W]` tensor (`fill` unused: no token lacks a value)."""
        return x[self.idx]

    def scatter(self, out: torch.Tensor, values: torch.Tensor) -> None:
        """Write the micro-batch's `[b, T]` values into the padded `out [B, T]`."""
        out[self.idx] = values.to(out.dtype)

    def inputs(self, policy: Any, batch: Any) -> tuple:
        """`Policy.forward`'s positional arguments for this micro-batch of a `trainer.batch.Batch`, then its
        keywords."""
        return batch.input_ids[self.idx], batch.attention_mask[self.idx], batch.targets[self.idx], {}


Row = PackedRow | PaddedRow
"""One micro-batch of a pass, packed or padded: `gather`, `scatter`, `inputs`, `seq_ids`, `scored`, `n_seqs`,
`batch_indices`."""


def make_row(members: list[int], lengths: Sequence[int], scored: Sequence[bool], device: torch.device) -> PackedRow:
    """The row holding sequences `members` (batch indices) of `lengths` tokens; no members: an empty row."""
    if not members:  # one padding token: the forward and backward run (FSDP's collectives), nothing is scored
        zero = torch.zeros(1, dtype=torch.long, device=device)
        cu = torch.tensor([0, 1], dtype=torch.int32, device=device)
        return PackedRow([], zero - 1, zero, zero[None] - 1, cu, 1, 0)
    sizes = [lengths[i] for i in members]
    n = sum(sizes)
    size_t = torch.tensor(sizes, dtype=torch.long)
    seq = torch.repeat_interleave(torch.tensor(members, dtype=torch.long), size_t)
    local = torch.repeat_interleave(torch.arange(len(members)), size_t)
    starts = torch.cumsum(size_t, 0) - size_t
    pos = torch.arange(n) - starts[local]
    cu = torch.cat([starts, torch.tensor([n])]).to(torch.int32)
    return PackedRow(
        list(members), seq.to(device), pos.to(device), local[None].to(device), cu.to(device), max(sizes),
        sum(bool(scored[i]) for i in members),
    )  # fmt: skip


@dataclass(frozen=True)
class PackedBatch:
    """A batch's rows, minibatch by minibatch (each minibatch's count the same on every rank)."""

    minibatches: list[list[PackedRow]]

    @property
    def rows(self) -> list[PackedRow]:
        return [r for mb in self.minibatches for r in mb]


def pack_minibatches(
    minibatches: Sequence[torch.Tensor],
    lengths: torch.Tensor,
    scored: torch.Tensor,
    budget: int,
    device: torch.device,
) -> PackedBatch:
    """Pack each minibatch's sequences into rows, then pad every rank to the largest row count (one all-reduce).

    Args:
        minibatches: each a `[b]` long tensor of batch indices (the update's `torch.tensor_split`).
        lengths: `[B]` tokens per sequence (prompt + response).
        scored: `[B]` bool, the sequence has a response token.
        budget: tokens per row (`row_tokens`).
    """
    lens, flags = lengths.tolist(), scored.tolist()
    packed = []
    for mb in minibatches:
        idx = mb.tolist()
        rows = first_fit_decreasing([lens[i] for i in idx], budget)
        # Fullest first on every rank: the k-th rows of the ranks run together, so like sizes should meet.
        rows.sort(key=lambda row: -sum(lens[idx[k]] for k in row))
        packed.append([make_row([idx[k] for k in row], lens, flags, device) for row in rows])
    counts = torch.tensor([float(len(rows)) for rows in packed], device=device)
    most = all_reduce(counts, "max").long().tolist() if counts.numel() else []
    for rows, m in zip(packed, most, strict=True):
        rows.extend(make_row([], lens, flags, device) for _ in range(m - len(rows)))
    return PackedBatch(packed)


def layout_metrics(
    packed: PackedBatch | None, lengths: torch.Tensor, padded_width: int, device: torch.device, world: int
) -> dict[str, float]:
    """`batch/padding_frac` (over all ranks: the fraction of the tokens a pass computes that are padding) and
    `batch/rows` (micro-batch rows per rank and pass: packed rows, or the B padded sequences)."""
    real = float(lengths.sum())
    if packed is None:
        computed, rows = float(lengths.numel() * padded_width), float(lengths.numel())
    else:
        computed, rows = float(sum(r.tokens for r in packed.rows)), float(len(packed.rows))
    totals = all_reduce(torch.tensor([real, computed, rows], dtype=torch.float64, device=device)).tolist()
    return {"batch/padding_frac": 1.0 - totals[0] / max(totals[1], 1.0), "batch/rows": totals[2] / world}


def row_targets(row: PackedRow, targets: torch.Tensor) -> torch.Tensor:
    """`[1, N]` next-token targets of a row from the padded `[B, T]` ones (-100 at each sequence's last token)."""
    return row.gather(targets, IGNORE_INDEX)


def pack_batch(optim: OptimConfig, batch: Any, device: torch.device) -> PackedBatch | None:
    """A `trainer.batch.Batch`'s rows for every pass of a step, minibatch by minibatch (the update's split), or None
    when `optim.packing` is off (`optim`: the config section)."""
    if not optim.packing:
        return None
    rows_all = torch.arange(batch.input_ids.shape[0], device=device)
    return pack_minibatches(
        torch.tensor_split(rows_all, optim.minibatches), batch.attention_mask.sum(-1), batch.mask.any(-1),
        row_tokens(optim.micro_batch_tokens, device), device,
    )  # fmt: skip


def padded_rows(indices: torch.Tensor, size: int, mask: torch.Tensor) -> list[PaddedRow]:
    """The batch's sequences `indices`, `size` at a time, as padded micro-batches (`mask`: the batch's)."""
    return [PaddedRow(r, mask) for r in torch.split(indices, max(1, size))]


def pass_rows(batch: Any, micro: int, packed: PackedBatch | None) -> list[Row]:
    """The micro-batches of a log-prob pass over a `trainer.batch.Batch`: its packed rows, or `micro` sequences at a
    time in batch order."""
    if packed is not None:
        return packed.rows
    return padded_rows(torch.arange(batch.input_ids.shape[0], device=batch.input_ids.device), micro, batch.mask)


def update_rows(
    batch: Any, minibatches: Sequence[torch.Tensor], micro: int, packed: PackedBatch | None
) -> list[list[Row]]:
    """The micro-batches of each of the update's `minibatches` (`[b]` batch indices): the packed rows, or `micro`
    sequences at a time."""
    if packed is not None:
        return packed.minibatches
    return [padded_rows(mb, micro, batch.mask) for mb in minibatches]
