"""One training step: rollout -> rewards -> filter -> advantages -> old/ref log-probs -> update -> weight sync.

Every rank works on its own prompts; what must agree across ranks is agreed by all-reduce: the refill loop's end,
the thinking reward's chunk statistics, the global token count of each minibatch, the metrics, and therefore the
SFPO entropy switch's decision.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from fastslow import FilterExhausted, OnlineFilter, group_advantages, sfpo_update
from trainer.async_rollout import OverlapTally
from trainer.batch import Batch, Group, Rollouts, make_batch
from trainer.dist import DistInfo, all_reduce, average_gradients, is_sharded
from trainer.engine_check import check_engine, logp_bound, mean_logp_gap
from trainer.objective import Objective, Totals, loss_settings
from trainer.offpolicy import ForwardCorrection, bounds_for, correction_on, correction_weights
from trainer.packing import PackedBatch, layout_metrics, pack_batch, pass_rows, update_rows
from trainer.reward.scoring import score_chunk
from trainer.rollout import SamplingParams
from trainer.step_result import StepResult
from trainer.weight_sync import sync_weights

if TYPE_CHECKING:
    from fastslow import EntropySwitch, FilterSchedule, KLController
    from fastslow.kernels import Snapshot
    from trainer.config import Config
    from trainer.policy import Policy
    from trainer.rollout.base import RolloutEngine
    from trainer.sampler import PromptSampler


@dataclass
class StepContext:
    """What a step needs, built once by the Trainer."""

    cfg: Config
    info: DistInfo
    policy: Policy
    ref: Policy | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    engine: RolloutEngine
    tokenizer: Any  # a Hugging Face tokenizer
    prompts: Sequence[dict]
    sampler: PromptSampler
    kl: KLController
    schedule: FilterSchedule | None
    switch: EntropySwitch | None
    task: str
    slow: Snapshot | None = None  # reused by every SFPO step
    pipeline: Any = None  # trainer.async_rollout.RolloutPipeline with rollout.max_staleness > 0
    sync_dtype: torch.dtype | None = None  # the weights travel to the engine in (its own); None: the parameters'


def _sampling(ctx: StepContext, step: int, chunk: int) -> SamplingParams:
    r = ctx.cfg.rollout
    seed = (ctx.cfg.seed * 1_000_003 + step * 10_007 + chunk * 101 + ctx.info.rank) % (2**31)
    stop = [ctx.tokenizer.eos_token_id]
    return SamplingParams(
        n=r.group_size, temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens,
        stop_token_ids=stop, seed=seed,
        logprobs=correction_on(r) or r.is_form == "bypass" or logp_bound(r, ctx.sync_dtype) > 0,
    )  # fmt: skip


def _score_chunk(ctx: StepContext, items: list[dict], completions: list[list[list[int]]]) -> tuple[list[Group], int]:
    """`trainer.reward.scoring.score_chunk` with the context's config, tokenizer, task and rank."""
    info = ctx.info
    return score_chunk(ctx.cfg, ctx.tokenizer, items, completions, task=ctx.task, rank=info.rank, device=info.device)


def collect(ctx: StepContext, step: int) -> Rollouts:
    """Generate chunks of prompts until every rank holds its share of kept groups (or the chunk cap is hit).

    With a user reward function, the metrics hold "reward/errors": the samples it scored 0 for an error
    (`reward.on_error = "zero"`), all ranks and chunks.
    """
    groups, metrics, errors = _collect(ctx, step)
    if ctx.cfg.reward.function:
        count = torch.tensor([float(errors)], dtype=torch.float64, device=ctx.info.device)
        metrics["reward/errors"] = all_reduce(count).item()
    return Rollouts(groups, metrics)


def _collect(ctx: StepContext, step: int) -> tuple[list[Group], dict[str, float], int]:
    """`collect`'s loop; also returns this rank's reward-error count over the chunks."""
    cfg, errors = ctx.cfg, 0
    per_rank = cfg.rollout.prompts_per_step // ctx.info.world
    # `step` counts from 0; the seed's k-th step (k from 1) filters with progress k / total_steps.
    progress = (step + 1) / max(cfg.optim.total_steps, 1)
    filt = None
    if ctx.schedule is not None:
        filt = OnlineFilter(ctx.schedule, per_rank, max_chunks=cfg.rollout.max_chunks)
        filt.start(progress)
    chunk, overlap = 0, OverlapTally()
    while True:
        if ctx.pipeline is not None:  # generated ahead (trainer/async_rollout.py); with a filter, a chunk stream
            items, completions = overlap.take(ctx, step, lambda s: _sampling(ctx, s, 0), stream=filt is not None)
        else:
            items = [ctx.prompts[i] for i in ctx.sampler.next_chunk()]
            completions = ctx.engine.generate([it["prompt_ids"] for it in items], _sampling(ctx, step, chunk))
        groups, chunk_errors = _score_chunk(ctx, items, completions)
        chunk, errors = chunk + 1, errors + chunk_errors
        if filt is None:
            kept = {"rollout/chunks": 1.0, "rollout/kept_groups": float(len(groups)), **_NOT_DRY}
            return groups, {**kept, **overlap.metrics()}, errors
        failure = None
        try:
            filt.add(torch.stack([g.correct.float().mean() for g in groups]), items=groups)
        except FilterExhausted as err:
            failure = err
        flags = torch.tensor([float(filt.done), float(failure is not None)], device=ctx.info.device)
        all_done = all_reduce(flags[:1].clone(), "min").item() > 0.5
        any_failed = all_reduce(flags[1:].clone(), "max").item() > 0.5
        if all_done:
            kept = filt.result().items
            metrics = {"rollout/chunks": float(chunk), "rollout/kept_groups": float(len(kept)), **_NOT_DRY}
            return list(kept), {**metrics, **overlap.metrics()}, errors
        if any_failed:  # every rank is at its max_chunks-th chunk: all stop here
            why = str(failure) if failure else "another rank's online filter ran out of chunks"
            groups, metrics = _dry(ctx, filt, chunk, why)
            return groups, {**metrics, **overlap.metrics()}, errors


_NOT_DRY = {"rollout/filled_groups": 0.0, "rollout/dry": 0.0, "rollout/skipped": 0.0}


class FilterDry(RuntimeError):
    """The online filter ran dry with `rollout.on_filter_exhausted = "stop"`: the Trainer saves and stops."""


def _dry(ctx: StepContext, filt: OnlineFilter, chunks: int, why: str) -> tuple[list[Group], dict[str, float]]:
    """What a dry filter step trains on, by `rollout.on_filter_exhausted` (the same choice on every rank).

    "fill": the kept groups topped up with this rank's latest rejected ones; "partial": the first `m` kept groups
    on every rank, `m` the smallest rank's count; "stop": raises `FilterDry`. "skip", and "partial" where some rank
    kept none, return the filled groups with `rollout/skipped` = 1: the caller reports their reward and accuracy
    but skips the update. `rollout/kept_groups` and `rollout/filled_groups` are per-rank means of what is trained on.
    """
    mode, device = ctx.cfg.rollout.on_filter_exhausted, ctx.info.device
    if mode == "stop":
        raise FilterDry(why)
    result = filt.result(fill=True)
    groups, kept, filled = list(result.items), len(result.items) - result.filled, result.filled
    if mode == "partial":
        kept = int(all_reduce(torch.tensor([float(kept)], device=device), "min").item())
        groups, filled = (groups[:kept], 0) if kept else (groups, filled)
    skipped = mode == "skip" or (mode == "partial" and kept == 0)
    kept, filled = (0, 0) if skipped else (kept, filled)
    counts = all_reduce(torch.tensor([float(kept), float(filled)], device=device)) / ctx.info.world
    return groups, {
        "rollout/chunks": float(chunks), "rollout/kept_groups": counts[0].item(),
        "rollout/filled_groups": counts[1].item(), "rollout/dry": 1.0, "rollout/skipped": float(skipped),
    }  # fmt: skip


@torch.no_grad()
def logprobs(
    policy: nn.Module, batch: Batch, micro: int, temperature: float, packed: PackedBatch | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(logp [B, T], entropy [B, T])` of the batch's targets under `policy`, micro-batch by micro-batch (`micro`
    sequences each), or packed row by packed row (0 where a position has no target)."""
    logp, ent = (torch.zeros(batch.targets.shape, device=batch.targets.device) for _ in range(2))
    for row in pass_rows(batch, micro, packed):
        *args, extra = row.inputs(policy, batch)
        out = policy(*args, temperature=temperature, **extra)
        row.scatter(logp, out[0])
        row.scatter(ent, out[1])
    # FSDP2 keeps the root's parameters gathered after a forward (it expects a backward next); put them back in
    # shards, or the SFPO snapshot and reposition would see the gathered copies, freed at the next reshard.
    if is_sharded(policy):  # an FSDP2 module (one rank without mixed precision runs unsharded)
        policy.reshard()
    return logp, ent


def update(
    ctx: StepContext,
    batch: Batch,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    adv: torch.Tensor,
    kl_coef: torch.Tensor | float,
    packed: PackedBatch | None = None,
    correction: ForwardCorrection | None = None,
) -> dict[str, float]:
    """One full policy update: `epochs` passes of `minibatches` optimizer steps, micro-batched (or `packed`).
    `old_logp` None: one optimizer step (`skips_old_logprobs`), each micro-batch's own log-probs are the old ones;
    `correction` then weighs the advantages from them (its metrics join the update's).

    The loss of each micro-batch (its arguments and its share of the minibatch's loss) is `trainer.objective`'s;
    FSDP (or `average_gradients`, for plain replicas) averages gradients over ranks, hence the factor `world`.
    """
    cfg, world, device = ctx.cfg, ctx.info.world, ctx.info.device
    o = cfg.optim
    objective = Objective(loss_settings(cfg.algorithm), batch.mask, adv, old_logp, ref_logp, kl_coef)
    sums: dict[str, float] = {}
    grad_norms, skipped = [], 0
    minibatches = torch.tensor_split(torch.arange(batch.input_ids.shape[0], device=device), o.minibatches)
    micro_batches = update_rows(batch, minibatches, o.micro_batch_size, packed)
    for _ in range(o.epochs):
        for mb, rows in zip(minibatches, micro_batches, strict=True):
            mb_totals = Totals.of(batch.mask[mb], device)
            for row in rows:
                *inputs, extra = row.inputs(ctx.policy, batch)
                args = objective.args(row, mb_totals)
                if correction is not None:
                    extra["advantages_of"] = correction.advantages_of(row)
                loss, m = ctx.policy.loss(*inputs, args, temperature=cfg.rollout.temperature, **extra)
                (loss * objective.scale(row, mb_totals) * world).backward()
                tokens = m["tokens"].item()
                for k in ("pg_loss", "kl", "ratio", "clip_frac", "dual_clip_frac", "entropy"):
                    sums[k] = sums.get(k, 0.0) + m[k].item() * tokens
                sums["tokens"] = sums.get("tokens", 0.0) + tokens
            if not is_sharded(ctx.policy):  # plain replicas (trainer.dist.replicated); a no-op on one rank
                average_gradients(ctx.policy.parameters())
            max_norm = o.grad_clip if o.grad_clip > 0 else math.inf
            norm = torch.nn.utils.clip_grad_norm_(ctx.policy.parameters(), max_norm)
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
            if torch.isfinite(norm):
                ctx.optimizer.step()
            else:
                skipped += 1
            ctx.optimizer.zero_grad(set_to_none=True)
            grad_norms.append(norm.item())
    keys = sorted(sums)
    totals = all_reduce(torch.tensor([sums[k] for k in keys], device=device, dtype=torch.float64))
    totals = dict(zip(keys, totals.tolist(), strict=True))
    tokens = max(totals.pop("tokens"), 1.0)
    out = {f"actor/{k}": v / tokens for k, v in totals.items()}
    out["entropy"] = out.pop("actor/entropy")
    out["actor/grad_norm"] = sum(grad_norms) / max(len(grad_norms), 1)
    out["actor/skipped_updates"] = float(skipped)
    return out if correction is None else {**out, **correction.metrics()}


def learn(ctx: StepContext, batch: Batch, timing: dict[str, float] | None = None) -> dict[str, float]:
    """The learning half of a step, on a collected batch: old (and reference) log-probs, advantages, the update
    (SFPO's while its switch is on), the learning-rate schedule.

    Returns the update's metrics plus "sfpo" (1.0 when the SFPO update ran); adds the seconds spent on "logprobs"
    and "update" to `timing` when given.
    """
    cfg, info = ctx.cfg, ctx.info
    n = cfg.rollout.group_size
    t = time.perf_counter()
    packed = pack_batch(cfg.optim, batch, info.device)
    layout = layout_metrics(packed, batch.attention_mask.sum(-1), batch.input_ids.shape[1], info.device, info.world)
    sfpo_on = ctx.switch is not None and ctx.switch.active
    bound = logp_bound(cfg.rollout, ctx.sync_dtype)
    bypass = cfg.rollout.is_form == "bypass"  # the engine's log-probs are the old ones (trainer/offpolicy.py)
    skip_old = (skips_old_logprobs(cfg, sfpo_on) or bypass) and bound == 0
    old_logp = None
    is_metrics: dict[str, float] = {}
    if not skip_old:
        old_logp, _ = logprobs(ctx.policy, batch, cfg.optim.micro_batch_size, cfg.rollout.temperature, packed)
    if bound > 0:  # the stale-weights check (trainer/engine_check.py)
        if batch.rollout_logp is None or old_logp is None:
            raise RuntimeError("rollout.max_logp_diff is on but the engine returned no log-probs")
        gap = mean_logp_gap(old_logp, batch.rollout_logp, batch.mask)
        check_engine(gap, bound)
        is_metrics["rollout/logp_abs_diff"] = gap
    if bypass:
        if batch.rollout_logp is None:
            raise RuntimeError("rollout.is_form = 'bypass' but the engine returned no log-probs")
        old_logp = batch.rollout_logp
    ref_logp = None
    if ctx.ref is not None:
        ref_logp, _ = logprobs(ctx.ref, batch, cfg.optim.micro_batch_size, cfg.rollout.temperature, packed)
    adv = group_advantages(batch.rewards, n, std_normalize=cfg.algorithm.std_normalize)
    correction = None
    if correction_on(cfg.rollout):
        r = cfg.rollout
        if batch.rollout_logp is None:
            raise RuntimeError("rollout.is_correction is on but the engine returned no log-probs")
        low, high = bounds_for(r.is_correction, r.is_bounds, r.is_cap)
        if old_logp is None:  # one optimizer step: the proximal log-probs are the update's own (offpolicy.py)
            correction = ForwardCorrection(r.is_correction, low, high, batch.rollout_logp, batch.mask, adv)
        else:
            weights, weight_metrics = correction_weights(
                old_logp, batch.rollout_logp, batch.mask, r.is_correction, low, high
            )
            is_metrics.update(weight_metrics)
            adv = adv[:, None] * weights  # [B, T]: per-token advantages (weights > 0, so the clipping is unchanged)
    kl_coef: torch.Tensor | float = float(cfg.algorithm.kl_coef)  # "fixed": one scalar, the kernel's fast path
    if cfg.algorithm.kl_type != "fixed":
        kl_coef = ctx.kl.coefficients(batch.correct, n).to(info.device)
        _global_kl_summary(ctx)
    seconds_logprobs, t = time.perf_counter() - t, time.perf_counter()

    run_update: Callable[[], dict[str, float]] = lambda: update(
        ctx, batch, old_logp, ref_logp, adv, kl_coef, packed, correction
    )
    if sfpo_on:
        if ctx.slow is None:
            from fastslow.kernels import snapshot

            ctx.slow = snapshot(ctx.policy.parameters())
        a = cfg.algorithm
        update_metrics = sfpo_update(
            ctx.policy.parameters(), run_update, inner_steps=a.sfpo.inner_steps, alpha=a.sfpo.alpha, slow=ctx.slow
        )
    else:
        update_metrics = run_update()
    update_metrics.update(parameter_health(ctx.policy, ctx.cfg.optim.max_param_abs, info.device))
    if ctx.switch is not None and math.isfinite(update_metrics["entropy"]):
        ctx.switch.update(update_metrics["entropy"])
    ctx.scheduler.step()
    if timing is not None:
        timing["logprobs"], timing["update"] = seconds_logprobs, time.perf_counter() - t
    out = {**update_metrics, **is_metrics, **layout, "sfpo": float(sfpo_on)}
    out["actor/old_logp_pass"] = float(not skip_old)  # 0: one optimizer step, the ratio taken as 1 (no pass)
    return out


class PassSettings(Protocol):
    """What `skips_old_logprobs` reads of the `optim` section (`trainer.config.OptimConfig`, or a stand-in)."""

    @property
    def skip_old_logprobs(self) -> bool: ...
    @property
    def epochs(self) -> int: ...
    @property
    def minibatches(self) -> int: ...


class OldLogpSettings(Protocol):
    """What `skips_old_logprobs` reads of the config (`Config` or a stand-in)."""

    @property
    def optim(self) -> PassSettings: ...


def skips_old_logprobs(cfg: OldLogpSettings, sfpo_on: bool) -> bool:
    """Whether the old-log-prob pass is redundant: the batch is used for exactly one optimizer step (one epoch, one
    minibatch, no SFPO inner steps), so the proximal policy of the decoupled form is the weights the update starts
    from, and each micro-batch's own log-probs are the old ones. Then the ratio is 1 with the gradient of
    `exp(logp - logp.detach())`, as TRL, prime-rl and verl's bypass mode do, on-policy or stale (`max_staleness`:
    staleness enters through the importance weights, not the ratio), and `rollout.is_correction` takes its
    proximal log-probs from the update's forward (`trainer.offpolicy.ForwardCorrection`). The stale-weights check
    (`rollout.max_logp_diff`) keeps the pass (see `learn`); `optim.skip_old_logprobs = false` keeps it too (a
    check)."""
    o = cfg.optim
    return o.skip_old_logprobs and o.epochs == 1 and o.minibatches == 1 and not sfpo_on


def _global_kl_summary(ctx: StepContext) -> None:
    """The KL controller's summary of its last coefficients made the run's (`KLController.merge_summary`), the same
    on every rank (a checkpoint holds one copy). Two small all-reduces."""
    device, world = ctx.info.device, ctx.info.world
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float64, device=device)
    mean = lambda values: (all_reduce(as_tensor(values)) / world).tolist()
    maximum = lambda values: all_reduce(as_tensor(values), "max").tolist()
    ctx.kl.merge_summary(mean, maximum)


@torch.no_grad()
def parameter_health(policy: nn.Module, limit: float, device: torch.device) -> dict[str, float]:
    """After an update, over all ranks' shards: "actor/param_abs_max" (the largest finite |p|) and "actor/diverged"
    (1.0 when a parameter is non-finite or above `limit`): one pass over the local shards, one all-reduce."""
    local = [p.to_local() if hasattr(p, "to_local") else p for p in policy.parameters() if p.requires_grad]
    peaks = [t.detach().abs().amax().float() for t in local if t.numel()]  # amax keeps NaN and inf
    peak = float(torch.stack(peaks).amax()) if peaks else 0.0  # the one device sync
    finite = math.isfinite(peak)
    flags = torch.tensor([peak if finite else 0.0, float(not finite)], dtype=torch.float64, device=device)
    worst = all_reduce(flags, "max").tolist()
    return {"actor/param_abs_max": worst[0], "actor/diverged": float(worst[1] > 0 or worst[0] > limit)}


def sync_policy(ctx: StepContext) -> dict[str, float]:
    """Stream the policy's weights into the rollout engine (all ranks together); `sync_weights`' statistics."""
    return sync_weights(
        ctx.policy, ctx.engine, bucket_bytes=ctx.cfg.rollout.sync_bucket_bytes, prefix="lm.", dtype=ctx.sync_dtype
    )


def train_step(ctx: StepContext, step: int) -> StepResult:
    """One step; returns what it did and its metrics (identical on every rank)."""
    cfg, info = ctx.cfg, ctx.info
    timing: dict[str, float] = {}
    t = start = time.perf_counter()

    ctx.engine.wake_up()
    try:
        rollouts = collect(ctx, step)
    finally:  # a dry filter that stops the run leaves the engine asleep too
        ctx.engine.sleep()
    batch, metrics = make_batch(rollouts.groups, ctx.tokenizer.pad_token_id, info.device), rollouts.metrics
    timing["rollout"] = time.perf_counter() - t

    update_metrics: dict[str, float] = {}
    sync = {"bytes": 0}
    if not metrics["rollout/skipped"]:  # a dry filter step with on_filter_exhausted = "skip": no update, no sync
        update_metrics = learn(ctx, batch, timing)
        t = time.perf_counter()
        sync = sync_policy(ctx) if ctx.pipeline is None else ctx.pipeline.sync(lambda: sync_policy(ctx))
        timing["sync"] = time.perf_counter() - t

    sums = [batch.rewards.sum(), batch.correct.float().sum(), batch.lengths.sum(), batch.mask.sum().float()]
    local = [x.item() for x in sums] + [float(len(batch.rewards))]
    local = torch.tensor(local, dtype=torch.float64, device=info.device)
    reward_sum, correct_sum, length_sum, resp_tokens, count = all_reduce(local).tolist()
    metrics.update(update_metrics)
    metrics.update({
        "reward": reward_sum / count, "accuracy": correct_sum / count, "response_length": length_sum / count,
        "lr": ctx.scheduler.get_last_lr()[0], "sync/bytes": float(sync["bytes"]),
        "rollout/prompts_seen": float(ctx.sampler.consumed),
        "tokens_per_s": resp_tokens / max(sum(timing.values()), 1e-9),
    })  # fmt: skip
    if cfg.algorithm.kl_type != "fixed":
        metrics.update({f"{k}": v for k, v in ctx.kl.metrics().items()})
    metrics.update({f"time/{k}": v for k, v in timing.items()})
    if ctx.pipeline is not None:  # the engine's idle time in this step's window (its busy time came from the thread)
        metrics["time/engine_idle"] = max(0.0, time.perf_counter() - start - ctx.pipeline.engine_busy_s())
    return StepResult.of(metrics)
