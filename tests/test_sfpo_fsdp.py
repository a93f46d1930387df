"""`sfpo_update` on a 2-rank gloo FSDP2 model equals the same SFPO steps on one process without FSDP.

Data parallelism as the trainer does it: every minibatch of the global batch is split in halves, one per rank,
each rank's loss is the mean over its half, and FSDP2 averages the two gradients in its reduce-scatter; equal
halves make that average the full minibatch's mean gradient, which is what the single process computes. SFPO's
snapshot and reposition act on each rank's local shards only, so the full parameters must agree.

The reposition runs on the torch backend (`force_backend("torch")`): which backend does the lerp is covered
by test_reposition_fsdp.py; here the subject is SFPO's sequence of steps on sharded parameters.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from _distributed import WORLD_SIZE, run_two_ranks
from _tolerance import PAIR
from torch import nn

INNER_STEPS = 2
ALPHA = 0.8
OUTER_STEPS = 2  # two rollout batches, so the reused snapshot is refreshed once on sharded parameters
TIMEOUT_S = 60.0  # a healthy run takes ~5 s; a hung collective would wait forever
TOL = PAIR["fsdp_sfpo"]  # float32 SGD, 2 ranks vs one process: tests/_tolerance.py gives the reason


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))


def _make_update(model: nn.Module, opt: torch.optim.Optimizer, x_N6: torch.Tensor, y_N3: torch.Tensor):
    """One full update: the minibatch loop over the (local) batch, an optimizer step per minibatch."""

    def update() -> dict[str, float]:
        for x_M6, y_M3 in zip(x_N6.chunk(2), y_N3.chunk(2)):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x_M6), y_M3)
            loss.backward()
            opt.step()
        return {"loss": loss.item()}

    return update


def _local_rows(t_N: torch.Tensor, rank: int) -> torch.Tensor:
    """This rank's half of every minibatch (2 minibatches of 8 rows: rows 4r..4r+3 of each)."""
    return torch.cat([mb.chunk(WORLD_SIZE)[rank] for mb in t_N.chunk(2)])


def _worker(rank: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from fastslow.kernels import snapshot
    from fastslow.kernels._dispatch import force_backend
    from fastslow.sfpo import sfpo_update

    mesh = init_device_mesh("cpu", (WORLD_SIZE,))
    torch.manual_seed(0)  # same initial weights and data on both ranks
    model = _mlp()
    single = _mlp()
    single.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(1)
    x_N6 = torch.randn(16, 6, generator=gen)
    y_N3 = torch.randn(16, 3, generator=gen)

    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    params = list(model.parameters())
    assert all(isinstance(p, DTensor) for p in params)

    def sgd(ps: list[torch.Tensor]) -> torch.optim.Optimizer:
        return torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01)

    opt, opt_single = sgd(params), sgd(list(single.parameters()))
    update = _make_update(model, opt, _local_rows(x_N6, rank), _local_rows(y_N3, rank))
    update_single = _make_update(single, opt_single, x_N6, y_N3)

    with force_backend("torch"):
        slow = snapshot(params)
        slow_ptr = slow.buffer.data_ptr()
        start = [p.full_tensor() for p in params]
        for _ in range(OUTER_STEPS):
            sfpo_update(params, update, inner_steps=INNER_STEPS, alpha=ALPHA, slow=slow)
            sfpo_update(single.parameters(), update_single, inner_steps=INNER_STEPS, alpha=ALPHA)
    assert slow.buffer.data_ptr() == slow_ptr

    names = [n for n, _ in model.named_parameters()]
    for name, p, p_single, p0 in zip(names, params, single.parameters(), start, strict=True):
        full = p.full_tensor()  # a collective: both ranks take every branch
        assert not torch.allclose(full, p0), f"{name} did not move"
        torch.testing.assert_close(full, p_single.detach(), **TOL, msg=lambda m, n=name: f"rank {rank} {n}: {m}")
    dist.barrier()


@pytest.mark.distributed
@pytest.mark.timeout(2 * TIMEOUT_S)  # backstop; run_two_ranks fails sooner, and kills the ranks
def test_sfpo_fsdp2_matches_single_process() -> None:
    run_two_ranks(_worker, timeout_s=TIMEOUT_S)
