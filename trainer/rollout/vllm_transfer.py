"""vLLM's native weight-transfer API fed by the trainer's weight stream (imported only when vllm is installed).

vLLM 0.33's trainer side (`vllm.distributed.weight_transfer`): a `WeightSource` declares every parameter
(`metadata`, no gather) and yields full tensors (`iter_full`); `WeightTransferTrainerFactory.trainer_init(info,
client=..., source=...)` builds the sender for the backend named by the init info ("ipc": CUDA IPC handles to a
colocated worker; "nccl": packed broadcast to a server's workers); `send_weights()` runs one update round trip
(start, update, finish) through a client with the four-method `VLLMWeightSyncClient` surface.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Iterator
from typing import Any

import torch
from vllm.distributed.weight_transfer import (
    ParamMeta,
    TrainerWeightTransferEngine,
    WeightSource,
    WeightTransferTrainerFactory,
)
from vllm.distributed.weight_transfer.clients import HTTPVLLMWeightSyncClient
from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo
from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

from trainer.rollout.base import WeightStream


class _Source(WeightSource):
    """vLLM's `WeightSource` over the current `WeightStream` (swapped in before each send with `use`).

    Every rank owns every parameter: a pass yields the stream's gathered full tensors, which is what both the IPC and
    the NCCL senders consume. Both vLLM interfaces are served: 0.33's `metadata` property and `iter_full()`, and
    0.32's `metadata()` method and `__iter__` (`StreamSource` below picks the `metadata` spelling).
    """

    def __init__(self, stream: WeightStream) -> None:
        self._stream = stream
        self._params: list[ParamMeta] | None = None

    def params(self) -> list[ParamMeta]:
        """Every parameter's `ParamMeta`, in stream order (computed once: the model does not change)."""
        if self._params is None:
            self._params = [ParamMeta(p.name, p.dtype, tuple(p.shape)) for p in self._stream.metadata()]
        return self._params

    def use(self, stream: WeightStream) -> None:
        """Send from `stream` next time (the same model's parameters: the metadata must not change)."""
        if [(p.name, p.dtype, tuple(p.shape)) for p in stream.metadata()] != [
            (m.name, m.dtype, tuple(m.shape)) for m in self.params()
        ]:
            raise ValueError("vllm engine: the weight stream's parameters changed between syncs")
        self._stream = stream

    def iter_full(self) -> Iterator[tuple[str, torch.Tensor]]:
        for bucket in self._stream.buckets():
            yield from bucket
            del bucket

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        return self.iter_full()


if isinstance(inspect.getattr_static(WeightSource, "metadata", None), property | functools.cached_property):

    class StreamSource(_Source):
        @property
        def metadata(self) -> list[ParamMeta]:  # vLLM 0.33
            return self.params()

else:

    class StreamSource(_Source):  # type: ignore[no-redef]
        def metadata(self) -> list[ParamMeta]:  # vLLM 0.32: a method
            return self.params()


class LLMSyncClient:
    """The `VLLMWeightSyncClient` surface over an in-process `vllm.LLM` (its RL mixin takes request dicts)."""

    def __init__(self, llm: Any) -> None:
        self.llm = llm

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.llm.init_weight_transfer_engine({"init_info": init_info})

    def start_weight_update(self) -> None:
        self.llm.start_weight_update()

    def update_weights(self, update_info: Any) -> None:
        self.llm.update_weights({"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.llm.finish_weight_update(weight_version)


def packed_buffer_bytes(source: StreamSource, bucket_bytes: int) -> int:
    """The packed-transfer buffer: the bucket size, or the largest single tensor when that is larger.

    vLLM's packed producer (`weight_transfer/packed_tensor.py`) raises `ValueError` for any one tensor larger than
    the buffer; a 151936 x 896 bf16 embedding is ~260 MiB against the default 64 MiB bucket. The weight stream's
    own buckets already hold an oversized tensor alone, so the extra memory is that one tensor, as in the stream.
    """
    largest = max((math.prod(m.shape) * m.dtype.itemsize for m in source.params()), default=0)
    return max(int(bucket_bytes), int(largest))


def ipc_sender(
    llm: Any, stream: WeightStream, *, buffer_bytes: int
) -> tuple[TrainerWeightTransferEngine, StreamSource]:
    """The colocated sender: CUDA IPC into this rank's own in-process vLLM, packed in `buffer_bytes` chunks.

    Every rank is the sender to its own instance (`rank=0` in the init info); the handle all-gather over the
    default group still runs on all ranks and each worker picks the handle of its own GPU.
    """
    source = StreamSource(stream)
    info = IPCTrainerInitInfo(rank=0, packed=True, packed_buffer_size_bytes=packed_buffer_bytes(source, buffer_bytes))
    return WeightTransferTrainerFactory.trainer_init(info, client=LLMSyncClient(llm), source=source), source


def nccl_sender(
    base_url: str,
    stream: WeightStream,
    *,
    rank: int,
    master_address: str,
    master_port: int,
    server_workers: int,
    buffer_bytes: int,
) -> tuple[TrainerWeightTransferEngine, StreamSource]:
    """The server sender: trainer rank 0 broadcasts packed buckets over NCCL to the server's `server_workers`
    workers (group size 1 + server_workers); other ranks only take part in the FSDP2 gathers."""
    source = StreamSource(stream)
    info = NCCLTrainerInitInfo(
        rank=rank,
        master_address=master_address,
        master_port=master_port,
        world_size=1 + server_workers,
        packed=True,
        packed_buffer_size_bytes=packed_buffer_bytes(source, buffer_bytes),
    )
    client = HTTPVLLMWeightSyncClient(base_url)
    return WeightTransferTrainerFactory.trainer_init(info, client=client, source=source), source
