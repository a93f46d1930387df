"""Process group, device and FSDP2 wrapping: the only place that knows how the policy is parallelised.

Always runs under a process group, even alone (world size 1, gloo on a free local port), so checkpoints and
reductions take one code path. gloo on CPU, nccl on CUDA.

The mesh (`[parallel]`): by default one dimension, FSDP over all ranks. With `parallel.replicate = R` it is 2-D,
`("replicate", "shard")` of shape `(R, world / R)`, and `fully_shard` on it is HSDP: parameters sharded within a
group of `shard` ranks (one node, say), replicated across the `R` groups; gradients reduce-scattered within a group
and all-reduced across groups. Ranks are laid out row-major, so with torchrun's node-major ranks a shard group is
one node's GPUs when `shard` is the GPUs per node. With `replicate` = the world size (shards of one rank) and neither
mixed precision nor CPU offload, there is nothing to shard: each rank keeps the plain module, as DDP does, and
`average_gradients` all-reduces the gradients in flat buckets once per optimizer step (one collective a bucket,
not FSDP2's gather per unit in the forward and the backward and reduce-scatter per unit). `model.cpu_offload` keeps
the shards, their gradients and the optimizer state on the host (FSDP2's `CPUOffloadPolicy`): gathered to the device
per unit, the optimizer steps on the CPU.
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from trainer.buckets import byte_buckets
from trainer.host_alloc import return_freed_memory

if TYPE_CHECKING:
    from torch import nn

    from trainer.config.parallel import ParallelConfig
    from trainer.model.adapter import ModelAdapter


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


def mesh_shape(world: int, parallel: ParallelConfig | None = None) -> tuple[int, ...]:
    """`(world,)` (FSDP) or `(replicate, shard)` (HSDP) from `parallel.replicate` / `parallel.shard` (0: the rest).

    Raises `ConfigError` naming the keys when they do not multiply to the world size.
    """
    from trainer.config.base import ConfigError

    replicate = int(getattr(parallel, "replicate", 1) or 1)
    shard = int(getattr(parallel, "shard", 0) or 0)
    if shard == 0:
        if world % replicate:
            raise ConfigError(f"parallel.replicate = {replicate}: must divide the number of processes ({world})")
        shard = world // replicate
    if replicate * shard != world:
        raise ConfigError(
            f"parallel.replicate = {replicate} x parallel.shard = {shard} = {replicate * shard}: must equal the "
            f"number of processes ({world})"
        )
    return (world,) if replicate == 1 else (replicate, shard)


def init_distributed(parallel: ParallelConfig | None = None, *, cpu_offload: bool = False) -> DistInfo:
    """Join the torchrun process group (or make a group of one), pick this rank's device, build the mesh.

    `parallel` is the `[parallel]` config section (None: FSDP over all ranks, torch's default timeout). A mesh that
    does not fit the world size raises `ConfigError` once the group is up (every rank raises it). With `cpu_offload`
    on CUDA the group has a gloo backend for CPU tensors beside nccl (torchtitan's "cuda:nccl,cpu:gloo"): the
    collectives on host shards (gradient-norm reduction, full state dicts for export) need one.
    """
    from torch.distributed.device_mesh import init_device_mesh

    return_freed_memory()
    if "RANK" not in os.environ:  # plain `python -m trainer.main`: a group of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "cuda:nccl,cpu:gloo" if cpu_offload else "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        timeout = getattr(parallel, "timeout_s", None)
        kwargs = {"timeout": datetime.timedelta(seconds=float(timeout))} if timeout else {}
        try:
            dist.init_process_group(backend, **kwargs)
        except Exception as err:  # DistNetworkError and its kin
            from trainer.failure import is_address_in_use

            if is_address_in_use(err):
                from trainer.config.base import InputError

                port = os.environ.get("MASTER_PORT", "?")
                raise InputError(
                    f"MASTER_PORT={port}: the address is already in use (another job on this machine?): unset "
                    "MASTER_PORT, or export a free port"
                ) from None
            raise
    world = dist.get_world_size()
    shape = mesh_shape(world, parallel)
    names = ("shard",) if len(shape) == 1 else ("replicate", "shard")
    mesh = init_device_mesh(device.type, shape, mesh_dim_names=names)
    return DistInfo(rank=dist.get_rank(), world=world, local_rank=local_rank, device=device, mesh=mesh)


def parallelize(
    policy: nn.Module,
    info: DistInfo,
    *,
    mixed_precision: bool,
    activation_checkpointing: bool,
    cpu_offload: bool = False,
) -> None:
    """FSDP2 in torchtitan's order: activation checkpointing, then `fully_shard` per decoder block, then the root;
    with shards of one rank (`replicated`) and without mixed precision or CPU offload, activation checkpointing only
    (nothing to shard: the gradients are averaged by `average_gradients`).
    `policy` is a `trainer.policy.Policy` (its `lm` and `adapter` are read; typed as a module, as the policy
    imports the objective, which imports this module).

    The units are the LM's parts as its adapter names them (`policy.adapter`, `trainer.model.adapter`): each decoder
    block, the input embedding when the head does not share it, then the root. With `mixed_precision`, parameters
    are gathered in bf16 and gradients reduced in fp32. On a 2-D mesh this is HSDP (see the module docstring);
    with `cpu_offload`, FSDP2's `CPUOffloadPolicy` (shards on the host, pinned when on CUDA).
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    if activation_checkpointing:
        # Hugging Face's own per-layer checkpointing (non-reentrant): its decoder layers route their keyword
        # arguments (masks, position embeddings) through it correctly, which a generic wrapper does not.
        policy.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if replicated(info) and not mixed_precision and not cpu_offload:
        # Shards of one rank (a world of one, or `parallel.replicate` = the world) hold nothing to shard: FSDP2
        # would only copy each unit's parameters into its gathered buffer and back, route the optimizer and the clip
        # through DTensor (~10 ms of a ~145 ms CPU step at one rank), and gather and reduce-scatter per unit
        # (README "Performance"). The plain module gives the same numbers, its gradients averaged over ranks by
        # `average_gradients`; checkpoints still load at any world size (DCP reshards plain tensors as it does
        # DTensors). Mixed precision and CPU offload are FSDP2's policies: those keep it.
        return
    adapter: ModelAdapter = policy.adapter
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision else None
    kwargs: dict[str, Any] = {"mesh": info.mesh} | ({"mp_policy": mp} if mp is not None else {})
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=info.device.type == "cuda")
    for block in adapter.blocks:
        fully_shard(block, **kwargs)
    if not adapter.tied:  # untied: the embedding is a unit of its own
        # Gathered only around the lookup (and its backward) instead of for the whole pass with the root's head:
        # with a real vocabulary the embedding is a large part of the model (torchtitan shards it apart too).
        fully_shard(adapter.embedding, **kwargs)
    fully_shard(policy, **kwargs)
    for name in getattr(policy, "FSDP_FORWARD_METHODS", ()):  # forward passes besides `forward` (Policy.loss)
        register_fsdp_forward_method(policy, name)


def is_sharded(module: nn.Module) -> bool:
    """True for a module `parallelize` wrapped with FSDP2 (it has `reshard`); False for the plain module of an
    unsharded or replicated rank."""
    return hasattr(module, "reshard")


def replicated(info: DistInfo) -> bool:
    """True when each shard group is one rank: a world of one, or a `(world, 1)` mesh (`parallel.replicate` = the
    world size)."""
    mesh = info.mesh
    return info.world == 1 or (mesh is not None and mesh.ndim == 2 and mesh.shape[-1] == 1)


REDUCE_BUCKET_BYTES = 32 << 20
"""`average_gradients`: the most bytes one all-reduce carries (a bucket's flat copy is this process's extra memory)."""


def average_gradients(params: Iterable[torch.Tensor], bucket_bytes: int = REDUCE_BUCKET_BYTES) -> int:
    """Average the gradients of replicated (plain, not FSDP2) parameters over all ranks, in place: each bucket of
    up to `bucket_bytes` (one dtype) is flattened, all-reduced (sum) and divided by the world size. A parameter
    without a gradient takes part as zeros (it gets one), so every rank issues the same collectives. Returns the
    number of all-reduces. A no-op (0) in a world of one."""
    world = dist.get_world_size()
    if world == 1:
        return 0
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    calls = 0
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        for bucket in byte_buckets(grads, lambda g: g.numel() * g.element_size(), bucket_bytes):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            flat.div_(world)
            for g, part in zip(bucket, flat.split([g.numel() for g in bucket]), strict=True):
                g.copy_(part.view_as(g))
            calls += 1
    return calls


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


def close(*, barrier: bool = True) -> None:
    """Leave the process group; `barrier`: wait for every rank first (the normal end: all ranks get here). An
    error path passes False, since another rank may never arrive."""
    if dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()
