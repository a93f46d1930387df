"""One full training step of our trainer, fused kernels against the reference ones: response tokens per second.

Providers: the same `Trainer` (built by the trainer's own code, FSDP2 at world size 1, the hf rollout engine) with
- `ours`: `model.kernels = "fused"` (the default): `fastslow.kernels.token_logprobs` /
  `fastslow.kernels.linear_grpo_loss`, which never form the `[tokens, vocab]` logits;
- `reference`: `model.kernels = "reference"`: `fastslow.kernels.token_logprobs_ref` /
  `fastslow.kernels.linear_grpo_loss_ref(eager=True)`, the full logits in eager torch (float32 log-softmax, autograd).

Modes, reported separately:
- `rollout-excluded`: `trainer.step.learn` on one fixed batch collected up front: old log-probs, the reference
  model's log-probs (GRPO with a fixed KL coefficient), advantages, the update with its optimizer step;
- `rollout-included`: the whole `trainer.step.train_step`: generation (hf engine), rewards, the above, weight sync.

Tokens/s = response tokens (`batch.mask.sum()`) / median seconds of a call. Rollout-included samples afresh each
call, so its token count is the mean over the timed calls (a random model over the 31-token vocabulary stops
often; over a large one it rarely does, and nearly every response is `max_new_tokens` long). Each case runs a
warm-up call (the optimizer state is made there), a measured call, then a fixed number of timed calls, so both
providers make the same updates; the `check` is the first call's mean token entropy (through the log-prob
kernels), and `first_grad_norm` in the JSON its gradient norm, so rows can be seen to compute the same thing. The
parameters move on every call: the step is timed as training repeats it, not on frozen weights. (With a
large-vocabulary random model every answer is wrong, so the advantages and the gradient are zero: the work is the
same, the weights just stay put.)

Jobs, on the CPU (fp32, sized to keep the CPU suite short):
- `tiny`: the trainer's default model (hidden 64, 2 layers, the built-in tokenizer's 31-token vocabulary: the LM
  head is a negligible part of the step, and the fused path's chunking pure overhead), 4 prompts x 8 responses of
  at most 64 tokens, 5 timed calls per mode;
- `tiny-V32768`: the same model with a 32768-token vocabulary, where the logits are most of the learning work
  (and sampling over them, `torch.multinomial`, most of generation), 2 prompts x 8 responses of at most 32 tokens,
  3 timed calls per mode.
On a GPU, `qwen2.5-0.5b`: a random-init Qwen2 with Qwen2.5-0.5B's shapes (hidden 896, intermediate 4864, 24 layers,
14 query / 2 KV heads, tied 151936-token embedding), bf16 mixed precision (fp32 weights), 8 prompts x 8 responses
of up to 512 tokens (about 32k response tokens), micro-batches of 8 sequences (the reference's `[tokens, vocab]`
float32 logits are then 2.6 GB per micro-batch, several of them live at once); 3 timed calls without rollout and 2
with it (the hf engine's 512 decode steps take seconds).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from bench._harness import backend_name, bench_device, free_memory, ours_backend, run_case
from bench._models import QWEN25_05B
from bench._step import KERNELS, StepJob, build_trainer, fixed_batch, param_count
from trainer.batch import Batch
from trainer.step import learn, train_step
from trainer.trainer import Trainer

DEVICE = bench_device()
ON_GPU = DEVICE.type == "cuda"

_TINY_SIZES = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4}
CPU_JOBS = [
    StepJob(
        "tiny", prompts=4, group=8, max_new_tokens=64, micro_batch=32, lr=3e-3, kl_coef=1e-3, rounds=5,
        rollout_rounds=5,
    ),
    StepJob(
        "tiny-V32768", prompts=2, group=8, max_new_tokens=32, micro_batch=32, lr=3e-3, kl_coef=1e-3, rounds=3,
        rollout_rounds=3,
        hf_config={
            **_TINY_SIZES, "num_key_value_heads": 2, "vocab_size": 32768, "tie_word_embeddings": True,
            "max_position_embeddings": 1024,
        },
    ),
]  # fmt: skip
GPU_JOBS = [
    StepJob(
        "qwen2.5-0.5b", prompts=8, group=8, max_new_tokens=512, micro_batch=8, lr=1e-6, kl_coef=1e-3, rounds=3,
        rollout_rounds=2, hf_config=QWEN25_05B.hf_kwargs(),
    ),
]  # fmt: skip
JOBS = GPU_JOBS if ON_GPU else CPU_JOBS
DTYPE = "bf16" if ON_GPU else "fp32"
MODES = ("rollout-excluded", "rollout-included")


@dataclass
class Running:
    """A built trainer, its fixed batch, and the next step index for `train_step`."""

    job: StepJob
    provider: str
    trainer: Trainer
    batch: Batch
    step: int = 1


def _marks(provider: str) -> list[pytest.MarkDecorator]:
    return [pytest.mark.uses_triton] if ON_GPU and provider == "ours" else []


@pytest.fixture(
    scope="module",
    params=[pytest.param((job, p), id=f"{p}-{job.name}", marks=_marks(p)) for job in JOBS for p in KERNELS],
)
def running(
    request: pytest.FixtureRequest, dist_info: Any, device: torch.device, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    """One trainer per (job, provider), shared by both modes; released before the next one is built."""
    job, provider = request.param
    torch.manual_seed(0)
    trainer = build_trainer(job, provider, dist_info, tmp_path_factory.mktemp(f"step-{provider}-{job.name}"))
    try:
        with ours_backend(device):
            batch = fixed_batch(trainer)
    except BaseException:
        trainer.close()
        raise
    run = Running(job, provider, trainer, batch)
    del trainer, batch
    yield run
    run.trainer.close()
    del run.trainer, run.batch  # the last references to the models: pytest keeps `run` until teardown ends
    free_memory(device)


@pytest.mark.parametrize("mode", MODES)
def test_step(benchmark: Any, device: torch.device, ceil: dict, running: Running, mode: str) -> None:
    """One training step, timed as the trainer runs it; tokens/s of response tokens."""
    job, ctx, batch = running.job, running.trainer.ctx, running.batch
    calls: list[dict[str, float]] = []
    sequences = job.prompts * job.group
    rounds = job.rounds if mode == "rollout-excluded" else job.rollout_rounds

    if mode == "rollout-excluded":

        def step() -> None:
            with ours_backend(device):
                calls.append(learn(ctx, batch))

        tokens = float(batch.mask.sum())
        work: tuple[Any, str] = (tokens, "tokens/s")
    else:
        assert ctx.cfg.reward.thinking.length_unit == "tokens"  # response_length is then the mean token count

        def step() -> None:
            with ours_backend(device):
                calls.append(train_step(ctx, running.step).metrics)
            running.step += 1

        work = (lambda: statistics.mean(m["response_length"] * sequences for m in calls[-rounds:]), "tokens/s")

    extra: dict[str, Any] = {
        "model": job.name,
        "params": param_count(running.trainer),
        "vocab": job.vocab,
        "sequences": sequences,
        "max_new_tokens": job.max_new_tokens,
        "batch_positions": int(batch.targets.numel()),  # B x (L - 1): what padded forward passes cover
        "packing": ctx.cfg.optim.packing,  # on by default: the passes cover the sequences' own tokens only
        "micro_batch": job.micro_batch,
        "kl_coef": job.kl_coef,
        "kernels": KERNELS[running.provider],
        "backend": backend_name(device) if running.provider == "ours" else "eager",
        "precision": "bf16 compute, fp32 weights (FSDP2 mixed precision)" if ON_GPU else "fp32",
    }
    run_case(
        benchmark, step, group="step", provider=running.provider, shape=job.shape, dtype=DTYPE, mode=mode,
        device=device, check=lambda: calls[0]["entropy"], extra=extra, rounds=rounds, work=work,
    )  # fmt: skip
    benchmark.extra_info["first_grad_norm"] = calls[0]["actor/grad_norm"]
    assert all(m["actor/skipped_updates"] == 0 for m in calls), "an update was skipped (non-finite gradients)"


# Packed vs padded passes (issue 15): the same learning step (`trainer.step.learn`, rollout excluded) on one fixed
# batch of uneven responses, with `optim.packing` off and on. The responses are made, not sampled (a random model's
# lengths are whatever they are): per group of 8, seven short answers (8-32 tokens) and one at the cap, so the padded
# passes are mostly padding (`padding_frac` in the JSON). Ids differ only by "padded" / "packed".
UNEVEN_CPU = StepJob(
    "tiny-uneven", prompts=4, group=8, max_new_tokens=256, micro_batch=32, lr=3e-3, kl_coef=1e-3, rounds=5,
    rollout_rounds=0,
)  # fmt: skip
UNEVEN_GPU = StepJob(
    "qwen2.5-0.5b-uneven", prompts=8, group=8, max_new_tokens=2048, micro_batch=8, lr=1e-6, kl_coef=1e-3, rounds=3,
    rollout_rounds=0, hf_config=QWEN25_05B.hf_kwargs(),
)  # fmt: skip
UNEVEN = UNEVEN_GPU if ON_GPU else UNEVEN_CPU


def uneven_batch(trainer: Trainer, job: StepJob, seed: int = 0) -> Batch:
    """`job.prompts` x `job.group` responses: per group, one at `job.max_new_tokens`, the others 8-32 tokens long;
    rewards 0/1 at random (both in every group, so the advantages and the gradient are not zero)."""
    from trainer.batch import Group, make_batch
    from trainer.rollout.base import Completion

    g = torch.Generator().manual_seed(seed)
    vocab = min(job.vocab, len(trainer.tokenizer))
    groups = []
    for k in range(job.prompts):
        lengths = [job.max_new_tokens, *torch.randint(8, 33, (job.group - 1,), generator=g).tolist()]
        comps = [Completion(torch.randint(4, vocab, (n,), generator=g).tolist()) for n in lengths]
        rewards = torch.tensor([float(i % 2) for i in range(job.group)])
        lens = torch.tensor([float(n) for n in lengths])
        groups.append(Group(trainer.ctx.prompts[k]["prompt_ids"], comps, rewards, rewards > 0.5, lens))
    return make_batch(groups, trainer.tokenizer.pad_token_id, trainer.ctx.info.device)


@pytest.fixture(scope="module", params=["padded", "packed"], ids=lambda p: f"{UNEVEN.shape}-{p}")
def uneven(request: pytest.FixtureRequest, dist_info: Any, device: torch.device, tmp_path_factory) -> Iterator[Any]:
    """A trainer with `optim.packing` off ("padded") or on ("packed") and its fixed uneven batch."""
    from bench._step import job_config, write_model_folder

    tmp = tmp_path_factory.mktemp(f"step-{request.param}")
    model_dir = write_model_folder(tmp / "model", UNEVEN.hf_config) if UNEVEN.hf_config else None
    cfg = job_config(UNEVEN, kernels="fused", run_dir=tmp / "run", model_dir=model_dir)
    cfg.optim.packing = request.param == "packed"
    torch.manual_seed(0)
    trainer = Trainer(cfg, dist_info)
    run = Running(UNEVEN, request.param, trainer, uneven_batch(trainer, UNEVEN))
    del trainer
    yield run
    run.trainer.close()
    del run.trainer, run.batch
    free_memory(device)


def test_step_packing(benchmark: Any, device: torch.device, ceil: dict, uneven: Running) -> None:
    """`learn` (old and reference log-probs, the update) on uneven responses, padded or packed: tokens/s."""
    ctx, batch, job = uneven.trainer.ctx, uneven.batch, uneven.job
    calls: list[dict[str, float]] = []

    def step() -> None:
        with ours_backend(device):
            calls.append(learn(ctx, batch))

    extra = {
        "model": job.name, "params": param_count(uneven.trainer), "vocab": job.vocab,
        "sequences": job.prompts * job.group, "max_new_tokens": job.max_new_tokens,
        "packing": uneven.provider == "packed", "attn_implementation": ctx.policy.attn,
        "micro_batch": job.micro_batch, "kl_coef": job.kl_coef,
        "precision": "bf16 compute, fp32 weights (FSDP2 mixed precision)" if ON_GPU else "fp32",
    }  # fmt: skip
    run_case(
        benchmark, step, group="step-packing", provider=uneven.provider, shape=job.shape, dtype=DTYPE,
        mode="rollout-excluded", device=device, check=lambda: calls[0]["entropy"], extra=extra, rounds=job.rounds,
        work=(float(batch.mask.sum()), "tokens/s"),
    )  # fmt: skip
    benchmark.extra_info["padding_frac"] = calls[0]["batch/padding_frac"]
    benchmark.extra_info["rows"] = calls[0]["batch/rows"]
    benchmark.extra_info["first_grad_norm"] = calls[0]["actor/grad_norm"]
    assert all(m["actor/skipped_updates"] == 0 for m in calls), "an update was skipped (non-finite gradients)"
