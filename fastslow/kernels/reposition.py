"""SFPO reposition, in place over many tensors at once: `p <- slow + alpha * (p - slow)` in float32 math.

`snapshot(params)` copies the parameters' local shards into one flat buffer (the "slow" weights);
`reposition_(params, slow, alpha)` pulls the fast weights back toward them. FSDP2 parameters are DTensors: both
act on their local shards, so no communication happens and each rank touches only its own memory.

On CUDA (or under `TRITON_INTERPRET=1`) one Triton launch per (param dtype, slow dtype) pair covers every
tensor through a pointer table; on CPU the native library in `csrc/` does the same with threads; the torch
loop in `reposition_ref` is the fallback and the reference.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence

import torch

from fastslow.kernels._checks import check_finite_number
from fastslow.kernels._dispatch import backend_for
from fastslow.kernels._triton import cast_rtne, tl, triton


def _is_dtensor(t: torch.Tensor) -> bool:
    """True for a DTensor. Its module is only looked up once something has imported it (no DTensor can exist
    before), so importing the kernels never pays for `torch.distributed.tensor` (and the sympy it pulls in)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


# BLOCK=4096 elements per program, 8 warps: each program moves 16-48 KiB, enough to hide latency on a
# memory-bound lerp. Not yet tuned on a GPU (bench/ measures it against torch._foreach_lerp_).
_BLOCK = 4096
_NUM_WARPS = 8
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_ALIGN = 64  # bytes: each view in the snapshot buffer starts on a cache line, so vector loads stay aligned


@triton.jit
def _reposition_kernel(
    p_ptrs,  # [n_tensors] int64 addresses of the params (dtype P_DTYPE)
    s_ptrs,  # [n_tensors] int64 addresses of the slow copies (dtype S_DTYPE)
    numels,  # [n_tensors] int64
    block_tensor,  # [n_blocks] int32: which tensor this program works on
    block_start,  # [n_blocks] int64: first element of this program's block in that tensor
    alpha,
    P_DTYPE: tl.constexpr,
    S_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    t = tl.load(block_tensor + pid)
    start = tl.load(block_start + pid)
    n = tl.load(numels + t)
    p_base = tl.load(p_ptrs + t).to(tl.pointer_type(P_DTYPE))
    s_base = tl.load(s_ptrs + t).to(tl.pointer_type(S_DTYPE))
    offs = start + tl.arange(0, BLOCK)
    inb = offs < n
    p = tl.load(p_base + offs, mask=inb).to(tl.float32)
    s = tl.load(s_base + offs, mask=inb).to(tl.float32)
    tl.store(p_base + offs, cast_rtne(s + alpha * (p - s), P_DTYPE), mask=inb)


def _tl_dtype(dtype: torch.dtype) -> object:
    return {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[dtype]


_plans: OrderedDict[tuple, tuple[torch.Tensor, ...]] = OrderedDict()
_MAX_PLANS = 16  # the trainer repositions the same parameter list every step: one plan, built once


def _plan(params: Sequence[torch.Tensor], slow: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Device tables for one launch: pointers, sizes, and the block -> (tensor, start) map."""
    device = params[0].device
    key = (device, tuple((p.data_ptr(), s.data_ptr(), p.numel()) for p, s in zip(params, slow)))
    if key in _plans:
        _plans.move_to_end(key)
        return _plans[key]
    numels = torch.tensor([p.numel() for p in params], dtype=torch.int64)
    blocks = (numels + _BLOCK - 1) // _BLOCK
    block_tensor = torch.repeat_interleave(torch.arange(len(params), dtype=torch.int32), blocks)
    first = torch.cumsum(blocks, 0) - blocks
    block_start = (torch.arange(int(blocks.sum()), dtype=torch.int64) - first[block_tensor.long()]) * _BLOCK
    tables = tuple(
        t.to(device, non_blocking=True)
        for t in (
            torch.tensor([p.data_ptr() for p in params], dtype=torch.int64),
            torch.tensor([s.data_ptr() for s in slow], dtype=torch.int64),
            numels,
            block_tensor,
            block_start,
        )
    )
    _plans[key] = tables
    if len(_plans) > _MAX_PLANS:
        _plans.popitem(last=False)
    return tables


def _launch(params: list[torch.Tensor], slow: list[torch.Tensor], alpha: float) -> None:
    groups: dict[tuple[torch.dtype, torch.dtype], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for p, s in zip(params, slow):
        if p.numel():
            ps, ss = groups.setdefault((p.dtype, s.dtype), ([], []))
            ps.append(p)
            ss.append(s)
    for (p_dtype, s_dtype), (ps, ss) in groups.items():
        p_ptrs, s_ptrs, numels, block_tensor, block_start = _plan(ps, ss)
        _reposition_kernel[(block_tensor.numel(),)](
            p_ptrs, s_ptrs, numels, block_tensor, block_start, alpha,
            P_DTYPE=_tl_dtype(p_dtype), S_DTYPE=_tl_dtype(s_dtype), BLOCK=_BLOCK, num_warps=_NUM_WARPS,
        )  # fmt: skip


@torch.library.custom_op("fastslow::reposition_", mutates_args=("params",))
def _reposition_op(params: list[torch.Tensor], slow: list[torch.Tensor], alpha: float) -> None:
    if not params:
        return
    backend = backend_for(params[0].device, has_native=True)
    if backend == "triton":
        _launch(params, slow, alpha)
    elif backend == "native":
        from fastslow.kernels._native import reposition_native_

        reposition_native_(params, slow, alpha)
    else:
        reposition_ref(params, slow, alpha)


@_reposition_op.register_fake
def _(params: list[torch.Tensor], slow: list[torch.Tensor], alpha: float) -> None:
    return None


def _local(t: torch.Tensor) -> torch.Tensor:
    """The tensor whose memory holds this rank's values: a DTensor's local shard, detached from autograd."""
    if _is_dtensor(t):
        t = t.to_local()
    return t.detach()


def _locals(name: str, tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
        t = _local(t)
        if t.dtype not in _DTYPES:
            raise ValueError(f"{name}[{i}] has dtype {t.dtype}; reposition supports float32, bfloat16, float16")
        if not t.is_contiguous():
            raise ValueError(f"{name}[{i}] is not contiguous; reposition works in place on contiguous tensors")
        out.append(t)
    return out


class Snapshot(Sequence[torch.Tensor]):
    """The slow weights: one flat byte buffer holding a copy of each local shard, in its own dtype.

    Indexing gives views shaped like the shards, so a `Snapshot` is accepted wherever a list of tensors is.
    """

    def __init__(self, buffer: torch.Tensor, views: list[torch.Tensor]) -> None:
        self.buffer = buffer  # [total_bytes] uint8
        self.views = views

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, i: int) -> torch.Tensor:  # type: ignore[override]
        return self.views[i]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.views)

    def copy_from(self, params: Iterable[torch.Tensor]) -> Snapshot:
        """Refresh this snapshot in place from the same parameters (no new allocation)."""
        src = _locals("params", params)
        if [(t.shape, t.dtype) for t in src] != [(v.shape, v.dtype) for v in self.views]:
            raise ValueError("params do not match the tensors this snapshot was taken from")
        _copy_all(self.views, src)
        return self


def _copy_all(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    if dst:
        with torch.no_grad():
            torch._foreach_copy_(dst, src)


def snapshot(params: Iterable[torch.Tensor]) -> Snapshot:
    """Copy the parameters' local shards into one flat buffer: the `slow` argument of `reposition_`.

    Args:
        params: tensors, `nn.Parameter`s or FSDP2 DTensor parameters (their local shards are copied), all on one
            device, each float32, bfloat16 or float16 and contiguous.

    Returns:
        A `Snapshot`: a sequence of tensors shaped and typed like the local shards, all views into one buffer.
    """
    src = _locals("params", params)
    device = src[0].device if src else torch.device("cpu")
    for i, t in enumerate(src):
        if t.device != device:
            raise ValueError(f"params[{i}] is on {t.device} but params[0] is on {device}")
    offsets, total = [], 0
    for t in src:
        offsets.append(total)
        total += -(-t.numel() * t.element_size() // _ALIGN) * _ALIGN
    buffer = torch.empty(total, dtype=torch.uint8, device=device)
    views = [
        buffer[off : off + t.numel() * t.element_size()].view(t.dtype).view(t.shape) for off, t in zip(offsets, src)
    ]
    _copy_all(views, src)
    return Snapshot(buffer, views)


def reposition_(params: Iterable[torch.Tensor], slow: Sequence[torch.Tensor], alpha: float) -> None:
    """In place, for every pair: `p <- slow + alpha * (p - slow)`, computed in float32, stored in p's dtype.

    Args:
        params: N tensors (or `nn.Parameter`s, or FSDP2 DTensor parameters: their local shards are updated),
            float32/bfloat16/float16, contiguous, all on one device. Zero-size shards are fine.
        slow: N tensors with the same number of elements as the matching param, on the same device, any of
            the three dtypes (usually a `snapshot(params)`).
        alpha: finite float; 0 returns to `slow`, 1 keeps `params` (SFPO uses 0.8).
    """
    ps = _locals("params", params)
    ss = [_local(s) for s in slow]
    if len(ps) != len(ss):
        raise ValueError(f"slow has {len(ss)} tensors but params has {len(ps)}")
    alpha = check_finite_number("alpha", alpha)
    for i, (p, s) in enumerate(zip(ps, ss)):
        if not isinstance(s, torch.Tensor) or s.dtype not in _DTYPES:
            raise ValueError(f"slow[{i}] must be a float32/bfloat16/float16 tensor")
        if s.numel() != p.numel():
            raise ValueError(f"slow[{i}] has {s.numel()} elements but params[{i}] has {p.numel()}")
        if p.device != ps[0].device:
            raise ValueError(f"params[{i}] is on {p.device} but params[0] is on {ps[0].device}")
        if s.device != p.device:
            raise ValueError(f"slow[{i}] is on {s.device} but params[{i}] is on {p.device}")
        if not s.is_contiguous():
            raise ValueError(f"slow[{i}] is not contiguous")
    torch.ops.fastslow.reposition_(ps, ss, alpha)


def reposition_ref(params: Sequence[torch.Tensor], slow: Sequence[torch.Tensor], alpha: float) -> None:
    """Plain-torch reposition, one tensor at a time (the seed's loop, in float32 math); the reference."""
    with torch.no_grad():
        for p, s in zip(params, slow):
            s32 = s.float().view(p.shape)
            p.copy_(s32 + alpha * (p.float() - s32))
