"""Asynchronous rollouts (trainer/async_rollout.py, `rollout.max_staleness`): the pipeline against a recording
engine (versions, staleness bound, syncs only between requests, the synchronous run's prompts and seeds, state
round trip, failures in one line), the config refusals, and a trainer run that overlaps and resumes exactly."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from trainer.async_rollout import RolloutPipeline, RolloutThreadError, overlap_note, overlap_problem, take_step
from trainer.config import from_dict
from trainer.rollout import Completion, SamplingParams

ROOT = Path(__file__).resolve().parents[1]


class Recorder:
    """An engine that logs each request's start and end and each weight load, with a busy flag."""

    def __init__(self, delay: float = 0.02, fail_at: int | None = None) -> None:
        self.events: list[tuple[str, int]] = []
        self.busy = False
        self.delay, self.fail_at, self.calls = delay, fail_at, 0
        self.weights = 0

    def generate(self, prompt_ids, sampling):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise ValueError("the engine broke")
        self.busy = True
        self.events.append(("start", sampling.seed))
        time.sleep(self.delay)
        self.events.append(("end", sampling.seed))
        self.busy = False
        return [[Completion([p[-1] + 1, self.weights])] for p in prompt_ids]

    def load(self) -> dict[str, float]:
        assert not self.busy, "a weight sync ran in the middle of a generation request"
        self.weights += 1
        self.events.append(("sync", self.weights))
        return {"bytes": 0.0}


class Sampler:
    def __init__(self) -> None:
        self.consumed = 0

    def next_chunk(self) -> list[int]:
        start, self.consumed = self.consumed, self.consumed + 2
        return [start % 10, (start + 1) % 10]


def _ctx(engine: Recorder, k: int, total: int = 20) -> SimpleNamespace:
    prompts = [{"prompt_ids": [i, i + 1]} for i in range(10)]
    ctx = SimpleNamespace(
        cfg=SimpleNamespace(optim=SimpleNamespace(total_steps=total)), prompts=prompts, sampler=Sampler(),
        pipeline=RolloutPipeline(engine, k, timeout_s=5.0),
    )  # fmt: skip
    return ctx


def _sampling(step: int) -> SamplingParams:
    return SamplingParams(n=1, seed=step)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_staleness_is_bounded_and_syncs_fall_between_requests(k: int) -> None:
    engine = Recorder()
    ctx = _ctx(engine, k)
    seen = []
    for step in range(10):
        items, comps, m = take_step(ctx, step, _sampling)
        assert m["rollout/staleness"] <= k and m["time/trainer_idle"] >= 0
        seen.append(([it["prompt_ids"] for it in items], [c[0][1] for c in comps], m["rollout/staleness"]))
        time.sleep(0.01)  # the update
        ctx.pipeline.sync(engine.load)
    ctx.pipeline.close()
    # the synchronous run's prompts, in step order: step s gets chunk s of the sampler
    assert [s[0] for s in seen] == [[[(2 * s) % 10, (2 * s) % 10 + 1], [(2 * s + 1) % 10, (2 * s + 1) % 10 + 1]]
                                    for s in range(10)]  # fmt: skip
    # the weights a step's samples were generated with: the version its staleness says (trained at version s)
    assert all(s - lag == w for s, (_, ws, lag) in enumerate(seen) for w in ws)
    assert max(lag for _, _, lag in seen) == k  # the overlap is used to its bound once the pipeline is full
    starts = [e[1] for e in engine.events if e[0] == "start"]
    assert starts == sorted(starts)  # requests in step order, seeds = step numbers


def test_state_round_trip_resumes_with_the_same_batches() -> None:
    engine = Recorder()
    ctx = _ctx(engine, 2)
    for step in range(3):
        take_step(ctx, step, _sampling)
        ctx.pipeline.sync(engine.load)
    state = json.loads(json.dumps(ctx.pipeline.state_dict()))  # plain values only
    expected = {s: ctx.pipeline.pending[s].completions for s in ctx.pipeline.pending}
    consumed = ctx.sampler.consumed
    ctx.pipeline.close()
    again = _ctx(Recorder(), 2)
    again.sampler.consumed = consumed
    again.pipeline.load_state_dict(state)
    assert again.pipeline.version == 3 and sorted(again.pipeline.pending) == [3, 4]
    _, comps, m = take_step(again, 3, _sampling)
    assert comps == expected[3] and m["rollout/staleness"] == 3 - state["pending"][0]["version"]
    again.pipeline.close()


@pytest.mark.parametrize("k", [1, 2])
def test_a_filter_takes_a_chunk_stream_in_the_samplers_order_within_the_bound(k: int) -> None:
    """An online filter's steps take 1-3 chunks each: the chunks come in the sampler's order (as in the synchronous
    run), chunks a step leaves go to the next, no chunk is more than k versions old, and from the last step on
    nothing more is requested ahead."""
    engine, total = Recorder(delay=0.01), 8
    ctx = _ctx(engine, k, total=total)
    taken, lags = [], []
    for step in range(total):
        for _ in range(1 + step % 3):
            items, _, m = take_step(ctx, step, _sampling, stream=True)
            taken.append([it["prompt_ids"] for it in items])
            lags.append(m["rollout/staleness"])
            assert m["rollout/dropped"] == 0
        time.sleep(0.005)  # the update
        ctx.pipeline.sync(engine.load)
    ctx.pipeline.close()
    chunks = len(taken)
    assert taken == [[[(2 * c) % 10, (2 * c) % 10 + 1], [(2 * c + 1) % 10, (2 * c + 1) % 10 + 1]]
                     for c in range(chunks)]  # fmt: skip
    assert max(lags) <= k and max(lags) >= 1
    requested = [e[1] for e in engine.events if e[0] == "start"]
    assert requested == list(range(chunks))  # seeds = chunk numbers; nothing requested beyond what was taken
    state = ctx.pipeline.state_dict()
    assert state["cursor"] == chunks and state["pending"] == []


def test_a_batch_older_than_the_bound_is_dropped_counted_and_generated_again() -> None:
    """A resume with a smaller max_staleness: the saved batch, 3 versions old at k = 1, is dropped (its samples
    counted) and its prompts are generated again with the current weights."""
    engine = Recorder()
    ctx = _ctx(engine, 1)
    old = [[[[5, 0], None]], [[[6, 0], None]]]  # per group, per sample: [ids, logprobs]
    state = {"version": 3, "pending": [{"step": 4, "indices": [2, 3], "completions": old, "version": 0}]}
    ctx.pipeline.load_state_dict(state)
    engine.weights = 3
    items, comps, m = take_step(ctx, 4, _sampling)
    ctx.pipeline.close()
    assert m["rollout/dropped"] == 2 and m["rollout/staleness"] == 0
    assert [it["prompt_ids"] for it in items] == [[2, 3], [3, 4]]
    assert [list(c[0]) for c in comps] == [[4, 3], [5, 3]]  # generated at the current weights (3)


def test_a_failing_engine_is_one_error_line_not_a_hang() -> None:
    ctx = _ctx(Recorder(fail_at=2), 1)
    take_step(ctx, 0, _sampling)
    with pytest.raises(RolloutThreadError, match=r"generating step 2 failed: ValueError: the engine broke"):
        take_step(ctx, 1, _sampling)
    ctx.pipeline.close()
    stuck = _ctx(Recorder(delay=3.0), 1)
    stuck.pipeline.timeout_s = 0.2
    with pytest.raises(RolloutThreadError, match=r"did not arrive within 0\.2 s"):
        take_step(stuck, 0, _sampling)
    stuck.pipeline.close()


def test_the_lock_keeps_a_sync_out_of_a_request() -> None:
    engine = Recorder(delay=0.2)
    pipeline = RolloutPipeline(engine, 1, timeout_s=5.0)
    pipeline.submit(0, [0], [[1]], _sampling(0))
    time.sleep(0.05)  # the request is running
    t = time.perf_counter()
    pipeline.sync(engine.load)  # waits for it
    assert time.perf_counter() - t > 0.1 and engine.events[-1] == ("sync", 1)
    pipeline.close()


def test_configs_that_cannot_overlap_are_refused() -> None:
    base = from_dict({"rollout": {"max_staleness": 1}})
    assert overlap_problem(base) is None
    colocated = from_dict({"rollout": {"max_staleness": 1}})
    colocated.rollout.engine = "vllm"  # (no vllm here to pass the config check)
    assert "cannot overlap" in overlap_problem(colocated)
    assert overlap_problem(from_dict({"algorithm": {"filter": "slow2fast"}, "rollout": {"max_staleness": 1}})) is None
    assert "hf_process" in overlap_note(base, "cpu")  # the in-process thread on a CPU: measured slower
    assert overlap_note(base, "cuda") is None and overlap_note(from_dict({}), "cpu") is None
    assert overlap_note(from_dict({"rollout": {"max_staleness": 1, "engine": "hf_process"}}), "cpu") is None


def _run(run_dir: Path, *args: str, nproc: int = 2) -> list[dict]:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "trainer.main",
        f"logging.run_dir={run_dir}", "rollout.max_staleness=1", "rollout.is_correction=token_truncate",
        "eval.enabled=false", "warm_start.steps=30", f"warm_start.cache={run_dir.parent / 'ws'}",
        "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=8", *args,
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_fast_grpo_overlaps_with_its_filter_and_resumes_exactly(tmp_path: Path) -> None:
    """FAST-GRPO (the Slow2Fast filter takes a chunk stream) at max_staleness 1 on one rank for 4 steps with a
    checkpoint at step 2, and a run resumed from it: the chunks, staleness and losses of steps 3-4 are the same."""
    args = ("--config", "fast_grpo", "rollout.on_filter_exhausted=fill", "rollout.max_chunks=3")
    whole = _run(tmp_path / "whole", *args, "optim.total_steps=4", "checkpoint.every=2", "checkpoint.keep=2",
                 nproc=1)  # fmt: skip
    checkpoint = tmp_path / "whole" / "checkpoints" / "step_00000002"
    resumed = _run(tmp_path / "resumed", *args, "optim.total_steps=4", f"checkpoint.resume={checkpoint}", nproc=1)
    a = [r for r in whole if "reward" in r]
    b = [r for r in resumed if "reward" in r]
    assert [r["step"] for r in a] == [1, 2, 3, 4] and [r["step"] for r in b] == [3, 4]
    assert all(r["rollout/staleness_max"] <= 1 and r["rollout/dropped"] == 0 for r in a)
    assert max(r["rollout/staleness_max"] for r in a) == 1
    keys = ("reward", "rollout/chunks", "actor/pg_loss", "actor/grad_norm", "rollout/staleness")
    for x, y in zip(a[2:], b):
        for key in keys:
            assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-9), (key, x["step"])


@pytest.mark.slow
@pytest.mark.distributed
def test_an_overlapped_run_resumes_exactly(tmp_path: Path) -> None:
    """5 steps at max_staleness 1 on 2 ranks with a checkpoint at step 3, and a second run resumed from that
    checkpoint: the same rewards, losses and staleness for steps 4-5 (the checkpoint holds every rank's batch
    generated ahead, with the version it was generated with, and the resumed run trains on it)."""
    whole = _run(tmp_path / "whole", "optim.total_steps=5", "checkpoint.every=3", "checkpoint.keep=3")
    checkpoint = tmp_path / "whole" / "checkpoints" / "step_00000003"
    assert checkpoint.is_dir(), sorted(p.name for p in (tmp_path / "whole" / "checkpoints").iterdir())
    resumed = _run(tmp_path / "resumed", "optim.total_steps=5", f"checkpoint.resume={checkpoint}")
    keys = ("reward", "actor/pg_loss", "actor/grad_norm", "rollout/staleness", "rollout/is_weight")
    a = [r for r in whole if "reward" in r]
    b = [r for r in resumed if "reward" in r]
    assert [r["step"] for r in a] == list(range(1, 6)) and [r["step"] for r in b] == [4, 5]
    assert [r["rollout/staleness"] for r in a] == [0.0] + [1.0] * 4
    for x, y in zip(a[3:], b):
        for key in keys:
            assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-9), (key, x["step"])
