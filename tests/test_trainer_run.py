"""End to end: 2-process gloo runs of every algorithm, and checkpoint -> resume reproducing the uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "optim.total_steps=3", "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=8",
    "optim.micro_batch_size=8", "logging.tensorboard=false", "checkpoint.export_hf=false", "rollout.max_chunks=16",
    "eval.enabled=false",  # tests/test_eval.py turns it on; these tests read metrics.jsonl as training rows only
    "warm_start.mode=off",  # the mechanics on random weights; test_default_runs_of_each_algorithm warm-starts
    "logging.plots=false",  # ~3 s of matplotlib a run; test_default_runs_of_each_algorithm draws them once
]  # fmt: skip
# The FAST runs filter with DAPO's bounds: Slow2Fast's first phase keeps only groups above 30% accuracy, which a
# random-init model rarely produces (the filter then stops with its clear error, as it should).
FAST = ("algorithm.filter=dapo",)
METRIC_KEYS = {"reward", "accuracy", "response_length", "actor/pg_loss", "actor/kl", "entropy", "actor/grad_norm"}


def run(tmp: Path, *args: str, nproc: int = 2, timeout: int = 240) -> list[dict]:
    """`torchrun -m trainer.main` in a subprocess (compiled kernels path: no Triton interpreter); its metrics."""
    env = dict(os.environ, TRITON_INTERPRET="0", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "trainer.main", f"logging.run_dir={tmp}", *SMALL, *args,
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    return [json.loads(line) for line in (tmp / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def warm_cache(tmp_path_factory) -> Path:
    """One warm-start cache for the session: the first run of each setting trains it, the others load it."""
    return tmp_path_factory.mktemp("warm_start")


# A short warm start (30 steps, ~2 s once): enough for the format, so that a correctness-only reward has a signal
# (a random-weights model never writes an <answer> tag).
SHORT_WARM_START = ("warm_start.mode=auto", "warm_start.steps=30")


@pytest.mark.distributed
@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    """4 steps straight vs 2 steps, stop, resume for 2 more: the last two steps' metrics are equal (with activation
    checkpointing, which must not change a number)."""
    args = ("--config", "fast_sfpo", *FAST, "model.activation_checkpointing=true")
    args = (*args, "optim.total_steps=4")
    straight = run(tmp_path / "straight", *args)
    run(tmp_path / "split", *args[:-1], "optim.total_steps=2")
    resumed = run(tmp_path / "split", *args, "--resume", "auto")
    assert len(resumed) == 4
    skip = {"time", "tokens_per_s", "sync/seconds"}
    for a, b in zip(straight[2:], resumed[2:]):
        for k in a:
            if k.startswith(("time", "sys/", "mem")) or k in skip:
                continue
            assert a[k] == b[k], (k, a[k], b[k])


@pytest.mark.distributed
def test_batch_not_divisible_by_world_size_is_a_config_error(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="0", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "trainer.main", f"logging.run_dir={tmp_path}", "rollout.prompts_per_step=3",
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "config error: rollout.prompts_per_step = 3: must be divisible by the number of processes (2)" in out.stderr
    assert "exitcode  : 2" in out.stderr  # the workers' own status, as torchrun reports it
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.distributed
@pytest.mark.slow
def test_importance_sampling_correction_against_the_engine(tmp_path):
    """rollout.is_correction: the engine returns its log-probs; on CPU fp32 they equal the trainer's (weights 1)."""
    # GRPO with a fixed KL (a reference model): the FAST runs cover the per-group coefficients
    kl = ("algorithm.kl_coef=0.01",)
    lines = run(tmp_path, "rollout.is_correction=true", "rollout.is_cap=2.0", "rollout.temperature=0.8", *kl)
    assert len(lines) == 3
    for line in lines:
        assert line["rollout/logp_abs_diff"] < 1e-4, line
        assert abs(line["rollout/is_weight"] - 1.0) < 1e-4 and line["rollout/is_capped"] == 0.0, line


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "fast_grpo", "sfpo", "fast_sfpo"])
def test_default_runs_of_each_algorithm(tmp_path, warm_cache, algorithm):
    """The built-in job as shipped (warm start, Slow2Fast for FAST, eval), cut to 2 steps: every mechanism has
    something to act on from the first step, every metric is there and finite, and the run is checkpointed."""
    env = dict(os.environ, TRITON_INTERPRET="0", OMP_NUM_THREADS="1")
    # The grpo run also draws its plots/ and logs to a stand-in wandb (tests/_fake_wandb, found on PYTHONPATH).
    wandb_log = tmp_path.parent / f"{tmp_path.name}-wandb.jsonl"
    outputs = ("logging.plots=false",)
    preset = () if algorithm == "grpo" else ("--config", algorithm)  # grpo: the defaults
    if algorithm == "grpo":
        env |= {"PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "_fake_wandb"), env.get("PYTHONPATH", "")])}
        env["FAKE_WANDB_LOG"] = str(wandb_log)
        outputs = ("logging.wandb=true", "logging.wandb_mode=offline")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "trainer.main",
        f"logging.run_dir={tmp_path}", f"warm_start.cache={warm_cache}", *preset,
        "optim.total_steps=2", "eval.synthetic_size=32", "checkpoint.export_hf=false", "logging.tensorboard=false",
        *outputs,
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("kind") != "eval"]
    evals = [r for r in rows if r.get("kind") == "eval"]
    assert [r["step"] for r in evals] == [0, 2] and len(train) == 2
    first = evals[0]
    # Mixed difficulty: neither solved nor hopeless, easy levels above hard ones, and lengths in between a direct
    # answer (4 tokens) and a full thought (12).
    assert 0.3 < first["eval/synthetic/avg@4"] < 0.95
    assert first["eval/synthetic/level_1/avg@4"] > first["eval/synthetic/level_5/avg@4"]
    assert 5.0 < first["eval/synthetic/length"] < 12.0
    for r in train:
        assert set(r) >= METRIC_KEYS, METRIC_KEYS - set(r)
        assert all(v == v for v in r.values() if isinstance(v, float)), r  # no NaN
        assert r["actor/grad_norm"] > 0 and r["actor/skipped_updates"] == 0  # the parameters moved
        assert 0.2 < r["accuracy"] < 1.0
    if algorithm.endswith("sfpo"):
        assert train[0]["sfpo"] == 1.0
    assert (tmp_path / "config.toml").exists() and any((tmp_path / "checkpoints").glob("step_*"))
    if algorithm.startswith("fast"):  # Slow2Fast's first band keeps groups from step 1, without a top-up
        assert train[0]["rollout/filled_groups"] == 0.0 and train[0]["rollout/kept_groups"] == 8.0
    assert "held-out accuracy" in out.stdout
    if algorithm == "grpo":  # the same rows in wandb (rank 0 only), and the plots drawn when the run ended
        calls = [json.loads(line) for line in wandb_log.read_text().splitlines()]
        assert [c["call"] for c in calls] == ["init", *["log"] * len(rows), "finish"]
        axes = ("step", "time", "kind")
        expected = [{k: v for k, v in r.items() if k not in axes and v is not None} for r in rows]
        assert [c["data"] for c in calls[1:-1]] == expected and calls[0]["dir"] == str(tmp_path)
        plots = {p.name for p in (tmp_path / "plots").iterdir()}
        assert {"overview.png", "accuracy.png", "eval_synthetic_avg@4.png"} <= plots, plots


@pytest.mark.distributed
@pytest.mark.slow
def test_a_dry_filter_tops_the_batch_up(tmp_path, warm_cache):
    """One chunk per step and DAPO's bounds: steps the filter cannot fill train on a topped-up, full batch."""
    warm = (*SHORT_WARM_START, f"warm_start.cache={warm_cache}")
    lines = run(tmp_path, "algorithm.filter=dapo", "rollout.max_chunks=1", *warm)
    assert len(lines) == 3
    for line in lines:
        assert line["rollout/kept_groups"] + line["rollout/filled_groups"] == 2.0  # per rank: 4 prompts, 2 ranks
    assert any(line["rollout/filled_groups"] > 0 for line in lines)
