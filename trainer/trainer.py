"""The Trainer: builds the policy, reference, engine, data and algorithm state, runs the step loop, saves.

Failure behaviour of the loop:

- SIGTERM / SIGINT (Ctrl-C): the step in progress finishes; at the step boundary the ranks agree on the signal
  (all-reduce, MAX) so all stop after the same step, save a checkpoint there (unless one was just written), close
  the process group and exit with status 0 (trainer/signals.py). Continue with `--resume auto`. Further signals
  change nothing while stopping; SIGKILL forces it, losing only the steps since the last complete checkpoint.
  Signalling torchrun itself (Ctrl-C in its terminal) works the same (it forwards the signal to the workers and
  waits for them), but torchrun then exits 1 with its own `SignalException` traceback; the workers exit 0.
- A bad step: its update skipped every optimizer step (non-finite gradient norm; parameters and optimizer state
  untouched), or its loss or reward metrics are non-finite. `bad_steps` (a metric) counts them in a row. No
  checkpoint is written after a bad step, so rotation never removes the last good one. After
  `optim.max_bad_steps` in a row, or at the end of the run inside such a streak, the run stops with a message
  naming the count and the last good checkpoint, writes nothing, and exits with status 3.

Evaluation (`trainer.eval`, the `[eval]` section): before the first step (after the first weight sync), after every
`eval.every`-th step (before that step's checkpoint, so a resumed run does not repeat it) and at the end, on the
rollout engine; each is a row of its own in metrics.jsonl. Its random streams are its own: a run trains the same
with evaluation on and off. The summary's first line is the held-out accuracy (avg@n) of the first evaluation ->
the last.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from trainer import checkpoint as ckpt
from trainer import tasks
from trainer.algorithm_build import build_algorithm
from trainer.async_rollout import (
    RolloutPipeline,
    every_rank_state,
    overlap_note,
    overlap_problem,
    restore_rank_state,
)
from trainer.checkpoint import check as checkpoint_check
from trainer.checkpoint import resume as resume_check
from trainer.config import Config, ConfigError, InputError, input_errors, save_toml
from trainer.data import load_prompts
from trainer.dist import DistInfo, all_reduce, is_sharded
from trainer.eval import eval_context_tokens, evaluate, headline, load_eval_sets
from trainer.host_alloc import settle_unsharded
from trainer.metrics import MetricsLogger, system_metrics
from trainer.model.build import build_models, build_optimizer
from trainer.model.load import engine_dtype as run_engine_dtype
from trainer.model.load import load_tokenizer, mixed_precision
from trainer.reward import worker as reward_worker
from trainer.reward.builtin import task_for
from trainer.rollout import build_engine, engine_spec
from trainer.run_folder import RUN_FILES, run_folder
from trainer.sampler import PromptSampler
from trainer.signals import Interrupted, StopFlag
from trainer.step import FilterDry, StepContext, sync_policy, train_step
from trainer.step_result import StepResult

# Metrics whose non-finite value makes a step bad (the loss terms and the reward; step.py reduces them over ranks).
FINITE_METRICS = ("reward", "actor/pg_loss", "actor/kl")


class BadStepsError(RuntimeError):
    """The run stopped inside a streak of bad steps; the message names the count and the last good checkpoint."""


class DryFilterStop(RuntimeError):
    """The run saved and stopped on a dry online filter (`rollout.on_filter_exhausted = "stop"` or
    `rollout.max_dry_steps` dry steps in a row); the message names the checkpoint. Exit status 4."""


def is_bad_step(result: StepResult, optimizer_steps: int) -> bool:
    """Every optimizer step of the update was skipped, or a loss or reward metric is non-finite."""
    if result.updates_skipped >= optimizer_steps:
        return True
    return any(not math.isfinite(result.metrics[k]) for k in FINITE_METRICS if k in result.metrics)


class Trainer:
    """`Trainer(cfg, info).train()`: everything a run does, in the order it does it."""

    def __init__(self, cfg: Config, info: DistInfo) -> None:
        """Checks the cheap inputs first (run folder, tokenizer, data, evaluation sets, resume target and config),
        then builds the models. A bad input raises `InputError`; a start that fails removes the run folder it made.
        config.toml is written once everything is built (and a resume loaded)."""
        self.cfg, self.info = cfg, info
        folder = run_folder(cfg, info)
        self.run_dir, self._lock, self._replace = folder.path, folder.lock, folder.replace
        try:
            self._build()
        except BaseException:
            if folder.created and info.is_main and not any((self.run_dir / name).exists() for name in RUN_FILES):
                shutil.rmtree(self.run_dir, ignore_errors=True)
            if self._lock is not None:
                self._lock.release()
            raise
        if info.is_main:
            save_toml(cfg, self.run_dir / "config.toml")

    def _build(self) -> None:
        cfg, info = self.cfg, self.info
        with input_errors():
            self.tokenizer = load_tokenizer(cfg.model, task=tasks.of_source(cfg.data.source).NAME)
            self.prompts = load_prompts(cfg.data, self.tokenizer, seed=cfg.seed)
            if len(self.prompts) < cfg.rollout.prompts_per_step:
                raise ConfigError(
                    f"rollout.prompts_per_step = {cfg.rollout.prompts_per_step}: more than the {len(self.prompts)} "
                    f"usable prompts of data.source = {str(cfg.data.source)!r}"
                )
            self.task = task_for(cfg.data)
            self.eval_sets = load_eval_sets(cfg, self.tokenizer) if cfg.eval.enabled else []
        self._resume_from = self._check_resume()
        on_gpu = info.device.type == "cuda"
        mixed = mixed_precision(cfg.model, info.device)  # "bfloat16": on CPU too
        torch.manual_seed(cfg.seed)
        a = cfg.algorithm
        needs_ref = a.kl_type != "fixed" or a.kl_coef != 0.0
        with input_errors():  # sharded construction: no rank holds a whole copy of the policy (trainer/model/build.py)
            models = build_models(cfg, info, self.tokenizer, self.run_dir, mixed_precision=mixed, needs_ref=needs_ref)
        self.policy, self.ref, self.template = models.policy, models.ref, models.template  # template: meta, config
        engine_dtype = run_engine_dtype(cfg.model, info.device)
        self.engine_dtype = engine_dtype
        model_len = cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
        if cfg.eval.enabled:  # the engine's context must hold the evaluation's prompts and responses too
            model_len = max(model_len, eval_context_tokens(cfg))
        self.engine = build_engine(
            cfg.rollout.engine, make_model=lambda: models.make_engine_model(engine_dtype),
            pad_token_id=self.tokenizer.pad_token_id, device=info.device, dtype=engine_dtype, rollout=cfg.rollout,
            model_dir=self._engine_model_dir() if engine_spec(cfg.rollout.engine).own_model else None,
            seed=cfg.seed + info.rank,
            rank=info.rank, world=info.world, max_model_len=model_len, model_config=self.template.config,
        )  # fmt: skip
        o = cfg.optim
        on_device = on_gpu and not cfg.model.cpu_offload  # where the shards, and so the optimizer step, live
        self.optimizer = build_optimizer(self.policy.parameters(), o, on_device=on_device)
        warmup = max(o.warmup_steps, 0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
        )
        sampler = PromptSampler(
            len(self.prompts), cfg.rollout.prompts_per_step, seed=cfg.seed, rank=info.rank, world=info.world
        )
        algo = build_algorithm(a)
        self.ctx = StepContext(
            cfg=cfg, info=info, policy=self.policy, ref=self.ref, optimizer=self.optimizer, scheduler=self.scheduler,
            engine=self.engine, tokenizer=self.tokenizer, prompts=self.prompts, sampler=sampler, kl=algo.kl,
            schedule=algo.schedule, switch=algo.switch, task=self.task, sync_dtype=engine_dtype,
        )  # fmt: skip
        problem = overlap_problem(cfg)
        if problem:
            raise ConfigError(problem)
        if cfg.rollout.max_staleness > 0:
            self.ctx.pipeline = RolloutPipeline(self.engine, cfg.rollout.max_staleness, cfg.parallel.timeout_s)
            note = overlap_note(cfg, info.device.type)
            if note and info.is_main:
                print(f"warning: {note}", file=sys.stderr, flush=True)
        self._replace_old_run()  # every input has passed and the models are built: only now is the old run deleted
        self.logger = MetricsLogger.from_config(self.run_dir, cfg, rank=info.rank)
        self.step = 0
        self.bad_steps = 0  # bad steps in a row (optim.max_bad_steps)
        self.dry_steps = 0  # dry filter steps in a row (rollout.max_dry_steps)
        self.history: list[float] = []  # accuracy per step, for the final summary
        self.eval_history: dict[str, dict[str, float]] = {}  # str(step) -> {source: avg@n}, for the summary
        self._resume()
        sync_policy(self.ctx)

    def _replace_old_run(self) -> None:
        """Rank 0 deletes what an earlier run left in the folder (a fresh start with `logging.overwrite`, or the
        leftovers of a start that never trained), and says so."""
        if not self.info.is_main or not self._replace:
            return
        for name in self._replace:
            target = self.run_dir / name
            shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink(missing_ok=True)
        holds = [n for n in self._replace if n in RUN_FILES and n != "config.toml"]
        if self.cfg.logging.overwrite and holds:
            print(f"logging.overwrite: replaced the run in {self.run_dir} ({', '.join(holds)})", flush=True)

    def _engine_model_dir(self) -> str:
        """A Hugging Face folder the vllm engine can build the architecture from (its weights come by sync).

        `model.path` or `model.config` when given; for the built-in preset, this rank's copy of the template's
        `config.json` under the run directory.
        """
        m = self.cfg.model
        if m.path:
            return m.path
        if m.config:
            return m.config
        folder = self.run_dir / f"engine_model_rank{self.info.rank}"
        self.template.config.save_pretrained(folder)
        return str(folder)

    def state_dict(self) -> dict[str, Any]:
        """Everything besides model and optimizer that a resumed run needs to continue exactly: the run's, the same
        on every rank (no RNG state: each step's streams are seeded from (seed, step, rank), `ckpt.seed_step`), so a
        run resumes at any world size."""
        c = self.ctx
        return {
            "step": self.step,
            "history": list(self.history),
            "eval": {step: dict(values) for step, values in self.eval_history.items()},
            "sampler": c.sampler.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "kl": c.kl.state_dict(),
            "switch": None if c.switch is None else c.switch.state_dict(),
            "bad_steps": self.bad_steps,
            "dry_steps": self.dry_steps,
            "rollout_pipeline": None if c.pipeline is None else every_rank_state(c.pipeline, self.info.world),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores `state_dict()`'s output (an older checkpoint's "rng" entry is ignored: streams are seeded)."""
        c = self.ctx
        self.step, self.history = int(state["step"]), list(state["history"])
        self.eval_history = {str(k): dict(v) for k, v in state.get("eval", {}).items()}  # absent before evaluation
        c.sampler.load_state_dict(state["sampler"])
        self.scheduler.load_state_dict(state["scheduler"])
        c.kl.load_state_dict(state["kl"])
        if c.switch is not None and state["switch"] is not None:
            c.switch.load_state_dict(state["switch"])
        self.bad_steps = int(state["bad_steps"])
        self.dry_steps = int(state.get("dry_steps", 0))  # absent in checkpoints written before it
        ahead = state.get("rollout_pipeline")  # per rank: the batches generated ahead (rollout.max_staleness > 0)
        if ahead is not None:
            restore_rank_state(c.pipeline, ahead, self.info.rank, self.info.world, warn=self.info.is_main)

    def _check_resume(self) -> list[Path]:
        """The checkpoints to resume from, in the order to try them ([]: start fresh), checked before any model is
        built. Rank 0 looks and every rank takes its answer, so all ranks resume from the same step.

        `--resume auto`: the run folder's complete checkpoints, `latest` first, then newest first; each damaged one
        (`trainer.checkpoint.check.damage`) is named in a warning line and left out, and if every one is damaged
        that is an error. An explicit path must be a whole checkpoint folder. The config may differ from the saved
        one only in keys that can change (`trainer.checkpoint.resume`; the changes are printed in one line).
        """
        how = self.cfg.checkpoint.resume
        if how in ("", "none"):
            return []
        answer: list[Any] = [([], None)]
        if self.info.is_main:
            try:
                answer = [self._resume_targets(how)]
            except Exception as err:  # never leave the other ranks waiting at the broadcast
                answer = [([], f"--resume {how}: {err}")]
        dist.broadcast_object_list(answer, src=0)
        names, error = answer[0]
        if error is not None:
            raise InputError(error)
        targets = [Path(name) for name in names]
        if targets:
            changes = resume_check.compare(self.cfg, resume_check.saved_config_path(targets[0]))
            problem = resume_check.data_problem(targets[0], len(self.prompts), str(self.cfg.data.source))
            if problem:
                raise ConfigError(problem)
            if changes and self.info.is_main:
                print(f"resume: changed since the saved config: {', '.join(changes)}", flush=True)
        return targets

    def _resume_targets(self, how: str) -> tuple[list[str], str | None]:
        """Rank 0's half of `_check_resume`: (checkpoint folders to try, error line or None); warns on stderr."""
        if how != "auto":
            path = Path(how)
            if not (path / "meta.json").is_file():
                what = "does not exist" if not path.exists() else "is not a complete checkpoint folder (no meta.json)"
                return [], f"--resume {how}: {what}"
            why = checkpoint_check.damage(path)
            return ([], f"--resume {how}: the checkpoint is damaged: {why}") if why else ([str(path)], None)
        choice = checkpoint_check.resume_candidates(self.run_dir)
        if choice.complete and not choice.candidates:  # the one line says it all: no warnings before it
            where = self.run_dir / ckpt.CHECKPOINTS
            return [], f"--resume auto: none of the {choice.complete} checkpoints in {where} is whole: {choice.damaged}"
        for line in choice.warnings:
            print(f"warning: {line}", file=sys.stderr, flush=True)
        return [str(p) for p in choice.candidates], None

    def _resume(self) -> None:
        """Loads the first of `_check_resume`'s checkpoints that loads (all ranks agree on each verdict): one that
        passed the check but fails to load (bytes changed in place) is skipped like a damaged one under `--resume
        auto`; with an explicit path it is an `InputError`."""
        how = self.cfg.checkpoint.resume
        if how in ("", "none"):
            return
        if not self._resume_from:
            if self.info.is_main:
                print(f"resume=auto: no complete checkpoint in {self.run_dir}, starting fresh", flush=True)
            return
        for i, path in enumerate(self._resume_from):
            failure: BaseException | None = None
            try:
                self.load_state_dict(ckpt.load_checkpoint(path, self.policy, self.optimizer))
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as err:  # bytes that do not decode (DCP's CheckpointException is a BaseException)
                failure = err
            flag = torch.tensor([float(failure is not None)], device=self.info.device)
            if all_reduce(flag, "max").item() < 0.5:
                break
            detail = checkpoint_check.one_line(failure) if failure else "on another rank"
            why = f"checkpoint {path} does not load ({detail})"
            if how != "auto" or i + 1 == len(self._resume_from):
                raise InputError(f"--resume {how}: {why}") from failure
            if self.info.is_main:
                print(f"warning: {why}; trying an older one", file=sys.stderr, flush=True)
        if self.info.is_main:
            saved_world = json.loads((path / "meta.json").read_text())["world_size"]
            world = self.info.world
            moved = f" (written by {saved_world} processes, now {world})" if saved_world != world else ""
            print(f"resumed from {path} at step {self.step}{moved}", flush=True)

    def save(self) -> Path:
        return ckpt.save_checkpoint(
            self.run_dir, self.step, self.policy, self.optimizer, self.state_dict(), keep=self.cfg.checkpoint.keep
        )

    def train(self, stop: StopFlag | None = None) -> dict[str, float]:
        """Run steps until `optim.total_steps`; checkpoint every `checkpoint.every` and at the end; export.

        Returns the summary, or `{"steps": N, "stopped": 1.0}` when `stop` was signalled; raises `BadStepsError`
        on a streak of bad steps (see the module docstring).
        """
        cfg, c = self.cfg, self.ctx
        total = cfg.optim.total_steps
        max_bad = cfg.optim.max_bad_steps
        optimizer_steps = cfg.optim.epochs * cfg.optim.minibatches
        saved = self.step  # the state at start is already on disk (resumed) or is the initial one
        settled = False
        if self.step == 0 and cfg.eval.before_train:
            self._evaluate()
        while self.step < total:
            if self._stop_agreed(stop):
                return self._stop(stop, saved)
            start = time.perf_counter()
            ckpt.seed_step(cfg.seed, self.step, self.info.rank)
            try:
                result = train_step(c, self.step)
            except Interrupted:  # a signal while a reward call hung: that step cannot finish, so it is dropped
                return self._interrupted(stop)
            except FilterDry as err:  # on_filter_exhausted = "stop": save the state reached (this step undone), stop
                raise DryFilterStop(
                    self._dry_stop(f"the online filter ran dry at step {self.step + 1} ({err})")
                ) from err
            except RuntimeError as err:  # sampling from weights that overflow: the last update diverged
                if "probability tensor contains" not in str(err):
                    raise
                message = self._bad_message(f"the rollout failed ({err})", "the weights had diverged")
                raise BadStepsError(message) from err
            self.step += 1
            if not settled:  # this process's first step is done: the build's full copies are all freed
                settled = True
                if not is_sharded(self.policy):  # an unsharded rank's step reuses its buffers (trainer/host_alloc.py)
                    settle_unsharded()
            metrics, diverged = result.metrics, result.diverged
            self.bad_steps = self.bad_steps + 1 if diverged or is_bad_step(result, optimizer_steps) else 0
            metrics["bad_steps"] = float(self.bad_steps)
            metrics["time/step"] = time.perf_counter() - start
            metrics.update(system_metrics(self.info.device))
            self.history.append(metrics["accuracy"])
            self.logger.log(self.step, metrics)
            if diverged:
                what = (
                    f"a parameter is non-finite or above optim.max_param_abs = {cfg.optim.max_param_abs:g} (largest "
                    f"finite |p| {metrics['actor/param_abs_max']:.3g})"
                )
                raise BadStepsError(self._bad_message("the update diverged", what))
            if self.bad_steps >= max_bad:
                raise BadStepsError(self._bad_message(f"{self.bad_steps} bad steps in a row (optim.max_bad_steps)"))
            self.dry_steps = self.dry_steps + 1 if result.dry else 0
            if cfg.rollout.max_dry_steps and self.dry_steps >= cfg.rollout.max_dry_steps and self.step < total:
                why = f"the online filter ran dry {self.dry_steps} steps in a row (rollout.max_dry_steps)"
                raise DryFilterStop(self._dry_stop(f"{why}, the last at step {self.step}"))
            if cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < total:
                self._evaluate()
            due = cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0 and self.step < total
            if due and self.bad_steps == 0:
                self.save()
                saved = self.step
        if self.bad_steps:
            raise BadStepsError(self._bad_message(f"the run ended inside {self.bad_steps} bad steps in a row"))
        if str(self.step) not in self.eval_history:  # a run resumed at its end has evaluated there already
            self._evaluate()
        self.save()
        if cfg.checkpoint.export_hf:
            dtype = torch.bfloat16 if self.engine_dtype == torch.bfloat16 else None  # the run's mixed precision
            ckpt.export_hf(self.run_dir / "hf", self.policy, self.template, self.tokenizer, prefix="lm.", dtype=dtype)
        return self.summary()

    def _evaluate(self) -> None:
        """Evaluate the engine's weights (the policy's, synced after every step) at `self.step`; log, remember."""
        if not self.eval_sets:
            return
        info, pipeline = self.info, self.ctx.pipeline
        with pipeline.lock if pipeline is not None else contextlib.nullcontext():  # not while it generates ahead
            metrics = evaluate(
                self.cfg, self.engine, self.tokenizer, self.eval_sets, step=self.step, rank=info.rank, world=info.world
            )
        self.logger.log_eval(self.step, metrics)
        self.eval_history[str(self.step)] = headline(metrics, self.eval_sets, self.cfg.eval.n)

    def _stop_agreed(self, stop: StopFlag | None) -> bool:
        """Whether any rank was signalled: every rank reaches this between the same two steps, so all agree."""
        if stop is None:
            return False
        flag = torch.tensor([float(stop.requested)], device=self.info.device)
        return all_reduce(flag, "max").item() > 0.5

    def _stop(self, stop: StopFlag, saved: int) -> dict[str, float]:
        """Save at the step reached (nothing after a bad step, nothing twice) and say how to continue."""
        what = f"checkpoint {self.run_dir / ckpt.CHECKPOINTS / f'step_{self.step:08d}'}"
        if self.bad_steps:
            what = f"not saved after a bad step; last good checkpoint: {ckpt.find_latest(self.run_dir)}"
        elif self.step > saved:
            self.save()
        elif self.step == 0:
            what = "nothing to save yet"
        if self.info.is_main:
            signame = stop.name or "a signal on another rank"
            print(
                f"{signame}: stopped after step {self.step}/{self.cfg.optim.total_steps}; {what}; "
                f"continue with --resume auto",
                flush=True,
            )
        return {"steps": float(self.step), "stopped": 1.0}

    def _dry_stop(self, why: str) -> str:
        """Save the state reached (unless inside a bad streak) and say so: the message of `DryFilterStop`."""
        if self.bad_steps:
            return self._bad_message(why, "a dry filter inside a streak of bad steps")
        path = self.save()
        return (
            f"{why}; saved {path}; continue with --resume auto, with rollout.on_filter_exhausted = "
            '"fill" | "partial" | "skip" or a larger rollout.max_chunks to go on through dry steps'
        )

    def _interrupted(self, stop: StopFlag | None) -> dict[str, float]:
        """Stopped inside step `self.step + 1` (its reward call did not return): nothing of it is saved."""
        if self.info.is_main:
            signame = (stop.name if stop is not None else "") or "a stop request"
            last = ckpt.find_latest(self.run_dir)
            print(
                f"{signame}: stopped during step {self.step + 1}/{self.cfg.optim.total_steps} while the reward "
                f"function was running; that step is dropped; last checkpoint: {last}; continue with --resume auto",
                flush=True,
            )
        return {"steps": float(self.step), "stopped": 1.0}

    def _bad_message(self, why: str, what: str | None = None) -> str:
        last = ckpt.find_latest(self.run_dir)
        where = f"last good checkpoint: {last}" if last is not None else "no checkpoint was written before them"
        what = what or "every optimizer step skipped (non-finite gradient norm) or a non-finite loss/reward"
        return f"{why} at step {self.step}: {what}; nothing saved, {where}"

    def summary(self) -> dict[str, float]:
        """The run's closing lines: held-out accuracy (avg@n) at the first evaluation -> the last, then the training
        accuracy, first-10% vs last-10% mean (the learning check), as the final line.

        Returns those numbers: `eval_first/<source>` and `eval_last/<source>` (when the run evaluated),
        `accuracy_first_10pct`, `accuracy_last_10pct`, `steps`.
        """
        h = self.history
        k = max(1, math.ceil(len(h) / 10)) if h else 0
        first = sum(h[:k]) / k if k else float("nan")
        final = sum(h[-k:]) / k if k else float("nan")
        result = {"accuracy_first_10pct": first, "accuracy_last_10pct": final, "steps": float(self.step)}
        lines = [f"run folder: {self.run_dir}"]
        if self.eval_history:
            steps = sorted(self.eval_history, key=int)
            start, end = self.eval_history[steps[0]], self.eval_history[steps[-1]]
            parts = [f"{name} {start[name]:.3f} -> {end.get(name, math.nan):.3f}" for name in start]
            n = self.cfg.eval.n
            lines.append(f"held-out accuracy (eval avg@{n}, step {steps[0]} -> {steps[-1]}): " + ", ".join(parts))
            result.update({f"eval_first/{name}": start[name] for name in start})
            result.update({f"eval_last/{name}": end[name] for name in end})
        lines.append(f"accuracy: first 10% of steps {first:.3f} -> last 10% {final:.3f} ({self.step} steps)")
        self.logger.summary(lines)
        return result

    def close(self) -> None:
        self.logger.close()
        if self.ctx.pipeline is not None:
            self.ctx.pipeline.close()
        self.engine.close()
        reward_worker.shutdown()
        if self._lock is not None:
            self._lock.release()
