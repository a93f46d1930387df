"""Weight sync: stream full tensors out of FSDP2 shards, bucket by bucket, into a rollout engine's `load_weights`."""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from trainer.rollout.base import RolloutEngine

# Module names that wrappers insert into parameter names: FSDP1, activation checkpointing, torch.compile.
WRAPPER_INFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def hf_name(name: str, prefix: str = "") -> str:
    """The HF model's name for a trained parameter: wrapper infixes removed, then a leading `prefix` stripped.

    E.g. "lm.model.layers.0._checkpoint_wrapped_module.mlp.up_proj.weight" with prefix "lm." ->
    "model.layers.0.mlp.up_proj.weight". A name without the prefix is kept (the engine then rejects it).
    """
    for infix in WRAPPER_INFIXES:
        name = name.replace(infix, "")
    if prefix and name.startswith(prefix):
        name = name[len(prefix) :]
    return name


@torch.no_grad()
def iter_full_tensors(
    model: nn.Module, bucket_bytes: int, *, prefix: str = ""
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Buckets of `(hf_name, full tensor)` covering every parameter of `model` once, in `named_parameters` order.

    A DTensor (FSDP2 shard) is gathered with `full_tensor()`: a collective, so every rank must run this generator
    to the end, in step. Plain tensors are passed as they are (detached, no copy). A bucket holds at most
    `bucket_bytes` of full tensors, except that a tensor larger than that goes alone; the bucket is gathered only
    when the previous one has been consumed and dropped, so the extra memory at any time is one bucket (the
    consumer must not keep the tensors). Tied weights appear once (`named_parameters` skips the duplicate).
    """
    if bucket_bytes <= 0:
        raise ValueError(f"iter_full_tensors: bucket_bytes = {bucket_bytes}: must be > 0")
    bucket: list[tuple[str, torch.Tensor]] = []
    filled = 0
    for name, param in model.named_parameters():
        size = param.numel() * param.element_size()  # full size: a DTensor reports its global shape
        if bucket and filled + size > bucket_bytes:
            yield bucket
            bucket, filled = [], 0  # drop the consumed bucket before gathering the next tensor
        tensor = param.full_tensor() if isinstance(param, DTensor) else param.detach()
        bucket.append((hf_name(name, prefix), tensor))
        filled += size
    if bucket:
        yield bucket


def sync_weights(model: nn.Module, engine: RolloutEngine, *, bucket_bytes: int, prefix: str = "") -> dict[str, float]:
    """Copy the trained weights of `model` (FSDP2-sharded or not) into `engine`; all ranks call it together.

    Returns `{"bytes": full bytes sent, "seconds": wall time, "buckets": number of load_weights calls}`.
    """
    start = time.perf_counter()
    sent = 0
    buckets = 0
    for bucket in iter_full_tensors(model, bucket_bytes, prefix=prefix):
        engine.load_weights(bucket)
        sent += sum(t.numel() * t.element_size() for _, t in bucket)
        buckets += 1
        del bucket  # the generator gathers the next bucket only after this one is freed
    return {"bytes": float(sent), "seconds": time.perf_counter() - start, "buckets": float(buckets)}
