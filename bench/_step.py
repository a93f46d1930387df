"""The step benchmark's set-up: jobs, model folders, and a Trainer built by the trainer's own code at world size 1.

A job is a `Config` like any run's: `model.config` points at a folder written here (a Hugging Face `config.json`
and the built-in tokenizer, no weights: the trainer builds the architecture with seeded random weights), or the
built-in tiny preset is used as it is. Both providers of a job get the same config but `model.kernels`, hence
the same initial weights, prompts and rollouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import Qwen2Config

from trainer.batch import Batch, make_batch
from trainer.config import Config, from_dict
from trainer.model.tiny import build_tokenizer
from trainer.step import collect
from trainer.trainer import Trainer

KERNELS = {"ours": "fused", "reference": "reference"}
"""Provider name in the tables -> `model.kernels`."""


@dataclass(frozen=True)
class StepJob:
    """One benchmarked training job: its model, its batch (`prompts` x `group` responses), its update."""

    name: str
    prompts: int
    group: int
    max_new_tokens: int
    micro_batch: int
    lr: float
    kl_coef: float
    rounds: int
    """Timed calls of the rollout-excluded case (after a warm-up call and a measured one): fixed, so both
    providers of a job make the same number of updates and their checks compare like with like."""
    rollout_rounds: int
    """Timed calls of the rollout-included case (generation makes each call far longer)."""
    hf_config: dict[str, Any] = field(default_factory=dict)
    """`Qwen2Config` arguments of a `model.config` folder; empty: the trainer's built-in tiny preset."""

    @property
    def shape(self) -> str:
        """Id in tables: the model, then prompts x group and the response cap."""
        return f"{self.name}-{self.prompts}x{self.group}-new{self.max_new_tokens}"

    @property
    def vocab(self) -> int:
        """The LM head's vocabulary (the built-in tokenizer's 31 tokens for the tiny preset)."""
        return int(self.hf_config.get("vocab_size", len(build_tokenizer())))


def write_model_folder(folder: Path, hf_config: dict[str, Any]) -> Path:
    """A `model.config` folder: `config.json` of a Qwen2 with `hf_config`'s sizes and the built-in tokenizer.

    The synthetic task's tokenizer has 31 tokens; a larger vocabulary is allowed (as Qwen pads its embedding): the
    extra ids are sampled by a random model and dropped when decoding, which only makes every answer wrong.
    """
    tok = build_tokenizer()
    ids = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    folder.mkdir(parents=True, exist_ok=True)
    Qwen2Config(**ids, **hf_config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def job_config(job: StepJob, *, kernels: str, run_dir: Path, model_dir: Path | None) -> Config:
    """The run's config: GRPO with a fixed KL coefficient (so the reference model's log-probs are computed too)."""
    model: dict[str, Any] = {"kernels": kernels}
    if model_dir is not None:
        model["config"] = str(model_dir)
    return from_dict({
        "model": model,
        "warm_start": {"mode": "off"},  # step throughput on the job's own (random) weights, as before the warm start
        "eval": {"enabled": False},
        "rollout": {"prompts_per_step": job.prompts, "group_size": job.group, "max_new_tokens": job.max_new_tokens},
        "algorithm": {"update": "grpo", "kl_coef": job.kl_coef},
        "optim": {"lr": job.lr, "micro_batch_size": job.micro_batch, "total_steps": 1000},
        "checkpoint": {"export_hf": False},
        "logging": {"run_dir": str(run_dir), "tensorboard": False, "console_every": 1_000_000},
    })  # fmt: skip


def build_trainer(job: StepJob, provider: str, info: Any, tmp: Path) -> Trainer:
    """`Trainer(cfg, info)` for the job with the provider's kernels, its run folder and model folder under `tmp`."""
    model_dir = write_model_folder(tmp / "model", job.hf_config) if job.hf_config else None
    cfg = job_config(job, kernels=KERNELS[provider], run_dir=tmp / "run", model_dir=model_dir)
    return Trainer(cfg, info)


def fixed_batch(trainer: Trainer) -> Batch:
    """One step's batch, collected by the trainer's engine from its initial weights (the same for both providers)."""
    ctx = trainer.ctx
    return make_batch(collect(ctx, step=0).groups, ctx.tokenizer.pad_token_id, ctx.info.device)


def param_count(trainer: Trainer) -> int:
    """Parameters of the policy (full tensors; the tied embedding counted once)."""
    return sum(p.numel() for p in trainer.policy.parameters())
