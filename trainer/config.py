"""Run configuration: the typed dataclass tree (one section per component), each value checked against its field.

Every section coerces and type-checks its fields, then runs its own range and cross-field checks, in `__post_init__`;
a bad value raises `ConfigError` naming `section.key`, the value and what is allowed. `from_dict` builds a validated
`Config` from nested plain values, checking every key against the tree (unknown -> `ConfigError` suggesting the
closest name). Reading a command line or a TOML file, and writing one, live in `trainer.config_io`, which imports this
module (never the other way round): `from trainer.config_io import load_config`.

The FAST names (`fast_grpo`, `fast_sfpo`) bring the settings their paper uses: per-group KL (`kl_type =
"group_accuracy"`, `kl_coef = 0.01`) and the Slow2Fast filter. `Config.resolved()` (run by `load_config`) applies
them only to keys the user did not set in the file or on the command line, so `algorithm.filter=none` still wins.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

from trainer.config_algorithm import FAST_DEFAULTS, AlgorithmConfig
from trainer.config_base import ConfigError, InputError, _hints, _Section, _suggest, input_errors
from trainer.config_parallel import ParallelConfig
from trainer.config_report import BUILTIN_TEXT, EVAL_SUFFIXES, EvalConfig, LoggingConfig, eval_source_name
from trainer.config_rollout import MIN_TEMPERATURE, RolloutConfig
from trainer.data_formats import DATA_SUFFIXES, SUFFIX_TEXT
from trainer.tasks import is_builtin as is_builtin_task

__all__ = [
    "EVAL_SUFFIXES",
    "FAST_DEFAULTS",
    "MIN_TEMPERATURE",
    "AlgorithmConfig",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "InputError",
    "LoggingConfig",
    "ModelConfig",
    "OptimConfig",
    "ParallelConfig",
    "RewardConfig",
    "RolloutConfig",
    "WarmStartConfig",
    "eval_source_name",
    "from_dict",
    "input_errors",
]


@dataclass
class ModelConfig(_Section):
    """The policy (and frozen reference) model: a local Hugging Face folder, or a built-in preset."""

    SECTION = "model"
    path: str | None = None
    """Local Hugging Face causal-LM folder (config, weights, tokenizer). None or "" means: build `preset`."""
    config: str | None = None
    """Local folder with a Hugging Face `config.json` and tokenizer files (no weights needed): build that
    architecture with seeded random weights. Used when `path` is unset; takes precedence over `preset`."""
    preset: Literal["tiny", "none"] = "tiny"
    """Used when `path` and `config` are unset: "tiny" builds a small Qwen2 from the sizes below with seeded random
    weights and the synthetic task's code-built tokenizer; "none" builds nothing, so `path` is required (the 1.5B
    presets)."""
    hidden_size: int = 64
    """Tiny preset: hidden size (a multiple of `num_heads`, with an even head size for rotary embeddings)."""
    num_layers: int = 2
    """Tiny preset: decoder blocks."""
    num_heads: int = 4
    """Tiny preset: attention heads (a multiple of `num_kv_heads`)."""
    num_kv_heads: int = 2
    """Tiny preset: key/value heads (grouped-query attention)."""
    intermediate_size: int = 256
    """Tiny preset: MLP width."""
    activation_checkpointing: bool = False
    """Recompute each decoder block's activations in the backward pass (memory for compute)."""
    cpu_offload: bool = False
    """Keep the policy's and reference's shards, gradients and optimizer state on the host (FSDP2's
    `CPUOffloadPolicy`): each unit is gathered to the device for its pass, the optimizer and SFPO's reposition (the
    native CPU kernel) run on the CPU, and the SFPO snapshot lives on the host. Device memory for host memory and
    time."""
    trust_remote_code: bool = False
    """Let transformers run the model folder's own Python code. Off unless asked for."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """"auto": bf16 mixed precision (fp32 reduction) on GPU, fp32 on CPU. "bfloat16": mixed precision on any
    device (on a CPU: slow, but the GPU's dtype path, FSDP2 `MixedPrecisionPolicy`, bf16 engine and export, runs)."""
    kernels: Literal["fused", "reference"] = "fused"
    """Log-probs and loss of the policy and the reference: "fused" (`fastslow.kernels.token_logprobs` /
    `fastslow.kernels.linear_grpo_loss`, which never form the `[tokens, vocab]` logits); "reference" (their plain-torch
    references: full logits, float32 log-softmax, autograd; slower and far more memory), to check whether the fused
    path changes a run."""
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = "auto"
    """Attention of the policy and the reference in the trainer's passes (the rollout engine keeps its own). "auto":
    flash-attn's varlen kernels on CUDA when flash-attn is installed (`pip install .[flash]`), else an exact
    per-sequence SDPA ("fastslow_sdpa"); "flash_attention_2" (an error without CUDA and flash-attn); "sdpa" and
    "eager": transformers' own, given a block-diagonal causal mask for packed rows (exact, quadratic in the row).
    See `trainer/model/attention.py`."""

    def validate(self) -> None:
        if self.path is not None and not self.path.strip():
            self.path = None  # "" is the presets' placeholder; TOML has no null
        if self.config is not None and not self.config.strip():
            self.config = None
        self._require(
            self.path is None or self.config is None, "config", "give model.path (weights) or model.config, not both"
        )
        if self.path is None and self.config is None and self.preset == "none":
            raise ConfigError(
                "model.path is not set, and model.preset = 'none' builds no model: give the Hugging Face model "
                "folder, e.g. model.path=/models/DeepSeek-R1-Distill-Qwen-1.5B (or model.preset=tiny)"
            )
        self._at_least(1, "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size")
        if self.path is None and self.config is None:
            heads, head_dim = self.num_heads, self.hidden_size // self.num_heads
            self._require(self.hidden_size % heads == 0, "hidden_size", f"must be a multiple of num_heads ({heads})")
            self._require(head_dim % 2 == 0, "hidden_size", f"hidden_size / num_heads ({head_dim}) must be even")
            self._require(heads % self.num_kv_heads == 0, "num_heads", "must be a multiple of num_kv_heads")


@dataclass
class WarmStartConfig(_Section):
    """The built-in warm start (`trainer.model.warm_start`): a short supervised pass on the synthetic task's worked
    solutions, cached, so that RL starts from a model that already answers (directly or by thinking), as the
    papers' models do."""

    SECTION = "warm_start"
    mode: Literal["auto", "on", "off"] = "auto"
    """"auto": on for the tiny preset on the synthetic task (the built-in job), off otherwise; "on" requires
    data.source = "synthetic"; "off": RL from the model as built or loaded."""
    steps: int = 200
    """Supervised steps (AdamW, linear warm-up then decay). 200 leaves the thinking imperfect (held-out accuracy
    of a thought 0.97 at level 1 down to 0.84 at level 5), so RL has more to improve than the choice to think."""
    batch_size: int = 128
    """Examples per step."""
    lr: float = 0.005
    """Peak learning rate."""
    direct: float = 0.5
    """Fraction of examples answered directly (no think block); the rest think."""
    filler: float = 0.5
    """In a thought, the chance of each further filler word before `</think>` (0: none; 0.5: one on average)."""
    seed: int = 0
    """Seeds the fresh init and the examples; independent of the run's seed, so every RL seed starts from the same
    model."""
    cache: str = ""
    """Folder of the cached weights ("": `.warm_start` beside the run folder, i.e. in logging.run_dir's parent)."""

    def validate(self) -> None:
        self._at_least(1, "steps", "batch_size")
        self._require(self.lr > 0, "lr", "must be > 0")
        self._require(0 <= self.direct <= 1, "direct", "must be in [0, 1]")
        self._require(0 <= self.filler < 1, "filler", "must be in [0, 1)")
        self._require(0 <= self.seed < 2**63, "seed", "must be in [0, 2**63)")


@dataclass
class DataConfig(_Section):
    """Training prompts and their reference answers."""

    SECTION = "data"
    source: str = "synthetic"
    """A built-in task ("synthetic": the digit sum, the quick default; "chain": the running sum of the full learning
    comparison, `trainer.tasks`) or a path to a .jsonl / .json / .parquet / .pq file with prompt and answer
    columns (a .json file is JSON lines, or one JSON array when it starts with `[`)."""
    prompt_key: str = "prompt"
    """Column holding the prompt text."""
    answer_key: str = "answer"
    """Column holding the reference answer."""
    max_prompt_tokens: int = 64
    """Prompts longer than this (after the chat template) are skipped or an error, per `on_long_prompt`."""
    on_long_prompt: Literal["skip", "error"] = "skip"
    """"skip": drop and count long prompts; "error": stop, naming file and row."""
    apply_chat_template: bool = True
    """Wrap each prompt in the tokenizer's chat template when it has one."""

    def validate(self) -> None:
        ok = is_builtin_task(self.source) or self.source.lower().endswith(DATA_SUFFIXES)
        self._require(ok, "source", f"must be a built-in task ({BUILTIN_TEXT}) or a path to a {SUFFIX_TEXT} file")
        self._require(bool(self.prompt_key), "prompt_key", "must not be empty")
        self._require(bool(self.answer_key), "answer_key", "must not be empty")
        self._at_least(1, "max_prompt_tokens")


@dataclass
class RewardConfig(_Section):
    """The reward of a response: the data's built-in scorer, or a user function plugged in by import path.

    A user function is called once per generation chunk (see `trainer.reward.user` for its contract and an example):

        def my_reward(responses: list[str], answers: list[str], prompts: list[str]) -> list[float] | Tensor

    Its values are the reward GRPO's advantages use. Correctness (the `accuracy` metric, the online filters, the
    accuracy-based KL and FAST's difficulty) still comes from the built-in scorer; with FAST on, the user's value
    replaces the correctness term of the thinking reward and FAST's format and length terms are added to it.
    """

    SECTION = "reward"
    function: str = ""
    """"": the built-in reward of the data (the synthetic task's rule, or the math verifier for a prompt file).
    Else a user function, "package.module:function" (importable from the working directory or the installed
    packages) or "path/to/file.py:function"; imported when the config loads, so a bad path stops the run before
    any work."""
    think_opened: Literal["auto", "true", "false"] = "auto"
    """Whether the generation prompt already opens the `<think>` block (R1-distilled chat templates end with it), so
    that FAST's format term expects a response that closes it without opening it. "auto": read from each rendered
    prompt (`trainer.reward.builtin.prompt_opens_think`); "true" / "false" (or TOML booleans) force it."""
    truncated: Literal["wrong", "score"] = "wrong"
    """A response cut at `rollout.max_new_tokens` (no stop token): "wrong" counts it as incorrect and unformatted,
    whatever it holds (it never finished its answer; without this, a correctness-only reward lets text after the
    answer grow until every response runs to the limit); "score": scored like any other (the seeds' code)."""
    on_error: Literal["raise", "zero"] = "raise"
    """When the user function raises, times out or returns something other than one finite number per response:
    "raise" stops the run with an error naming the function and the first bad sample; "zero" scores the bad samples
    0 (the whole chunk when the call raised, timed out or returned the wrong count) and counts them in the metric
    `reward/errors`."""
    timeout_s: float = 120.0
    """Time limit of one call of the user function (one generation chunk), in seconds: the call runs in a forked
    child process, killed past the limit (a failure under `on_error`); Ctrl-C stops the run even while it hangs.
    0: no limit, called in the trainer's own process (no fork; Ctrl-C then waits for the call to return)."""

    def validate(self) -> None:
        self.function = self.function.strip()
        self._require(math.isfinite(self.timeout_s) and self.timeout_s >= 0, "timeout_s", "must be a number >= 0")
        if self.function:
            from trainer.reward.user import RewardError, load_reward_fn  # torch: only when needed

            try:
                load_reward_fn(self.function)
            except RewardError as exc:
                raise ConfigError(f"reward.function = {self.function!r}: {exc}") from exc


@dataclass
class OptimConfig(_Section):
    """AdamW, its schedule (linear warmup, then constant) and how an update splits the batch."""

    SECTION = "optim"
    lr: float = 5e-4
    """Peak learning rate (the built-in job's, for the warm-started tiny model; the 1.5B presets use 1e-6)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas, each in [0, 1)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: no clipping; the norm is still logged)."""
    warmup_steps: int = 0
    """Linear learning-rate warmup, in steps."""
    total_steps: int = 100
    """Training steps (one rollout batch each); also the denominator of the curriculum's progress."""
    minibatches: int = 1
    """Optimizer steps per update: the batch is split into this many minibatches."""
    epochs: int = 1
    """Passes over the batch per update."""
    skip_old_logprobs: bool = True
    """Skip the old-log-prob pass when it is redundant (one epoch, one minibatch, no SFPO inner steps; stale batches
    and `rollout.is_correction` included, which take the proximal log-probs from the update's forward): the update
    then takes the ratio as 1 with the gradient of `exp(logp - logp.detach())`, the same loss, gradients and metrics
    to float rounding (`trainer.step.skips_old_logprobs`; the metric `actor/old_logp_pass` says which path ran).
    False: always run the pass."""
    micro_batch_size: int = 32
    """Sequences per forward/backward (gradient accumulation within a minibatch) when `packing` is off."""
    packing: bool = True
    """Padding-free passes: every policy/reference pass packs the sequences (prompt + response) into rows of at
    most `micro_batch_tokens` tokens, one row per forward/backward, attention kept within each sequence
    (`model.attn_implementation`). Off: right-padded micro-batches of `micro_batch_size` sequences. The loss,
    gradients and metrics are the same either way (up to float rounding); packing skips the padding's FLOPs."""
    micro_batch_tokens: int = 0
    """With `packing`: the token budget of one row (a longer sequence gets a row of its own). 0: the device's
    default, 4096 on a CPU and 16384 on an accelerator (`trainer.packing.DEFAULT_ROW_TOKENS`)."""
    max_bad_steps: int = 10
    """Stop the run after this many steps in a row whose update was skipped because the loss or the gradient norm
    was not finite (the parameters and optimizer state stay as they were; the last good checkpoint is kept)."""
    max_param_abs: float = 1e4
    """An update that leaves any parameter non-finite or larger than this in magnitude has diverged: the run stops
    at once (exit 3), saving nothing, naming the last good checkpoint. Trained LMs' weights are far below 1e4;
    bf16 overflows at ~3.4e38, and logits (hence sampling) long before."""

    def validate(self) -> None:
        self._require(self.lr > 0, "lr", "must be > 0")
        self._at_least(0, "weight_decay", "grad_clip", "warmup_steps")
        self._require(all(0 <= b < 1 for b in self.betas), "betas", "each must be in [0, 1)")
        self._at_least(1, "total_steps", "minibatches", "epochs", "micro_batch_size", "max_bad_steps")
        self._at_least(0, "micro_batch_tokens")
        self._require(self.max_param_abs > 0, "max_param_abs", "must be > 0")
        if not 1e-9 <= self.lr <= 1.0 and os.environ.get("RANK", "0") == "0":  # legal, but likely a typo
            warning = f"warning: optim.lr = {self.lr:g} is far outside the usual range (about 1e-7 to 1e-2): a typo?"
            print(warning, file=sys.stderr)


@dataclass
class CheckpointConfig(_Section):
    """Sharded checkpoints of model, optimizer and trainer state; the Hugging Face export."""

    SECTION = "checkpoint"
    every: int = 0
    """Save every this many steps (0: only at the end)."""
    keep: int = 2
    """Complete checkpoints kept (older ones are deleted)."""
    resume: str = "none"
    """"none", "auto" (the latest complete checkpoint of the run folder), or a checkpoint folder."""
    export_hf: bool = True
    """At the end, write a Hugging Face folder (safetensors, config, tokenizer) to <run_dir>/hf."""

    def validate(self) -> None:
        self._at_least(0, "every")
        self._at_least(1, "keep")
        self._require(bool(self.resume.strip()), "resume", "must be 'none', 'auto' or a checkpoint folder")


@dataclass
class Config(_Section):
    """The whole run: one section per component, plus the seed."""

    model: ModelConfig = field(default_factory=ModelConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    seed: int = 0
    """Seeds everything (model init, data order, sampling); a run is deterministic for a seed on CPU."""
    explicit_keys: frozenset[str] = field(default=frozenset(), compare=False, repr=False, metadata={"internal": True})
    """`section.key` names set by the config file or the command line (not by defaults); see `resolved()`."""

    def validate(self) -> None:
        self._require(0 <= self.seed < 2**63, "seed", "must be in [0, 2**63)")
        if self.rollout.engine == "vllm" and self.eval.enabled:  # the evaluation samples on the rollout engine
            from trainer.rollout.vllm_params import temperature_problem

            problem = temperature_problem(self.eval.temperature)
            if problem:
                raise ConfigError(f"eval.temperature = {self.eval.temperature!r} (rollout.engine = 'vllm'): {problem}")
        if self.warm_start.mode == "on" and not is_builtin_task(self.data.source):
            raise ConfigError(
                f"warm_start.mode = 'on': the warm start trains on a built-in task ({BUILTIN_TEXT}), but data.source = "
                f"{self.data.source!r}; use warm_start.mode = 'off' (or 'auto')"
            )

    def resolved(self) -> Config:
        """This config with `FAST_DEFAULTS` applied, for FAST names, to the keys not in `explicit_keys`."""
        if not self.algorithm.fast:
            return self
        implied = {k: v for k, v in FAST_DEFAULTS.items() if f"algorithm.{k}" not in self.explicit_keys}
        return dataclasses.replace(self, algorithm=dataclasses.replace(self.algorithm, **implied))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict `{section: {key: value}, "seed": ...}`; tuples as lists, None kept."""
        out: dict[str, Any] = {"seed": self.seed}
        for name in _sections():
            section = getattr(self, name)
            out[name] = {f.name: _plain(getattr(section, f.name)) for f in dataclasses.fields(section)}
        return out


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@cache
def _sections() -> dict[str, type[_Section]]:
    """Section name -> its class, in file order."""
    hints = _hints(Config)
    return {n: t for n, t in hints.items() if isinstance(t, type) and issubclass(t, _Section)}


@cache
def _top_keys() -> dict[str, Any]:
    """Top-level scalar keys (not sections, not internal) -> type."""
    internal = {f.name for f in dataclasses.fields(Config) if f.metadata.get("internal")}
    return {n: t for n, t in _hints(Config).items() if n not in _sections() and n not in internal}


def _lookup(dotted: str, where: str) -> Any:
    """The type of key `section.key` (or top-level `key`); `ConfigError` naming it, with the closest valid name."""
    sections, top = _sections(), _top_keys()
    every = [f"{s}.{k}" for s, cls in sections.items() for k in _hints(cls)] + list(top)
    section, dot, key = dotted.partition(".")
    if not dot and section in top:
        return top[section]
    if not dot and section in sections:
        raise ConfigError(f"{where}: {section!r} is a section; set its keys as {section}.KEY=VALUE")
    if not dot or "." in key:
        raise ConfigError(f"{where}: unknown key {dotted!r}{_suggest(dotted, every)}")
    if section not in sections:
        names = ", ".join(sections)
        raise ConfigError(f"{where}: unknown section {section!r}{_suggest(section, sections)} (sections: {names})")
    hints = _hints(sections[section])
    if key not in hints:
        elsewhere = [k for k in every if k.endswith(f".{key}")]  # e.g. rollout.lr -> optim.lr
        hint = _suggest(key, hints, f"{section}.") or (f"; did you mean {elsewhere[0]!r}?" if elsewhere else "")
        raise ConfigError(f"{where}: unknown key {dotted!r}{hint} ({section} keys: {', '.join(hints)})")
    return hints[key]


def from_dict(values: Mapping[str, Any], *, explicit: frozenset[str] = frozenset()) -> Config:
    """A validated `Config` from `{section: {key: value}, "seed": ...}` (missing keys take their defaults)."""
    for name, value in values.items():
        for key in value if name in _sections() and isinstance(value, Mapping) else [None]:
            _lookup(name if key is None else f"{name}.{key}", "config")
    sections = {name: cls(**values.get(name, {})) for name, cls in _sections().items()}
    top = {k: v for k, v in values.items() if k in _top_keys()}
    return Config(**sections, **top, explicit_keys=frozenset(explicit))
