"""The GPU's dtype path on a CPU: `model.dtype = "bfloat16"` runs FSDP2 mixed precision on gloo, end to end.

On a GPU the trainer gathers parameters in bf16 and reduces gradients in fp32 (FSDP2 `MixedPrecisionPolicy`),
generates with a bf16 engine and exports bf16 weights. `model.dtype = "bfloat16"` takes the same path on a CPU
(the default, "auto", stays float32 there), so the first GPU run does not meet that code for the first time.
torch's gloo backend does all of it: the bf16 all-gather of the parameters and the fp32 reduce-scatter of the
gradients.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import _tiny
import pytest
import torch
import torch.distributed as dist
from _distributed import run_two_ranks

ROOT = Path(__file__).resolve().parents[1]


def _mixed_precision_rank(rank: int) -> None:
    """One rank: the tiny policy under FSDP2 with and without mixed precision, one loss and backward each."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from trainer.dist import DistInfo, parallelize
    from trainer.objective import LossArgs
    from trainer.policy import Policy

    info = DistInfo(rank=rank, world=2, local_rank=rank, device=torch.device("cpu"),
                    mesh=init_device_mesh("cpu", (2,)))  # fmt: skip
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 40, (3, 9), generator=g)
    targets = torch.cat([ids[:, 1:-1], torch.full((3, 1), -100)], dim=1)
    mask = (targets != -100).float()
    loss_args = LossArgs(old_logp=torch.full((3, 8), -3.0), advantages=torch.tensor([1.0, -0.5, 0.25]), mask=mask)
    losses, seen = {}, {}
    for mixed in (False, True):
        policy = Policy(_tiny.tiny_lm(seed=0))
        parallelize(policy, info, mixed_precision=mixed, activation_checkpointing=False)
        hook = policy.lm.model.layers[0].register_forward_hook(
            lambda m, a, out, key=mixed: seen.__setitem__(key, (out[0] if isinstance(out, tuple) else out).dtype)
        )
        loss, _ = policy.loss(ids, torch.ones_like(ids), targets, loss_args)
        loss.backward()
        hook.remove()
        losses[mixed] = loss.detach().float()
        for name, p in policy.named_parameters():
            assert isinstance(p, DTensor) and p.dtype == torch.float32, name  # fp32 master weights, sharded
            assert p.grad is not None and p.grad.dtype == torch.float32, name  # reduced in fp32
            assert torch.isfinite(p.grad.to_local()).all(), name
    assert seen == {False: torch.float32, True: torch.bfloat16}  # the blocks computed in bf16 only when mixed
    # bf16 activations: the loss moves by bf16 rounding, not more (8 bits of mantissa, a few layers deep)
    torch.testing.assert_close(losses[True], losses[False], atol=2e-2, rtol=2e-2)
    both = [torch.zeros(2), torch.zeros(2)]
    dist.all_gather(both, torch.stack([losses[False], losses[True]]))
    assert torch.equal(both[0], both[1])  # every rank computed the same loss from the same batch


@pytest.mark.distributed
def test_fsdp2_mixed_precision_policy_on_gloo() -> None:
    run_two_ranks(_mixed_precision_rank, timeout_s=180.0)


@pytest.mark.distributed
@pytest.mark.slow
def test_bfloat16_run_on_cpu_trains_and_exports_bf16(tmp_path: Path) -> None:
    """2-process gloo run with `model.dtype = "bfloat16"`: finite training steps, a bf16 hf engine, bf16 export."""
    from safetensors import safe_open

    env = dict(os.environ, TRITON_INTERPRET="0", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "trainer.main",
        f"logging.run_dir={tmp_path}", "model.dtype=bfloat16", "optim.total_steps=2", "rollout.prompts_per_step=4",
        "rollout.group_size=4", "rollout.max_new_tokens=8", "optim.micro_batch_size=8", "logging.tensorboard=false",
        "checkpoint.export_hf=true", "rollout.max_chunks=16", "eval.enabled=false", "warm_start.mode=off",
        "algorithm.kl_coef=0.01", "logging.plots=false",
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    for line in lines:
        assert all(v == v for v in line.values() if isinstance(v, float)), line  # no NaN
        assert line["actor/grad_norm"] > 0 and line["actor/skipped_updates"] == 0
    files = sorted((tmp_path / "hf").glob("*.safetensors"))
    assert files
    for file in files:
        with safe_open(str(file), "pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
        assert dtypes == {"BF16"}, (file, dtypes)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
