"""Packed == padded on 2 gloo ranks under FSDP2: log-probs, entropy, update metrics and gradients, every loss_agg.

Deliberately uneven: rank 0's answers are a few tokens, rank 1's ten times longer, one of them over the row budget
(a row of its own), and rank 0 holds an empty response. Rank 1 then needs more rows than rank 0, which gets empty
rows so that both make the same number of forwards and backwards (a mismatch would hang FSDP's collectives). Two
minibatches, so the balancing runs per minibatch; the padded side uses micro-batches of 2 sequences.

The kernels run on the torch backend: their Triton path is covered on packed rows by test_grpo_seq_ids.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from _distributed import run_two_ranks

TIMEOUT_S = 120.0  # a healthy run takes ~10 s on 2 loaded cores
BUDGET = 32
# float32 on both sides; the sums run in another order (rows vs padded micro-batches): ulps, far below 1e-5.
TOL = {"atol": 1e-5, "rtol": 1e-5}


class _Capture:
    """An optimizer that records the full gradients instead of stepping (both ranks call it together)."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        self.params, self.grads = params, []

    def step(self) -> None:
        self.grads.append([p.grad.full_tensor().clone() for p in self.params])

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None


def _batch(rank: int):
    from trainer.batch import Group, make_batch
    from trainer.rollout.base import Completion

    g = torch.Generator().manual_seed(10 + rank)
    lengths = [3, 0, 2, 4, 1, 3, 2, 4] if rank == 0 else [30, 20, 40, 25, 35, 22, 28, 26]
    comps = [Completion(torch.randint(4, 40, (n,), generator=g).tolist()) for n in lengths]
    groups = [Group([1, 5 + k, 6, 7], comps[2 * k : 2 * k + 2], *[torch.zeros(2)] * 3) for k in range(4)]
    return make_batch(groups, 0, torch.device("cpu"))


def _worker(rank: int) -> None:
    from _tiny import tiny_lm
    from torch.distributed.device_mesh import init_device_mesh

    from fastslow.kernels import LOSS_AGGS
    from fastslow.kernels._dispatch import force_backend
    from trainer.dist import DistInfo, parallelize
    from trainer.packing import pack_batch
    from trainer.policy import Policy
    from trainer.step import logprobs, update

    info = DistInfo(rank, 2, rank, torch.device("cpu"), init_device_mesh("cpu", (2,)))
    policy = Policy(tiny_lm(0))  # the same weights on both ranks
    parallelize(policy, info, mixed_precision=False, activation_checkpointing=False)
    batch = _batch(rank)
    B = batch.input_ids.shape[0]
    g = torch.Generator().manual_seed(rank)
    adv, kl_coef = torch.randn(B, generator=g), torch.rand(B, generator=g) * 0.05

    def ctx(loss_agg: str, packing: bool) -> SimpleNamespace:
        cfg = SimpleNamespace(
            algorithm=SimpleNamespace(
                clip_low=0.2, clip_high=0.28, dual_clip=3.0, loss_agg=loss_agg, entropy_coef=0.01
            ),
            optim=SimpleNamespace(
                epochs=1, minibatches=2, micro_batch_size=2, grad_clip=0.0, packing=packing,
                micro_batch_tokens=BUDGET,
            ),
            rollout=SimpleNamespace(temperature=0.9),
        )  # fmt: skip
        return SimpleNamespace(cfg=cfg, info=info, policy=policy, optimizer=_Capture(list(policy.parameters())))

    with force_backend("torch"):
        packed = pack_batch(ctx("token-mean", True).cfg.optim, batch, info.device)
        rows = [len(mb) for mb in packed.minibatches]
        assert rows == [4, 4], rows  # rank 1: 4 answers per minibatch, each over half the budget; rank 0: 1 row + 3
        assert sum(not r.members for r in packed.rows) == (6 if rank == 0 else 0)
        logp, ent = logprobs(policy, batch, 2, 0.9)
        logp_p, ent_p = logprobs(policy, batch, 2, 0.9, packed)
        m = batch.mask
        torch.testing.assert_close(logp_p[m], logp[m], **TOL)
        torch.testing.assert_close(ent_p[m], ent[m], **TOL)
        old, ref = (logp + 0.1 * torch.randn(logp.shape, generator=g)).masked_fill(~m, 0.0), logp - 0.05
        for loss_agg in LOSS_AGGS:
            results = []
            for on in (False, True):
                c = ctx(loss_agg, on)
                metrics = update(c, batch, old, ref, adv, kl_coef, packed if on else None)
                results.append((metrics, c.optimizer.grads))
            (m0, g0), (m1, g1) = results
            assert m0.keys() == m1.keys()
            for k in m0:
                torch.testing.assert_close(torch.tensor(m1[k]), torch.tensor(m0[k]), **TOL, msg=f"{loss_agg} {k}")
            assert len(g0) == len(g1) == 2
            for step0, step1 in zip(g0, g1, strict=True):
                for a, b in zip(step0, step1, strict=True):
                    scale = max(a.abs().max().item(), 1e-12)
                    torch.testing.assert_close(b, a, atol=TOL["atol"] * scale, rtol=TOL["rtol"])


@pytest.mark.distributed
def test_packed_update_equals_padded_on_two_ranks() -> None:
    run_two_ranks(_worker, timeout_s=TIMEOUT_S)
