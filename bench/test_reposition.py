"""SFPO reposition over a real model's parameter list, one rank's shards: ours against the baselines.

`p <- slow + alpha * (p - slow)` for every parameter, alpha = 0.8, `slow` a `fastslow.kernels.snapshot` of the
parameters.
Providers, on the same parameters and snapshot:
- `ours`: `fastslow.kernels.reposition_` on its automatic backend: one Triton launch on CUDA, the native library
  (`csrc/`) on the CPU where it is built (else the torch loop);
- `ours_torch`: `reposition_` forced onto its torch backend (`reposition_ref`, one tensor at a time, float32 math);
- `foreach_lerp`: `torch._foreach_lerp_(params, slow, 1 - alpha)`, i.e. `p + (1 - alpha) * (slow - p)`: the same
  value in exact arithmetic but not the same rounding (lerp's formula, not ours), so it is a speed reference only;
- `seed_loop`: the SFPO seed's per-parameter loop, `tmp = slow + alpha * (fast - slow); p.data.copy_(tmp)`, in the
  parameters' dtype. (The seed also clones every fast weight first; that copy is left out here, in its favour.)

The parameter list is Qwen2.5-1.5B's (hidden 1536, intermediate 8960, 28 layers, 12 query heads and 2 KV heads of
128 dims, so k/v projections 256 wide, q/k/v biases, RMSNorm weights, a tied 151936-token embedding: 1.54B
parameters), sharded as FSDP2's rank 0 of 8 holds it: each tensor a flat 1-D shard of ceil(numel / 8) elements,
bf16 on a GPU. On the CPU a scaled-down model (2 layers, hidden 256, vocab 8192) in fp32 and bf16; its shards fit
in the CPU's caches, so its GB/s can exceed the copy ceiling (measured on 256 MiB, out of memory).
GB/s counts read p + read slow + write p.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from bench._harness import backend_name, bench_device, dtype_name, ours_backend, run_case
from bench._models import QWEN25_15B, ModelConfig
from fastslow.kernels import reposition_, snapshot
from fastslow.kernels._dispatch import force_backend

ALPHA = 0.8
WORLD = 8


QWEN25_MINI = ModelConfig("qwen2.5-mini", 256, 1536, 2, 8, 2, 32, 8192)

DEVICE = bench_device()
ON_GPU = DEVICE.type == "cuda"
CONFIGS = [(QWEN25_15B, torch.bfloat16)] if ON_GPU else [(QWEN25_MINI, torch.float32), (QWEN25_MINI, torch.bfloat16)]
PROVIDERS = ("ours", "ours_torch", "foreach_lerp", "seed_loop")


def _marks(provider: str) -> list[pytest.MarkDecorator]:
    return [pytest.mark.uses_triton] if ON_GPU and provider == "ours" else []


CASES = [
    pytest.param(p, cfg, dtype, id=f"{p}-{cfg.name}-rank0of{WORLD}-{dtype_name(dtype)}", marks=_marks(p))
    for cfg, dtype in CONFIGS
    for p in PROVIDERS
]


def rank_shards(cfg: ModelConfig, dtype: torch.dtype, device: torch.device) -> list[torch.nn.Parameter]:
    """One rank's flat shards of every parameter: ceil(numel / WORLD) elements each (FSDP2 pads the last rank)."""
    out = []
    for shape in cfg.param_shapes():
        numel = 1
        for d in shape:
            numel *= d
        n = -(-numel // WORLD)
        out.append(torch.nn.Parameter(torch.randn(n, device=device, dtype=torch.float32).to(dtype) * 0.02))
    return out


@pytest.mark.parametrize(("provider", "cfg", "dtype"), CASES)
def test_reposition(
    benchmark: Any, device: torch.device, ceil: dict, provider: str, cfg: ModelConfig, dtype: torch.dtype
) -> None:
    """In-place reposition of every shard toward the snapshot."""
    params = rank_shards(cfg, dtype, device)
    slow = snapshot(params)
    slow_list = list(slow)
    with torch.no_grad():  # the fast weights: moved away from the snapshot, as the inner steps would
        for p in params:
            p.add_(torch.randn_like(p) * 1e-3)
    extra: dict[str, Any] = {
        "model": cfg.name,
        "world": WORLD,
        "n_tensors": len(params),
        "numel": sum(p.numel() for p in params),
        "alpha": ALPHA,
    }

    if provider == "ours":

        def step() -> None:
            with ours_backend(device, has_native=True):
                reposition_(params, slow, ALPHA)

        extra["backend"] = backend_name(device, has_native=True)
    elif provider == "ours_torch":

        def step() -> None:
            with force_backend("torch"):
                reposition_(params, slow, ALPHA)

        extra["backend"] = "torch"
    elif provider == "foreach_lerp":

        def step() -> None:
            # lerp(p, slow, 1 - alpha) = p + (1 - alpha) * (slow - p): same value, different rounding from ours.
            with torch.no_grad():
                torch._foreach_lerp_(params, slow_list, 1.0 - ALPHA)

    else:

        def step() -> None:
            with torch.no_grad():
                for p, s in zip(params, slow_list):
                    tmp = s + ALPHA * (p - s)
                    p.data.copy_(tmp)

    bytes_moved = sum(p.numel() * (2 * p.element_size() + s.element_size()) for p, s in zip(params, slow_list))
    run_case(
        benchmark, step, group="reposition", provider=provider, shape=f"{cfg.name}-rank0of{WORLD}",
        dtype=dtype_name(dtype), mode="inplace", device=device, bytes_moved=bytes_moved, extra=extra,
    )  # fmt: skip
