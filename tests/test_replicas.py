"""Replicas (`parallel.replicate` = the world size): each rank keeps the plain module, as DDP does, and
`trainer.dist.average_gradients` averages the gradients once per optimizer step (issue 28)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests._distributed import run_two_ranks
from tests.test_scale import ENV, ROOT, SMALL
from trainer.dist import replicated


def test_replicated_means_shards_of_one_rank() -> None:
    def info(world: int, shape: tuple[int, ...]) -> SimpleNamespace:
        return SimpleNamespace(world=world, mesh=SimpleNamespace(ndim=len(shape), shape=shape))

    assert replicated(info(1, (1,)))
    assert replicated(info(2, (2, 1))) and replicated(info(4, (4, 1)))
    assert not replicated(info(2, (2,)))  # FSDP over both
    assert not replicated(info(4, (2, 2))) and not replicated(info(2, (1, 2)))  # HSDP


def _average_worker(rank: int) -> None:
    import torch.distributed as dist

    from trainer.dist import average_gradients

    # float32 [3], float64 [5], float32 [4], float32 [2] (this one with a gradient on rank 1 only), one frozen
    params = [torch.nn.Parameter(torch.zeros(n, dtype=dt)) for n, dt in ((3, torch.float32), (5, torch.float64))]
    params += [torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(2))]
    frozen = torch.nn.Parameter(torch.zeros(2), requires_grad=False)
    for p in params[:3]:
        p.grad = torch.arange(p.numel(), dtype=p.dtype) * (rank + 1) + 10 * rank
    if rank == 1:
        params[3].grad = torch.arange(2.0) * 2 + 10  # rank 0 takes part with zeros
    calls = average_gradients([*params, frozen], bucket_bytes=24)
    assert calls == 3  # float32: [3] alone (12 + 16 > 24 bytes), then [4] and [2] (24 bytes); float64: [5]
    for p in params[:3]:
        want = (torch.arange(p.numel(), dtype=p.dtype) * 3 + 10) / 2  # the mean of rank 0's and rank 1's
        assert torch.equal(p.grad, want)
    assert torch.equal(params[3].grad, (torch.arange(2.0) * 2 + 10) / 2)
    assert frozen.grad is None
    got = [torch.zeros(1) for _ in range(2)]
    dist.all_gather(got, params[0].grad[:1].contiguous())
    assert torch.equal(got[0], got[1])


@pytest.mark.distributed
def test_average_gradients_over_two_ranks() -> None:
    run_two_ranks(_average_worker, timeout_s=120)


def _run(run_dir: Path, tmp_path: Path, steps: int, *extra: str) -> list[dict]:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "trainer.main",
        f"logging.run_dir={run_dir}", f"warm_start.cache={tmp_path / 'warm'}", *SMALL, f"optim.total_steps={steps}",
        *extra,
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


KEYS = ("reward", "actor/pg_loss", "actor/kl", "actor/ratio", "actor/clip_frac", "entropy", "actor/grad_norm")


@pytest.mark.distributed
@pytest.mark.slow
def test_replicas_train_as_fsdp_and_resume_as_fsdp(tmp_path: Path) -> None:
    """2 ranks, SFPO with a reference model: the replicas' first step equals FSDP2's (same rollouts, the same
    losses and gradient norm up to fp32 rounding); the replicas' checkpoint resumes as FSDP2 (DCP reshards the
    plain tensors every rank saved) and its second step matches the replicas' own second step. (FSDP2 shards
    loading into plain modules is the 2 -> 1 process resume of tests/test_resume_any_world.py.)"""
    replicas = _run(tmp_path / "replicas", tmp_path, 2, "parallel.replicate=2", "checkpoint.every=1")
    fsdp = _run(tmp_path / "fsdp", tmp_path, 1)
    assert replicas[0]["actor/grad_norm"] > 0
    for key in KEYS:
        assert replicas[0][key] == pytest.approx(fsdp[0][key], rel=1e-5, abs=1e-6), key
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "replicas", resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_00000002")  # back to the state after step 1
    (resumed / "checkpoints" / "latest").write_text("step_00000001\n")
    (resumed / "metrics.jsonl").write_text(json.dumps(replicas[0]) + "\n")
    as_fsdp = _run(resumed, tmp_path, 2, "--resume", "auto")
    assert [r["step"] for r in as_fsdp] == [1, 2]
    for key in KEYS:  # step 2 from the same weights, in the other layout
        assert as_fsdp[1][key] == pytest.approx(replicas[1][key], rel=1e-4, abs=1e-5), key
