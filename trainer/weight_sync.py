"""Weight sync: stream full tensors out of FSDP2 shards, bucket by bucket, into a rollout engine.

`ModelWeightStream` is the one stream every engine consumes (`RolloutEngine.update_weights`): the hf engine copies
each bucket into its model; the vllm engine hands the same stream to vLLM's weight-transfer API (CUDA IPC when
colocated, NCCL to a server). Names are mapped from the trainer's to the HF checkpoint's
(`trainer.model.names.hf_name`, shared with the export), which is what both transformers models and vLLM's
`load_weights` take.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Shard

from trainer.buckets import byte_buckets
from trainer.model.names import hf_name
from trainer.rollout.base import ParamInfo, RolloutEngine


@torch.no_grad()
def iter_full_tensors(
    model: nn.Module, bucket_bytes: int, *, prefix: str = "", dtype: torch.dtype | None = None
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Buckets of `(hf_name, full tensor)` covering every parameter of `model` once, in `named_parameters` order.

    DTensors (FSDP2 shards; a CPU-offloaded one is moved to its mesh's device first) are gathered with one
    collective per bucket when they are all row shards (`Shard(0)`) of one 1-D mesh in one dtype, as FSDP2 makes
    them (`_gather_bucket`); otherwise (HSDP's 2-D mesh, mixed dtypes) each with `full_tensor()`. Either way a
    collective: every rank must run this generator to the end, in step. Plain tensors are passed as they are
    (detached, no copy). A bucket holds at most `bucket_bytes` of full tensors, except that a tensor larger than
    that goes alone; the bucket is gathered only when the previous one has been consumed and dropped, so the extra
    memory is one bucket (two while a bucket is assembled from its gathered shards; the consumer must not keep the
    tensors). Tied weights appear once (`named_parameters` skips the duplicate). `dtype`, when given, is the wire
    dtype: each tensor is cast after its gather (bucket sizes count wire bytes).
    """
    if bucket_bytes <= 0:
        raise ValueError(f"iter_full_tensors: bucket_bytes = {bucket_bytes}: must be > 0")

    def wire_bytes(named: tuple[str, torch.Tensor]) -> int:  # full size: a DTensor reports its global shape
        return named[1].numel() * (named[1].dtype if dtype is None else dtype).itemsize

    for planned in byte_buckets(model.named_parameters(), wire_bytes, bucket_bytes):
        yield _full_bucket(planned, prefix, dtype)  # gathered only once the consumer has dropped the previous one


def _full_bucket(
    planned: list[tuple[str, torch.Tensor]], prefix: str, dtype: torch.dtype | None
) -> list[tuple[str, torch.Tensor]]:
    """The bucket `planned` (trainer names and parameters) as `(hf_name, full tensor)` in the wire dtype."""
    shards = [_on_mesh_device(p) for _, p in planned if isinstance(p, DTensor)]
    gathered = iter(_gather_bucket(shards) if shards else [])
    out = []
    for name, param in planned:
        tensor = next(gathered) if isinstance(param, DTensor) else param.detach()
        out.append((hf_name(name, prefix), tensor.to(param.dtype if dtype is None else dtype)))
    return out


def _gather_bucket(shards: list[DTensor]) -> list[torch.Tensor]:
    """The full tensors of `shards`, in order. Row shards of one 1-D mesh in one dtype: each rank's local rows,
    flattened into one buffer, one `all_gather`, then each tensor put together from its ranks' pieces (ranks hold
    `torch.chunk`'s split of dim 0, as FSDP2 and `Shard(0)` lay it out; a rank may hold none). Else `full_tensor()`
    each. One collective instead of one per tensor: on gloo each costs about a millisecond."""
    mesh = shards[0].device_mesh
    simple = mesh.ndim == 1 and all(
        s.device_mesh == mesh and s.placements == (Shard(0),) and s.dtype == shards[0].dtype and s.dim() > 0
        for s in shards
    )
    if not simple:
        return [s.full_tensor() for s in shards]
    world, rank = mesh.size(), mesh.get_local_rank()
    rows = []
    for s in shards:
        split = [len(c) for c in torch.empty(s.shape[0], device="meta").chunk(world)]
        rows.append(split + [0] * (world - len(split)))
    mine = [s.to_local() for s in shards]
    if any(m.shape[0] != r[rank] for m, r in zip(mine, rows)):  # not the layout assumed: gather each
        return [s.full_tensor() for s in shards]
    per_row = [math.prod(s.shape[1:]) for s in shards]  # elements per row
    lengths = [sum(r[k] * w for r, w in zip(rows, per_row)) for k in range(world)]
    send = torch.zeros(max(lengths), dtype=shards[0].dtype, device=mine[0].device)
    torch.cat([m.reshape(-1) for m in mine], out=send[: lengths[rank]])
    received = [torch.empty_like(send) for _ in range(world)]
    dist.all_gather(received, send, group=mesh.get_group())
    out, offsets = [], [0] * world
    for s, r, w in zip(shards, rows, per_row):
        pieces = []
        for k in range(world):
            n = r[k] * w
            pieces.append(received[k][offsets[k] : offsets[k] + n])
            offsets[k] += n
        out.append(torch.cat(pieces).view(s.shape))
    return out


def _on_mesh_device(param: DTensor) -> DTensor:
    """`param` on its mesh's device: a CPU-offloaded shard is copied to the GPU first, so the gather runs over
    nccl and the engine receives device tensors (a shard already there is returned as it is)."""
    kind = param.device_mesh.device_type
    if param.device.type == kind:
        return param
    index = torch.cuda.current_device() if kind == "cuda" else None
    return param.to(torch.device(kind, index) if index is not None else torch.device(kind))


class ModelWeightStream:
    """A `WeightStream` over a (possibly FSDP2-sharded) model: HF names, optional wire dtype, buckets on demand.

    Counts what its passes yielded (`bytes_sent`, `buckets_sent`), so a sync can report its throughput whichever
    engine consumed it.
    """

    def __init__(
        self, model: nn.Module, bucket_bytes: int, *, prefix: str = "", dtype: torch.dtype | None = None
    ) -> None:
        self.model, self.bucket_bytes, self.prefix, self.dtype = model, bucket_bytes, prefix, dtype
        self.bytes_sent = 0
        self.buckets_sent = 0

    def metadata(self) -> list[ParamInfo]:
        """Every parameter once, in stream order, from global shapes: no gather, identical on every rank."""
        return [
            ParamInfo(hf_name(name, self.prefix), p.dtype if self.dtype is None else self.dtype, tuple(p.shape))
            for name, p in self.model.named_parameters()
        ]

    def buckets(self) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """A fresh pass of `iter_full_tensors` (collective: every rank drains it in step; a bad `bucket_bytes`
        raises there)."""
        for bucket in iter_full_tensors(self.model, self.bucket_bytes, prefix=self.prefix, dtype=self.dtype):
            self.bytes_sent += sum(t.numel() * t.element_size() for _, t in bucket)
            self.buckets_sent += 1
            yield bucket


def sync_weights(
    model: nn.Module,
    engine: RolloutEngine,
    *,
    bucket_bytes: int,
    prefix: str = "",
    dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Copy the trained weights of `model` (FSDP2-sharded or not) into `engine`; all ranks call it together.

    Returns `{"bytes": full bytes streamed, "seconds": wall time, "buckets": buckets streamed}`.
    """
    start = time.perf_counter()
    stream = ModelWeightStream(model, bucket_bytes, prefix=prefix, dtype=dtype)
    engine.update_weights(stream)
    return {
        "bytes": float(stream.bytes_sent),
        "seconds": time.perf_counter() - start,
        "buckets": float(stream.buckets_sent),
    }
