"""Attention over packed rows: no token attends across a sequence boundary (`model.attn_implementation`).

A packed row `[1, N]` concatenates sequences, position ids restarting at 0 for each. What keeps them apart:
- "flash_attention_2" (what "auto" is on CUDA with flash-attn installed): flash-attn's varlen kernels, through
  transformers' `cu_seq_lens_q/k` and `max_length_q/k` keyword arguments (computed once per row here, not by
  transformers from the position ids in every layer). Memory and FLOPs follow each sequence's own length.
- "fastslow_sdpa" (what "auto" is elsewhere): an attention function registered with transformers'
  `AttentionInterface` that runs torch's SDPA causally on each sequence of the row in turn (the same
  `cu_seq_lens_q`). Exact, and attention costs sum(L_i^2), not N^2. Padded inputs (`optim.packing = false`) go to
  transformers' SDPA unchanged.
- "sdpa" / "eager": transformers' own, given an explicit 4D block-diagonal causal mask (`[1, 1, N, N]`: bool for
  SDPA, additive float for eager). Exact but quadratic in the row: for checking the other two.

Transformers (5.24) infers packing from position ids only when it gets no attention mask and no cache, and even
then builds an `N x N` mask for SDPA and eager; this module never relies on that.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from fastslow.kernels._dispatch import flash_attn_available
from trainer.model.config import ATTN_IMPLEMENTATIONS

PACKED_SDPA = "fastslow_sdpa"


def packed_sdpa_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal SDPA on each sequence of a packed row (`cu_seq_lens_q` given); transformers' SDPA otherwise.

    `query` `[1, Hq, N, D]`, `key`/`value` `[1, Hkv, N, D]`; returns `([1, N, Hq, D], None)` as transformers'
    attention functions do.
    """
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    if kwargs.get("sliding_window") is not None:
        raise ValueError(f"model.attn_implementation = {PACKED_SDPA!r} has no sliding-window attention")
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: each KV head serves `groups` query heads
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    bounds = cu.tolist()
    p = dropout if module.training else 0.0
    # One `split` per tensor, not a slice per sequence: the backward of a slice allocates and zero-fills a gradient
    # the size of the whole row, once per sequence (61 ms of a 2-rank CPU step at 64 sequences a row); the backward
    # of a split is one concatenation. The pieces before the first and after the last bound are not attended.
    sizes = [bounds[0], *(b - a for a, b in itertools.pairwise(bounds)), query.shape[2] - bounds[-1]]
    pieces = zip(*(t.split(sizes, dim=2)[1:-1] for t in (query, key, value)))
    out = [
        F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True, scale=scaling)
        for q, k, v in pieces
        if q.shape[2] > 0
    ]
    return torch.cat(out, dim=2).transpose(1, 2).contiguous(), None


def _packed_sdpa_mask(*args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """SDPA's mask for padded inputs; none for a packed row (no 2D mask), whose attention needs none: without this
    transformers would build an `N x N` mask from the position ids that `packed_sdpa_forward` ignores."""
    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


AttentionInterface.register(PACKED_SDPA, packed_sdpa_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(PACKED_SDPA, _packed_sdpa_mask)


def resolve(name: str, device: torch.device) -> str:
    """The transformers attention implementation for `model.attn_implementation = name` on `device`."""
    if name not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"model.attn_implementation = {name!r}; allowed: {', '.join(map(repr, ATTN_IMPLEMENTATIONS))}")
    if name == "auto":
        return "flash_attention_2" if flash_attn_available(device) else PACKED_SDPA
    if name == "flash_attention_2" and not flash_attn_available(device):
        raise ValueError(
            f"model.attn_implementation = 'flash_attention_2' needs a CUDA device and flash-attn (pip install "
            f".[flash]); this run is on {device.type}. Use 'auto' (varlen flash-attn where it can, exact "
            "per-sequence SDPA elsewhere)"
        )
    return name


def configure(lm: nn.Module, name: str) -> str:
    """Set `lm`'s attention to the implementation `name` resolves to on `lm`'s device; returns that name."""
    device = next(lm.parameters()).device
    impl = resolve(name, device)
    lm.config._attn_implementation = impl
    for sub in lm.modules():  # nested configs (the decoder's) read the same attribute
        cfg = getattr(sub, "config", None)
        if cfg is not None and cfg is not lm.config and hasattr(cfg, "_attn_implementation"):
            cfg._attn_implementation = impl
    return impl


def packed_model_kwargs(
    impl: str, position_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_len: int, dtype: torch.dtype
) -> dict[str, Any]:
    """Keyword arguments of the decoder's forward for one packed row under `impl`.

    Args:
        position_ids: `[1, N]` positions restarting at 0 for each sequence.
        cu_seqlens: `[S + 1]` int32 sequence starts in the row, then N.
        max_len: the longest sequence's length.
        dtype: the activations' dtype (eager's additive mask is in it).
    """
    kw: dict[str, Any] = {"position_ids": position_ids, "use_cache": False}
    if impl in ("flash_attention_2", PACKED_SDPA):
        kw.update(
            attention_mask=None, cu_seq_lens_q=cu_seqlens, cu_seq_lens_k=cu_seqlens, max_length_q=max_len,
            max_length_k=max_len,
        )  # fmt: skip
        return kw
    allowed = block_causal_mask(cu_seqlens, position_ids.shape[-1], position_ids.device)
    if impl == "eager":
        kw["attention_mask"] = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min
        )
    else:
        kw["attention_mask"] = allowed
    return kw


def block_causal_mask(cu_seqlens: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """`[1, 1, n, n]` bool: query i may see key j iff j <= i and both lie in the same sequence."""
    starts = torch.zeros(n, dtype=torch.long, device=device)
    bounds = cu_seqlens.to(device=device, dtype=torch.long)
    starts[bounds[1:-1]] = 1
    seq = starts.cumsum(0)  # [n] sequence index of each position
    i = torch.arange(n, device=device)
    allowed = (seq[:, None] == seq[None, :]) & (i[None, :] <= i[:, None])
    return allowed[None, None]
