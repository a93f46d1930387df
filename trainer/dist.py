"""Process group, device and FSDP2 wrapping: the only place that knows how the policy is parallelised.

Always runs under a process group, even alone (world size 1, gloo on a free local port), so checkpoints and
reductions take one code path. gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the world size, its device and the FSDP mesh."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    mesh: object  # torch.distributed.device_mesh.DeviceMesh

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> DistInfo:
    """Join the torchrun process group (or make a group of one) and pick this rank's device."""
    from torch.distributed.device_mesh import init_device_mesh

    if "RANK" not in os.environ:  # plain `python -m trainer.main`: a group of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    world = dist.get_world_size()
    mesh = init_device_mesh(device.type, (world,))
    return DistInfo(rank=dist.get_rank(), world=world, local_rank=local_rank, device=device, mesh=mesh)


def parallelize(policy: nn.Module, info: DistInfo, *, mixed_precision: bool, activation_checkpointing: bool) -> None:
    """FSDP2 in torchtitan's order: activation checkpointing, then `fully_shard` per decoder block, then the root.

    `policy.lm.model.layers` are the decoder blocks of a Hugging Face causal LM. With `mixed_precision`, parameters
    are gathered in bf16 and gradients reduced in fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    if activation_checkpointing:
        # Hugging Face's own per-layer checkpointing (non-reentrant): its decoder layers route their keyword
        # arguments (masks, position embeddings) through it correctly, which a generic wrapper does not.
        policy.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = policy.lm.model.layers
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision else None
    kwargs = {"mesh": info.mesh} | ({"mp_policy": mp} if mp is not None else {})
    for layer in layers:
        fully_shard(layer, **kwargs)
    fully_shard(policy, **kwargs)
    for name in getattr(policy, "FSDP_FORWARD_METHODS", ()):  # forward passes besides `forward` (Policy.loss)
        register_fsdp_forward_method(policy, name)


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce across ranks ("sum", "max" or "min"); returns `t`."""
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    dist.all_reduce(t, op=ops[op])
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `t` (same shape on each rank) along dim 0, in rank order."""
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def close() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
