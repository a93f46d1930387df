"""The `[model]` and `[warm_start]` sections: the policy (and frozen reference) model, and the built-in warm start.

Light (no torch, no transformers: the config loader imports it); the model code imports its choices from here
(`PRESETS` in `trainer.model.tiny`, `ATTN_IMPLEMENTATIONS` in `trainer.model.attention`, `KERNELS` in
`trainer.policy`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from trainer.config.base import ConfigError, _Section

__all__ = [
    "ATTN_IMPLEMENTATIONS",
    "KERNELS",
    "PRESETS",
    "AttnImplementation",
    "Kernels",
    "ModelConfig",
    "Preset",
    "WarmStartConfig",
]

Kernels = Literal["fused", "reference"]
"""`model.kernels`: the fused log-prob and loss kernels, or their plain-torch references."""
KERNELS: tuple[str, ...] = get_args(Kernels)
AttnImplementation = Literal["auto", "flash_attention_2", "sdpa", "eager"]
"""`model.attn_implementation` (`trainer.model.attention` resolves "auto")."""
ATTN_IMPLEMENTATIONS: tuple[str, ...] = get_args(AttnImplementation)
Preset = Literal["tiny"]
"""The built-in models `model.preset` names (`trainer.model.tiny` builds them); "none" besides them builds nothing."""
PRESETS: tuple[str, ...] = get_args(Preset)


@dataclass
class ModelConfig(_Section):
    """The policy (and frozen reference) model: a local Hugging Face folder, or a built-in preset."""

    SECTION = "model"
    path: str | None = None
    """Local Hugging Face causal-LM folder (config, weights, tokenizer). None or "" means: build `preset`."""
    config: str | None = None
    """Local folder with a Hugging Face `config.json` and tokenizer files (no weights needed): build that
    architecture with seeded random weights. Used when `path` is unset; takes precedence over `preset`."""
    preset: Literal[Preset, "none"] = "tiny"
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
    kernels: Kernels = "fused"
    """Log-probs and loss of the policy and the reference: "fused" (`fastslow.kernels.token_logprobs` /
    `fastslow.kernels.linear_grpo_loss`, which never form the `[tokens, vocab]` logits); "reference" (their plain-torch
    references: full logits, float32 log-softmax, autograd; slower and far more memory), to check whether the fused
    path changes a run."""
    attn_implementation: AttnImplementation = "auto"
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
