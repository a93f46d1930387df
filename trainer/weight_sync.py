"""Weight sync: stream full tensors out of FSDP2 shards, bucket by bucket, into a rollout engine.

`ModelWeightStream` is the one stream every engine consumes (`RolloutEngine.update_weights`): the hf engine copies
each bucket into its model; the vllm engine hands the same stream to vLLM's weight-transfer API (CUDA IPC when
colocated, NCCL to a server). Names are mapped from the trainer's to the HF checkpoint's
(`trainer.model.names.hf_name`, shared with the export), which is what both transformers models and vLLM's
`load_weights` take.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from trainer.model.names import hf_name
from trainer.rollout.base import ParamInfo, RolloutEngine


@torch.no_grad()
def iter_full_tensors(
    model: nn.Module, bucket_bytes: int, *, prefix: str = "", dtype: torch.dtype | None = None
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Buckets of `(hf_name, full tensor)` covering every parameter of `model` once, in `named_parameters` order.

    A DTensor (FSDP2 shard; a CPU-offloaded one is moved to its mesh's device first) is gathered with
    `full_tensor()`: a collective, so every rank must run this generator
    to the end, in step. Plain tensors are passed as they are (detached, no copy). A bucket holds at most
    `bucket_bytes` of full tensors, except that a tensor larger than that goes alone; the bucket is gathered only
    when the previous one has been consumed and dropped, so the extra memory at any time is one bucket (the
    consumer must not keep the tensors). Tied weights appear once (`named_parameters` skips the duplicate).
    `dtype`, when given, is the wire dtype: each tensor is cast after its gather (bucket sizes count wire bytes).
    """
    if bucket_bytes <= 0:
        raise ValueError(f"iter_full_tensors: bucket_bytes = {bucket_bytes}: must be > 0")
    bucket: list[tuple[str, torch.Tensor]] = []
    filled = 0
    for name, param in model.named_parameters():
        wire = param.dtype if dtype is None else dtype
        size = param.numel() * wire.itemsize  # full size: a DTensor reports its global shape
        if bucket and filled + size > bucket_bytes:
            yield bucket
            bucket, filled = [], 0  # drop the consumed bucket before gathering the next tensor
        tensor = _on_mesh_device(param).full_tensor() if isinstance(param, DTensor) else param.detach()
        bucket.append((hf_name(name, prefix), tensor.to(wire)))
        filled += size
    if bucket:
        yield bucket


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
