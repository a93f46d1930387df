"""Sharded construction: the policy, reference, export template and engine copy, without a whole model per rank.

torchtitan's order: every model is built on the meta device (no memory), sharded with `fully_shard`, given empty
storage for this rank's shards only (`to_empty`), then filled. Rank 0 alone builds the initial weights in full (the
safetensors of `model.path` loaded by transformers, or the seeded random init / warm start of a preset: the very
weights every rank built before) and broadcasts them one tensor at a time; each rank keeps its own slice
(`distribute_tensor(..., src_data_rank=None)`: local slicing, no further communication). The reference takes the
same tensors in the same pass, so it equals the initial policy. So a rank holds its shards plus one full tensor at a
time, and rank 0 the full model besides, until both are filled.

Non-persistent buffers (rotary `inv_freq`) are not in any checkpoint: they are computed on the CPU while the
parameters go to meta (`params_on_meta`), kept aside, and put back on the compute device after `to_empty`.

The export template is a meta model (class + config + generation config, no weights). The hf engine's inference copy
is the one full copy this rank holds besides its shards: built empty on the device, filled by the first weight sync.

Construction flows one way: this module takes the config, its checks and rank 0's initial weights from
`trainer.model.load` (and `trainer.model.warm_start`), the model's parts from `trainer.model.adapter`; none of them
calls back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from safetensors.torch import load_model
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers import PreTrainedTokenizerBase as Tokenizer

from trainer.dist import DistInfo, parallelize
from trainer.model import warm_start
from trainer.model.adapter import ModelAdapter, new_causal_lm
from trainer.model.load import checked_config, freeze, generation_config, load_model_and_tokenizer, quiet_transformers
from trainer.policy import Policy

if TYPE_CHECKING:
    from trainer.config import Config, OptimConfig

__all__ = [
    "Models", "build_models", "build_optimizer", "empty_model", "fill_from_rank0", "materialize", "meta_model",
    "params_on_meta",
]  # fmt: skip


@dataclass
class Models:
    """What `build_models` returns: the sharded policy, the sharded frozen reference (or None), the meta export
    template, and `make_engine_model(dtype)`, which builds the hf engine's empty full copy."""

    policy: Policy
    ref: Policy | None
    template: PreTrainedModel
    make_engine_model: Callable[[torch.dtype], PreTrainedModel]


@contextlib.contextmanager
def params_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device, their buffers computed as usual (on the CPU).

    (accelerate's `init_empty_weights(include_buffers=False)`.) A parameter already on meta is registered as it is,
    so tied weights stay one tensor.
    """
    register = nn.Module.register_parameter

    def to_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            kind = type(module._parameters[name])
            module._parameters[name] = kind(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = to_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def meta_model(config: PretrainedConfig, *, trust_remote_code: bool = False) -> PreTrainedModel:
    """The causal LM of `config` in float32 with its parameters on meta and its buffers real (CPU); train mode.

    Every model the trainer builds starts here, so a layout or head the trainer does not support
    (`trainer.model.adapter`) is refused before any weight is loaded.
    """
    with params_on_meta(), torch.random.fork_rng(devices=[]), quiet_transformers():  # draws nothing from the RNG
        model = new_causal_lm(config, trust_remote_code=trust_remote_code)
    ModelAdapter(model).check_head()
    return model.to(torch.float32).train()


def materialize(module: nn.Module, *, device: torch.device, buffer_device: torch.device) -> None:
    """`module.to_empty(device=device)` (FSDP2: this rank's shards only), the buffers kept and moved to
    `buffer_device` (`to_empty` would leave them uninitialised; with CPU offload they stay on the compute device),
    and tied parameters tied again (FSDP2 keeps its ties; a plain module's `to_empty` splits them)."""
    saved = {name: buf.detach().clone() for name, buf in module.named_buffers()}
    first: dict[int, str] = {}
    aliases = {n: first.setdefault(id(p), n) for n, p in module.named_parameters(remove_duplicate=False)}
    module.to_empty(device=device)
    for name, tied_to in aliases.items():  # to_empty gives each alias of a meta parameter its own tensor: re-tie
        if name != tied_to:
            owner, _, key = name.rpartition(".")
            setattr(module.get_submodule(owner), key, module.get_parameter(tied_to))
    for prefix, sub in module.named_modules():
        for key, buf in sub._buffers.items():
            if buf is not None:
                name = f"{prefix}.{key}" if prefix else key
                sub._buffers[key] = saved[name].to(device=buffer_device, dtype=buf.dtype)


def empty_model(config: PretrainedConfig, *, device: torch.device, dtype: torch.dtype, **kw: Any) -> PreTrainedModel:
    """An unsharded copy of the architecture on `device` in `dtype`, uninitialised (the hf engine's copy, filled by
    the weight sync), with its buffers as the model computes them; eval mode."""
    model = meta_model(config, **kw).to(dtype)
    materialize(model, device=device, buffer_device=device)
    return model.eval()


@torch.no_grad()
def fill_from_rank0(models: list[nn.Module], full: dict[str, torch.Tensor] | None, *, device: torch.device) -> None:
    """Copy rank 0's full state dict `full` (None on the other ranks) into every rank's shards of each of `models`
    (same architecture, FSDP2-sharded or plain), one tensor at a time over `device` (the process group's device).

    Collective. Rank 0 first checks that `full` names every parameter and persistent buffer with the right shape;
    a misfit raises `ValueError` on every rank (none is left waiting).
    """
    from torch.distributed.tensor import DTensor, distribute_tensor

    targets = dict(models[0].state_dict(keep_vars=True))  # tied weights: every alias, as a full load sees them
    problem = [None]
    if dist.get_rank() == 0:
        assert full is not None
        missing = [k for k in targets if k not in full]
        wrong = [k for k, t in targets.items() if k in full and tuple(full[k].shape) != tuple(t.shape)]
        if missing or wrong:
            problem = [f"initial weights do not fit the model: missing {missing[:3]}, wrong shape {wrong[:3]}"]
    dist.broadcast_object_list(problem, src=0)
    if problem[0] is not None:
        raise ValueError(problem[0])
    sds = [dict(m.state_dict(keep_vars=True)) for m in models]
    done: set[int] = set()
    for name, target in targets.items():
        if id(target) in done:  # a tied alias: its tensor was filled under its first name
            continue
        done.add(id(target))
        if dist.get_rank() == 0:
            tensor = full[name].to(device=device, dtype=target.dtype).contiguous()  # type: ignore[index]
        else:
            tensor = torch.empty(tuple(target.shape), dtype=target.dtype, device=device)
        dist.broadcast(tensor, src=0)
        for sd in sds:
            dest = sd[name]
            if isinstance(dest, DTensor):
                local = distribute_tensor(tensor, dest.device_mesh, dest.placements, src_data_rank=None).to_local()
                dest.to_local().copy_(local)
            else:
                dest.data.copy_(tensor)
        del tensor


def _initial_weights(cfg: Config, tokenizer: Tokenizer, warm: Path | None) -> dict[str, torch.Tensor]:
    """Rank 0's full initial state dict on the CPU, as the unsharded build made it: `model.path` loaded, or the
    seeded random init (`model.config` / preset); then the warm-start weights `warm`, when given."""
    lm, _ = load_model_and_tokenizer(cfg.model, device="cpu", seed=cfg.seed, tokenizer=tokenizer)
    if warm is not None:
        load_model(lm, str(warm), strict=True)  # raises on a misfit
    return lm.state_dict()


def build_models(
    cfg: Config,
    info: DistInfo,
    tokenizer: Tokenizer,
    run_dir: Path,
    *,
    mixed_precision: bool,
    needs_ref: bool,
) -> Models:
    """The policy and (with `needs_ref`) the frozen reference, sharded and filled with the initial weights; the
    export template; the engine-copy factory. Collective (every rank calls it).

    Raises `ValueError` / `FileNotFoundError` (on every rank) for a model folder or preset that cannot be built.
    """
    m = cfg.model
    config = checked_config(m, tokenizer)
    trust = bool(m.trust_remote_code)
    template = meta_model(config, trust_remote_code=trust)
    if (generation := generation_config(m)) is not None:  # as `from_pretrained` sets it, for the export
        template.generation_config = generation

    offload = bool(getattr(m, "cpu_offload", False))
    shard_device = torch.device("cpu") if offload else info.device
    shards: dict[str, Any] = {"mixed_precision": mixed_precision, "cpu_offload": offload}
    policy = Policy(
        meta_model(config, trust_remote_code=trust), kernels=m.kernels, attn_implementation=m.attn_implementation
    )
    parallelize(policy, info, activation_checkpointing=m.activation_checkpointing, **shards)
    materialize(policy, device=shard_device, buffer_device=info.device)
    ref = None
    if needs_ref:
        ref = Policy(
            freeze(meta_model(config, trust_remote_code=trust)),
            kernels=m.kernels,
            attn_implementation=m.attn_implementation,
        ).eval()
        parallelize(ref, info, activation_checkpointing=False, **shards)
        materialize(ref, device=shard_device, buffer_device=info.device)

    warm = None
    if warm_start.applies(cfg):  # every rank: rank 0 trains a missing cache while the others wait
        warm = warm_start.ensure_cache(config, tokenizer, cfg, run_dir, is_main=info.is_main, device=info.device)
    full, problem, failure = None, [None], None
    if info.is_main:
        try:
            full = {f"lm.{k}": v for k, v in _initial_weights(cfg, tokenizer, warm).items()}
        except Exception as err:  # whatever the load raised: every rank must hear of it, none may wait
            problem, failure = [f"{type(err).__name__}: {err}"], err
    dist.broadcast_object_list(problem, src=0)
    if failure is not None:
        raise failure
    if problem[0] is not None:  # the other ranks: rank 0's message (input_errors makes a ValueError one line)
        kind, _, message = problem[0].partition(": ")
        raise (FileNotFoundError if kind == "FileNotFoundError" else ValueError)(message)
    fill_from_rank0([policy] + ([ref] if ref is not None else []), full, device=info.device)
    del full

    def make_engine_model(dtype: torch.dtype) -> PreTrainedModel:
        return empty_model(config, device=info.device, dtype=dtype, trust_remote_code=trust)

    return Models(policy=policy, ref=ref, template=template, make_engine_model=make_engine_model)


def build_optimizer(params: Any, optim_cfg: OptimConfig, *, on_device: bool) -> torch.optim.AdamW:
    """AdamW over `params` without whole-model temporaries: the fused kernel when the shards are on a GPU
    (`on_device`), else the per-parameter loop (`foreach=False`), which on the CPU gives the foreach
    implementation's results bit for bit but holds one parameter's temporaries at a time instead of a copy of every
    shard (foreach's `sqrt(exp_avg_sq)` alone is one more model's worth per rank)."""
    kind = {"fused": True} if on_device else {"foreach": False}
    o = optim_cfg
    return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, **kind)
