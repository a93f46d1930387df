"""`snapshot` + `reposition_` on FSDP2 parameters: 2 gloo ranks on CPU, mixed dtypes, a zero-size shard.

Two freshly spawned processes check every backend there is (torch, Triton, native). They set
`TRITON_INTERPRET=1` before importing `fastslow.kernels`, since Triton decides at import whether `@triton.jit` builds an
interpreted kernel; so nothing here imports `fastslow.kernels` at the top (the children import this module).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest
import torch
import torch.distributed as dist
from _distributed import WORLD_SIZE, run_two_ranks
from _tolerance import REPOSITION
from torch import nn

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

ALPHA = 0.8
TIMEOUT_S = 120.0  # a healthy run takes ~10 s on 2 cores; a hung collective would wait forever

TOL = REPOSITION  # by dtype, with the reasons, in tests/_tolerance.py


class _Net(nn.Module):
    """fp32 Linear -> bf16 Linear, times a [1, 5] parameter whose dim 0 leaves rank 1 an empty shard."""

    def __init__(self) -> None:
        super().__init__()
        self.lin1 = nn.Linear(16, 24)
        self.lin2 = nn.Linear(24, 8).to(torch.bfloat16)
        self.scale = nn.Parameter(torch.randn(1, 5))

    def forward(self, x_B16: torch.Tensor) -> torch.Tensor:
        h_B24 = torch.relu(self.lin1(x_B16))
        y_B8 = self.lin2(h_B24.to(torch.bfloat16)).float()
        return y_B8[:, :5] * self.scale


def _lerp(slow: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
    """The reference: float32 math, stored in the param's dtype."""
    return (slow.float() + ALPHA * (fast.float() - slow.float())).to(fast.dtype)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, *, backend: str, what: str) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, what
    tol = TOL[actual.dtype]
    torch.testing.assert_close(actual, expected, **tol, msg=lambda m: f"{what}: {m}")


def _check_backend(backend: str, *, rank: int, mesh: DeviceMesh) -> None:
    """One fresh FSDP2 model: snapshot, perturb, reposition on `backend`, compare, then train a step."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Shard

    from fastslow.kernels import reposition_, snapshot
    from fastslow.kernels._dispatch import force_backend

    torch.manual_seed(0)  # same initial weights on both ranks
    model = _Net()
    # Submodules first, then the root (which keeps only `scale`): one dtype per FSDP group.
    fully_shard(model.lin1, mesh=mesh)
    fully_shard(model.lin2, mesh=mesh)
    fully_shard(model, mesh=mesh)
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())

    assert all(isinstance(p, DTensor) for p in params)
    placements = [p.placements for p in params]
    assert all(pl == (Shard(0),) for pl in placements), placements
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert dtypes["lin1.weight"] == torch.float32 and dtypes["lin2.weight"] == torch.bfloat16
    scale_local = model.scale.to_local()
    assert scale_local.shape == ((1, 5) if rank == 0 else (0, 5)), scale_local.shape
    local_ptrs = [p.to_local().data_ptr() for p in params]

    before_full = [p.full_tensor() for p in params]
    slow = snapshot(model.parameters())
    slow_local = [s.clone() for s in slow]
    for name, s, p in zip(names, slow_local, params, strict=True):
        assert torch.equal(s, p.to_local()), f"snapshot of {name}"

    gen = torch.Generator().manual_seed(1000 + rank)
    with torch.no_grad():
        for p in params:
            local = p.to_local()
            local.add_(torch.randn(local.shape, generator=gen).to(local.dtype))
    fast_local = [p.to_local().clone() for p in params]
    fast_full = [p.full_tensor() for p in params]
    assert not torch.equal(fast_full[0], before_full[0]), "the perturbation did not reach the parameter"

    with force_backend(backend):
        reposition_(params, slow, alpha=ALPHA)

    for i, (name, p) in enumerate(zip(names, params, strict=True)):
        where = f"{backend}, rank {rank}, {name}"
        assert isinstance(p, DTensor) and p.placements == placements[i], where
        assert p.to_local().data_ptr() == local_ptrs[i], f"{where}: local shard was reallocated"
        expected_local = _lerp(slow_local[i], fast_local[i])
        _assert_close(p.to_local(), expected_local, backend=backend, what=f"{where} local shard")
        expected_full = _lerp(before_full[i], fast_full[i])
        _assert_close(p.full_tensor(), expected_full, backend=backend, what=f"{where} full tensor")
        assert torch.equal(slow[i], slow_local[i]), f"{where}: reposition_ wrote to the snapshot"

    # Training goes on: FSDP2 still all-gathers, reduce-scatters and steps the repositioned shards.
    after = [p.full_tensor() for p in params]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x_B16 = torch.randn(4, 16, generator=gen)
    model(x_B16).square().mean().backward()
    for name, p in zip(names, params, strict=True):
        assert isinstance(p.grad, DTensor), name
        assert p.grad.to_local().shape == p.to_local().shape, name
        assert torch.isfinite(p.grad.to_local()).all(), name
    opt.step()
    opt.zero_grad()
    for name, p, a in zip(names, params, after, strict=True):
        assert not torch.equal(p.full_tensor(), a), f"{backend}: SGD did not move {name}"
    assert torch.isfinite(model(x_B16)).all()


def _worker(rank: int) -> None:
    # Before `kernels` is imported: the Triton kernel must be built as an interpreted one.
    os.environ["TRITON_INTERPRET"] = "1"

    from torch.distributed.device_mesh import init_device_mesh

    from fastslow.kernels._dispatch import native_available
    from fastslow.kernels._triton import HAS_TRITON

    # Every backend in one process pair: spawning and importing cost more than the checks themselves.
    backends = ["torch", *(["triton"] if HAS_TRITON else []), *(["native"] if native_available() else [])]
    mesh = init_device_mesh("cpu", (WORLD_SIZE,))
    for backend in backends:
        _check_backend(backend, rank=rank, mesh=mesh)
    dist.barrier()
    if rank == 0:
        print(f"checked backends: {backends}")  # shown with pytest -s


@pytest.mark.distributed
@pytest.mark.timeout(2 * TIMEOUT_S)  # backstop; run_two_ranks fails sooner, and kills the ranks
def test_reposition_fsdp2_local_shards() -> None:
    run_two_ranks(_worker, timeout_s=TIMEOUT_S)
