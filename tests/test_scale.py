"""Scale (issue 18): CPU offload, HSDP (2 x 2 on gloo), resume across layouts, two torchrun launchers (--nnodes 2).

On a CPU the offload policy moves nothing (the shards already live on the host): what runs here is the wiring
(FSDP2's `CPUOffloadPolicy` on every unit, the optimizer and SFPO's snapshot and reposition on host shards, the
native kernel chosen for them) and that a run with it trains and checkpoints as one without. Pinned host memory,
the per-unit host-to-device copies and their overlap need a GPU (`make gpu-check`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests._distributed import free_port
from trainer.config import ConfigError, from_dict
from trainer.dist import mesh_shape

ROOT = Path(__file__).resolve().parents[1]
SMALL = (
    "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=8", "optim.micro_batch_size=8",
    "logging.tensorboard=false", "checkpoint.export_hf=false", "eval.enabled=false", "algorithm.update=sfpo",
    "algorithm.kl_coef=0.01", "model.num_layers=1", "warm_start.steps=30",  # a warm start: rewards, gradients
)  # fmt: skip
ENV = dict(os.environ, TRITON_INTERPRET="0", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def test_mesh_shape() -> None:
    world = 8
    assert mesh_shape(world) == (8,)
    assert mesh_shape(world, from_dict({}).parallel) == (8,)
    assert mesh_shape(world, from_dict({"parallel": {"replicate": 2}}).parallel) == (2, 4)
    assert mesh_shape(world, from_dict({"parallel": {"replicate": 4, "shard": 2}}).parallel) == (4, 2)
    with pytest.raises(ConfigError, match=r"parallel\.replicate = 3: must divide the number of processes \(8\)"):
        mesh_shape(world, from_dict({"parallel": {"replicate": 3}}).parallel)
    with pytest.raises(ConfigError, match=r"parallel\.replicate = 2 x parallel\.shard = 2 = 4: must equal"):
        mesh_shape(world, from_dict({"parallel": {"replicate": 2, "shard": 2}}).parallel)
    for bad in (0, 1e-7, 1e15):  # 1e15 overflowed timedelta, 1e-7 timed out while the group formed
        with pytest.raises(ConfigError, match=r"parallel\.timeout_s = .*: must be in \[10, 1e\+06\] seconds"):
            from_dict({"parallel": {"timeout_s": bad}})


def test_offloaded_shards_optimizer_and_sfpo_state_live_on_the_host(
    group_of_one, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch.distributed.fsdp import CPUOffloadPolicy

    from fastslow.kernels import snapshot
    from fastslow.kernels._dispatch import backend_for, native_available
    from tests.test_build import _info
    from trainer.model.build import build_models
    from trainer.model.load import load_tokenizer

    cfg = from_dict({"model": {"cpu_offload": True, "num_layers": 1}, "warm_start": {"mode": "off"}})
    built = build_models(cfg, _info(), load_tokenizer(cfg.model), tmp_path, mixed_precision=False, needs_ref=True)
    for model in (built.policy, built.ref):
        units = [m for m in model.modules() if hasattr(m, "_get_fsdp_state")]
        assert len(units) == 2  # the decoder block and the root
        for unit in units:
            assert isinstance(unit._get_fsdp_state()._fsdp_param_group.offload_policy, CPUOffloadPolicy)
    shards = [p.to_local() for p in built.policy.parameters()]
    assert all(s.device.type == "cpu" for s in shards)
    assert snapshot(built.policy.parameters()).buffer.device.type == "cpu"  # the slow weights: on the host
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # as a run has it: Triton for CUDA tensors only
    assert backend_for(shards[0].device, has_native=True) == ("native" if native_available() else "torch")


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _check(out: subprocess.CompletedProcess) -> None:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]


@pytest.mark.distributed
@pytest.mark.slow
def test_hsdp_offload_then_resume_on_another_layout_from_two_launchers(tmp_path: Path) -> None:
    """4 ranks as 2 x 2 (HSDP, offloaded) train a step and save; then two torchrun launchers (`--nnodes 2`,
    c10d rendezvous on the loopback, 2 ranks each) resume that checkpoint as 1 x 4 (plain FSDP) for a second step."""
    run_dir = tmp_path / "run"
    common = (f"logging.run_dir={run_dir}", f"warm_start.cache={tmp_path / 'warm'}", *SMALL)
    first = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m", "trainer.main",
        *common, "optim.total_steps=1", "parallel.replicate=2", "model.cpu_offload=true",
    ]  # fmt: skip
    _check(subprocess.run(first, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300))
    (step1,) = _metrics(run_dir)
    assert step1["actor/grad_norm"] > 0 and step1["sfpo"] == 1.0  # gradients flowed through both mesh dimensions

    port = free_port()
    second = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=2", "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=test_scale", "-m", "trainer.main", *common,
        "optim.total_steps=2", "parallel.timeout_s=120", "--resume", "auto",
    ]  # fmt: skip
    nodes = [subprocess.Popen(second, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    nodes.append(subprocess.Popen(second, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    for node in nodes:
        stdout, stderr = node.communicate(timeout=300)
        outs.append(subprocess.CompletedProcess(second, node.returncode, stdout, stderr))
    for out in outs:
        _check(out)
    said = "".join(out.stdout for out in outs)
    assert "resumed from" in said and "step_00000001 at step 1" in said
    assert "parallel.replicate 2 -> 1" in said and "model.cpu_offload True -> False" in said
    lines = _metrics(run_dir)
    assert [line["step"] for line in lines] == [1, 2] and lines[0] == step1
    assert lines[1]["actor/grad_norm"] > 0 and torch.isfinite(torch.tensor(lines[1]["actor/pg_loss"]))
